"""``scap`` (SCAP, arXiv 2412.07174; code: github.com/IntelLabs/SCAP): statistical calibrated
activation pruning — mode-centred magnitude thresholds on the inputs of the FFN's linears.

At each FFN linear (gate and up, or the one input projection, and down), with ``c`` the mode of
its input's calibration distribution and ``τ`` the ``1 - density`` quantile of ``|x - c|``::

    y = W·[(x - c)·(|x - c| > τ)] + (b + W·c)

— the input-sparse kernel (:func:`tda.engine.tokenwise.threshold_linear`) on the shifted input,
with ``W·c`` folded into the bias once (exactly ``W·x + b`` when every entry is kept; density 1
runs the dense function itself). Attention projections stay dense, as in the code's configs.

Where this follows the code rather than the paper, or the engine rather than the code:

- ``c`` is **one number per tensor** (the code's ``mode`` is a float per linear, its bias
  ``W·(c·1)``), not a per-channel vector; it is estimated by the **median** of the input (the
  code's ``median`` option; its ``kde`` peak estimate, which needs seaborn, is not ported; its
  ``zero`` option is ``teal`` restricted to the FFN). The issue's wording, a per-channel centre,
  is not what the code does.
- Calibration as the code's (:mod:`tda.masks.scap_calibration`): one batch forward over the
  calibration texts, sparsified as it goes (each site's statistics see the earlier sites already
  sparse), so thresholds are calibrated per density; BOS and pads excluded, entries sampled.
- The code has separate target sparsities for up/gate and down; here one density for all three.
- The code zeroes ``|x - c| ≤ τ``, so keeps ``|x - c| > τ``; the kernels keep ``≥ cut``, so
  ``cut`` is the next float32 above ``τ`` (the same set in fp32: a ReLU's mass of exact zeros
  sits exactly at ``τ = |0 - c|`` and stays out, as in the code).
- Only decode steps are sparse (the prefill is dense), as for every method of the engine.
"""

from __future__ import annotations

import torch

from tda.engine.methods.token import TokenWise
from tda.engine.tokenwise import Counter, LinearFn, masked_linear, threshold_linear
from tda.models.derived import derived
from tda.models.quant import QuantLinear


class SCAP(TokenWise):
    name = "scap"
    needs_density = True
    calibrates = "mode (median) and |x - mode| threshold at every FFN linear's input, per density"
    summary = "SCAP: |x - c| thresholds at the FFN linears' inputs, c the calibrated mode (W·c in the bias)"

    def modules(self):
        return self.ffn_modules()

    def build(self):
        d, ffn = self.cfg.density, self.lm.ffn
        if d >= 1.0:
            return {m: self.threshold_fn(m, None) for m in self.modules()}
        cal = scap_calibration(self.lm, self.cfg)
        table = {}
        for L in range(ffn.n_layers):
            for m, site in [*((m, f"scap.in.{L}") for m in ffn.in_modules(L)), (ffn.out_module(L), f"scap.down.{L}")]:
                c, tau = cal.site(site)
                table[m] = self.centred_fn(m, c, strictly_above(tau))
        return table

    def centred_fn(self, module, c: float, cut: float):
        """Keep ``|x_i - c| ≥ cut`` at ``module``."""
        from tda.engine.layouts import input_major
        from tda.models import placement

        if c == 0.0:
            return self.threshold_fn(module, cut)
        dense, counter = self.dense_fn(module), self.counter(module)
        if placement.is_offloaded(module):  # mask, then the dense function: W·(z + c) + b
            inner = masked_linear(cut, lambda z: dense(z + c), counter)
            return lambda x: inner(x - c)
        if isinstance(module, QuantLinear):  # the quantized format: W·c from the exact values, its input-major repack
            from tda.engine.layouts import quant_input_major
            from tda.engine.tokenwise import quant_threshold_linear

            qwt = quant_input_major(module)
            sums = derived(module, "scap.col_sums", lambda: module.qweight.dequantize().t().sum(dim=0, dtype=torch.float64))
            folded = sums * float(c)
            if module.bias is not None:
                folded = folded + module.bias.detach().double()
            inner = quant_threshold_linear(qwt, folded.to(torch.float32), cut, dense, counter)
            return lambda x: inner(x - c)
        wt = input_major(module)
        sums = derived(module, ("scap.col_sums", wt.data_ptr(), wt.stride()), lambda: col_sums(wt))
        return centred_linear(wt, getattr(module, "bias", None), c, cut, dense, counter, sums=sums)


def strictly_above(tau: float) -> float:
    """The smallest float32 above ``tau``: ``|v| ≥`` it keeps exactly the float32 values ``> tau``."""
    t = torch.tensor(float(tau), dtype=torch.float32)
    return float(torch.nextafter(t, torch.tensor(float("inf"))))


def scap_calibration(lm, cfg):
    """:class:`tda.masks.scap_calibration.ScapCalibration` at ``cfg.density`` (cached)."""
    from tda.masks.scap_calibration import load_or_calibrate_scap

    texts = None if cfg.calibration_texts is None else list(cfg.calibration_texts)
    return load_or_calibrate_scap(lm, cfg.density, texts)


def col_sums(wt: torch.Tensor) -> torch.Tensor:
    """``Σ_i W_t[i, :]`` in float64 ``[d_out]`` (``W·1``) of ``W_t[d_in, d_out]``."""
    return wt.sum(dim=0, dtype=torch.float64)


def centred_linear(wt: torch.Tensor, bias, c: float, cut, dense: LinearFn, counter: Counter | None = None, *,
                   sums: torch.Tensor | None = None) -> LinearFn:
    """``y = W·[(x - c) kept where |x - c| ≥ cut] + (b + W·c)`` over ``W_t[d_in, d_out]``
    (``sums``: :func:`col_sums` of ``wt``, when already known)."""
    folded = (col_sums(wt) if sums is None else sums) * float(c)  # W·(c·1) [d_out]
    if bias is not None:
        folded = folded + bias.detach().double()
    inner = threshold_linear(wt, folded.to(wt.dtype), cut, dense, counter)

    def fn(x):
        return inner(x - c)

    return fn
