"""Shared machinery of token-wise methods: counters per module, densities and bytes read."""

from __future__ import annotations

from tda.engine import fastpath
from tda.engine.layouts import quant_input_major
from tda.engine.methods.base import Method
from tda.engine.tokenwise import Counter
from tda.models.dispatch import weight_numel
from tda.models.quant import QuantLinear


class TokenWise(Method):
    kind = "token"

    def __init__(self, session, cfg=None):
        super().__init__(session, cfg)
        self.counters: dict[int, tuple[object, Counter]] = {}  # id(module) -> (module, counter)

    def counter(self, module) -> Counter:
        c = Counter()
        self.counters[id(module)] = (module, c)
        return c

    def dense_fn(self, module):
        """The dense function of ``module`` (fast path when the session uses it)."""
        table = fastpath.dense_table(self.lm.model, fast=self.session.fast)
        return table.get(module) or fastpath.module_fn(module)

    def threshold_fn(self, module, cut):
        """Keep inputs with ``|x_i| ≥ cut``: the sparse kernel over the input-major weight, or —
        for a module whose weights are offloaded (device map) — the same rule as a mask."""
        from tda.engine.layouts import input_major
        from tda.engine.tokenwise import masked_linear, threshold_linear
        from tda.models import placement

        dense, counter = self.dense_fn(module), self.counter(module)
        if placement.is_offloaded(module):
            return masked_linear(cut, dense, counter)
        if isinstance(module, QuantLinear):  # the quantized format: its input-major repack
            from tda.engine.tokenwise import quant_threshold_linear

            return quant_threshold_linear(quant_input_major(module), module.bias, cut, dense, counter)
        return threshold_linear(input_major(module), getattr(module, "bias", None), cut, dense, counter)

    def layer_of(self) -> dict[int, int]:
        return {id(m): L for L, layer in enumerate(self.lm.ffn.layers) for m in layer.modules()}

    def densities(self):
        """Per layer: the kept fraction of the touched modules' inputs (weighted by their size), over
        the decode steps so far (the bytes read: :meth:`read_fraction`)."""
        n = self.lm.ffn.n_layers
        where = self.layer_of()
        kept, total = [0.0] * n, [0.0] * n
        for mid, (m, c) in self.counters.items():
            L = where.get(mid)
            if L is None or not c.total:
                continue
            size = weight_numel(m)
            kept[L] += size * c.fraction
            total[L] += size
        per = [k / t if t else float("nan") for k, t in zip(kept, total)]
        valid = [p for p in per if p == p]
        return (sum(valid) / len(valid) if valid else float("nan")), [per]

    def read_fraction(self):
        return read_fraction(self.lm, self.counters)


def read_fraction(lm, counters: dict) -> dict[str, float]:
    """Per weight group, the fraction of bytes read per step: touched modules at their measured
    read fraction (:attr:`~tda.engine.tokenwise.Counter.read`: the kept inputs' rows — with R-Sparse's
    low-rank factors —, plus those a dense-tile product read anyway), every other module in full."""
    ffn = lm.ffn
    ffn_ids = {id(m) for L in range(ffn.n_layers) for m in (*ffn.in_modules(L), ffn.out_module(L))}
    head = lm.model.get_output_embeddings()
    read = {"ffn": 0.0, "other": 0.0, "lm_head": 0.0}
    size = {"ffn": 0.0, "other": 0.0, "lm_head": 0.0}
    for m in fastpath.linear_modules(lm.model):
        n = float(weight_numel(m))
        g = "ffn" if id(m) in ffn_ids else "lm_head" if m is head else "other"
        entry = counters.get(id(m))
        f = entry[1].read if entry is not None and entry[1].total else 1.0
        read[g] += n * f
        size[g] += n
    return {g: (read[g] / size[g] if size[g] else 1.0) for g in read}
