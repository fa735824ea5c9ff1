"""``PROMPT+tt`` (e.g. ``griffin+tt``, ``tda+tt``): a prompt-fixed slice with TT inside it.

The prompt method slices the FFN at ``density`` (its kept rows of ``W_gate``/``W_up`` are all
computed); inside the slice, TT's calibrated CETT rule picks per token which kept neurons the
down projection reads. Batch decoding uses the ``union`` layout (each row's own neurons only).
"""

from __future__ import annotations

import torch

from tda.common.errors import BadInput
from tda.engine.fastpath import linear_fn
from tda.engine.sparse import QuantLayerSlice, sliced_fns
from tda.engine.tokenwise import Counter, sparse_product


def combo_class(prompt_cls: type, token_cls: type) -> type:
    """The class of ``prompt_cls.name + '+' + token_cls.name`` (token-wise part: ``tt`` only)."""
    if getattr(prompt_cls, "kind", "") != "prompt" or token_cls.name != "tt":
        raise BadInput(f"unsupported combination '{prompt_cls.name}+{token_cls.name}': use "
                       "PROMPT+tt with PROMPT one of the prompt-fixed methods (e.g. griffin+tt)")

    class Combo(prompt_cls):
        name = f"{prompt_cls.name}+{token_cls.name}"
        kind = "combo"
        summary = f"{prompt_cls.name} slice at the density, TT's CETT rule inside it per token"

        def __init__(self, session, cfg=None):
            super().__init__(session, cfg)
            if self.cfg.batch_mode != "union":
                raise BadInput(f"method '{self.name}' supports batch mode 'union' only")
            self.inner = token_cls(session, self.cfg.replace(density=None))
            self.cuts = None
            self.counters: list[Counter] = []

        def build(self):
            self.cuts = self.inner.cutoffs()
            self.counters = []
            return super().build()

        def layer_table(self, L: int, sl) -> dict:
            ffn = self.lm.ffn
            if isinstance(sl, QuantLayerSlice):
                return self.quant_layer_table(L, sl)
            ins, _ = sliced_fns(sl, fast=self.session.fast)
            wt = sl.down_w.t().contiguous()  # [k, d_model]: the slice's down projection, input-major
            cut = self.cuts[L]
            cut = None if cut is None else cut.to(sl.idx.device)[sl.idx].to(device=wt.device, dtype=wt.dtype)
            cut = None if cut is None else cut.clamp_min(torch.finfo(wt.dtype).tiny)
            dense = linear_fn(sl.down_w, sl.down_b, fast=self.session.fast)
            rm = None if sl.row_mask is None else sl.row_mask.bool()
            counter = Counter()
            self.counters.append(counter)

            def out(a):
                a2 = a.reshape(-1, a.shape[-1])
                keep = torch.ones_like(a2, dtype=torch.bool) if cut is None else a2.abs() >= cut
                if rm is not None:
                    keep = keep & rm.repeat_interleave(a2.shape[0] // rm.shape[0], dim=0)
                return sparse_product(a, a2, keep, wt, sl.down_b, dense, counter)

            return {**dict(zip(ffn.in_modules(L), ins)), ffn.out_module(L): out}

        def quant_layer_table(self, L: int, sl) -> dict:
            """The quantized format: TT's cut inside the slice picks, per token, which kept inputs of
            the down projection's input-major repack are read (compact activations)."""
            from tda.engine import quant_kernels

            ffn = self.lm.ffn
            ins, dense_out = sliced_fns(sl, fast=self.session.fast)
            cut = self.cuts[L]
            cut = None if cut is None else cut.to(sl.idx.device)[sl.idx].float().clamp_min(torch.finfo(torch.float32).tiny)
            rm = None if sl.row_mask is None else sl.row_mask.bool()
            counter = Counter()
            self.counters.append(counter)

            def out(a):
                a2 = a.reshape(-1, a.shape[-1]).float()
                keep = torch.ones_like(a2, dtype=torch.bool) if cut is None else a2.abs() >= cut
                if rm is not None:
                    keep = keep & rm.repeat_interleave(a2.shape[0] // rm.shape[0], dim=0)
                sub = torch.nonzero(keep[0] if a2.shape[0] == 1 else keep.any(dim=0)).flatten()
                counter.add(int(sub.numel()), a2.shape[1])
                if sub.numel() == a2.shape[1] and bool(keep.all()):
                    return dense_out(a)
                vals = (a2 if a2.shape[0] == 1 else a2 * keep).index_select(1, sub)
                y = quant_kernels.input_sparse(vals, sl.down_qwt, sl.idx[sub], sl.down_b, compact=True)
                return y.to(a.dtype).view(*a.shape[:-1], y.shape[-1])

            return {**dict(zip(ffn.in_modules(L), ins)), ffn.out_module(L): out}

        def densities(self):
            mean, rows = super().densities()
            inner = [c.fraction if c.total else 1.0 for c in self.counters] or [1.0] * len(rows[0])
            rows = [[d * f for d, f in zip(r, inner)] for r in rows]
            return sum(sum(r) / len(r) for r in rows) / len(rows), rows

        def read_fraction(self):
            ffn = self.lm.ffn
            k = [sl.k / ffn.d_ff for sl in self.slices]
            f = [c.read if c.total else 1.0 for c in self.counters] or [1.0] * len(k)
            n_in = len(ffn.in_modules(0))
            per_layer = [(n_in * kk + kk * ff) / (n_in + 1) for kk, ff in zip(k, f)]
            return {"ffn": sum(per_layer) / len(per_layer) if per_layer else 1.0, "other": 1.0, "lm_head": 1.0}

    Combo.__name__ = Combo.__qualname__ = f"Combo_{prompt_cls.__name__}_{token_cls.__name__}"
    return Combo

