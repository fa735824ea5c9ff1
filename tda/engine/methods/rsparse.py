"""``rsparse`` (R-Sparse, ICLR 2025; code VITA-Group/R-Sparse): every block linear (q, k, v, o,
gate, up, down) computes ``y = W[:, S] x_S + U_r (S_r V_r^T x_{not S})`` at decode — an input-sparse
product over the inputs with a large score plus a rank-``r`` product from the weight's SVD over the
rest, so no input is simply dropped.

Per linear, the sparse ratio ``alpha``, the threshold ``tau`` and the rank come from
:mod:`tda.masks.lowrank` (calibrated per density on the calibration corpus, cached): sparse rows
plus the two low-rank factors cost ``density`` × the dense bytes, and ``alpha`` is the value on a
grid with the smallest output error on calibration inputs (their repository ships searched
ratios without the recipe; ``$TDA_RSPARSE_ALPHA`` fixes one value, see :func:`alpha_grid`). As in
their code, the score is ``|x_i|·‖W[:, i]‖`` when ``alpha < 1`` and ``|x_i|`` when ``alpha = 1``
(their ``sparse_ratio == 1`` branch), and ``tau`` is a quantile of the score itself, not of
``|x|`` (so :mod:`tda.masks.input_thresholds` is not reused); the engine keeps
``score ≥ tau`` where their code keeps ``score > tau`` (equal only on exact ties). Prefill is dense
(their ``prefill_ratio = 1`` path), density 1 is the dense product. A batch: the sparse part reads
the union of the rows' sets, each row masked to its own; the low-rank part is per row.

Bytes read per step and linear: the kept rows of ``W_t`` plus ``r·(d_in + d_out)`` factor entries,
both counted in the linear's group (``ffn`` or ``other``).
"""

from __future__ import annotations

import torch

from tda.engine import kernels
from tda.engine.layouts import input_major
from tda.engine.methods.teal import block_linears
from tda.engine.methods.token import TokenWise
from tda.engine.tokenwise import Counter, threshold_linear
from tda.models import hugepages
from tda.models.quant import QuantLinear


class LowRankCounter(Counter):
    """A :class:`Counter` whose fraction also includes ``extra`` row-equivalents read per call
    (the low-rank factors, ``r·(d_in + d_out) / d_out`` rows of ``W_t``)."""

    __slots__ = ("extra",)

    def __init__(self):
        super().__init__()
        self.extra = 0.0

    @property
    def fraction(self) -> float:
        return (float(self.kept) + self.extra) / self.total if self.total else float("nan")


class RSparse(TokenWise):
    name = "rsparse"
    needs_density = True
    calibrates = "per linear: sparse ratio, |x|·‖W[:, i]‖ threshold and SVD rank at the density"
    summary = "R-Sparse: input-sparse over large inputs + low-rank SVD part for the rest, every block linear"

    def modules(self):
        return block_linears(self.lm)

    def calibration(self):
        from tda.masks.input_thresholds import module_names
        from tda.masks.lowrank import load_or_calibrate_rsparse

        mods = self.modules()
        names = module_names(self.lm.model)
        texts = None if self.cfg.calibration_texts is None else list(self.cfg.calibration_texts)
        return load_or_calibrate_rsparse(self.lm, self.cfg.density, mods, [names[id(m)] for m in mods], texts,
                                         alphas=alpha_grid(), progress=stderr_progress)

    def build(self):
        if self.cfg.density >= 1.0:
            return {m: self.threshold_fn(m, None) for m in self.modules()}
        from tda.masks.input_thresholds import module_names

        cal = self.calibration()
        names = module_names(self.lm.model)
        return {m: self.split_fn(m, cal.split(names[id(m)])) for m in self.modules()}

    def split_fn(self, module, split):
        """The decode function of one linear for a :class:`tda.masks.lowrank.SiteSplit`."""
        from tda.engine.methods.wina import column_norms
        from tda.masks.lowrank import module_factors

        quantized = isinstance(module, QuantLinear)
        if quantized:  # the quantized format: its input-major repack; norms and factors from the exact values
            from tda.engine.layouts import quant_input_major
            from tda.engine.tokenwise import quant_threshold_linear

            qwt = quant_input_major(module)
            wt = module.qweight.dequantize().t()  # [d_in, d_out], a view: for norms and the SVD only
        else:
            wt = input_major(module)  # [d_in, d_out]
        d_in, d_out = wt.shape
        bias = getattr(module, "bias", None)
        bias = None if bias is None else bias.detach()
        counter = LowRankCounter()
        self.counters[id(module)] = (module, counter)
        if split.alpha >= 1.0:
            cut = max(split.tau, 0.0)
        else:
            cut = max(split.tau, 0.0) / column_norms(module, wt)  # |x_i| >= tau / ‖W[:, i]‖
        rank = split.rank

        def sparse_linear():
            if quantized:
                return quant_threshold_linear(qwt, bias, cut, self.dense_fn(module), counter)
            return threshold_linear(wt, bias, cut, self.dense_fn(module), counter)

        if rank == 0:
            return sparse_linear()
        vs, u = (hugepages.contiguous(f.to(device=wt.device, dtype=wt.dtype))  # read by every step
                 for f in module_factors(module, wt.T, rank))
        extra = rank * (d_in + d_out) / d_out
        tiny = torch.finfo(torch.float32).tiny
        cut_t = cut.clamp_min(tiny) if isinstance(cut, torch.Tensor) else max(cut, tiny)

        if split.channels == 0:  # their low-rank mode: nothing is read from W

            def low_rank_only(x):
                counter.total += d_in
                counter.extra += extra
                y = kernels.dense(kernels.input_dense(x, vs), u)
                return y if bias is None else y + bias

            return low_rank_only
        sparse = sparse_linear()

        def fn(x):
            x2 = x.reshape(-1, d_in)
            small = x2.masked_fill(x2.abs().float() >= cut_t, 0)  # the complement of the kernel's set
            counter.extra += extra
            y = sparse(x2)
            y = y.add_(kernels.dense(kernels.input_dense(small, vs), u))
            return y.view(*x.shape[:-1], d_out)

        return fn


def alpha_grid() -> tuple[float, ...]:
    """The candidate sparse ratios: :data:`tda.masks.lowrank.ALPHAS`, or the one value in
    ``$TDA_RSPARSE_ALPHA`` (e.g. ``0.5``: every linear gets that split — to time the low-rank path
    on random-weight models, whose flat spectra always calibrate to ``alpha = 1``)."""
    import os

    from tda.common.errors import BadInput
    from tda.masks.lowrank import ALPHAS

    raw = os.environ.get("TDA_RSPARSE_ALPHA", "").strip()
    if not raw:
        return ALPHAS
    try:
        alpha = float(raw)
    except ValueError:
        alpha = -1.0
    if not 0.0 <= alpha <= 1.0:
        raise BadInput(f"TDA_RSPARSE_ALPHA must be a number in [0, 1], got '{raw}'")
    return (alpha,)


def stderr_progress(msg: str) -> None:
    import sys

    print(f"[tda] {msg}", file=sys.stderr, flush=True)
