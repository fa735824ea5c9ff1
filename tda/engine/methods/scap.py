"""``scap`` (SCAP, arXiv 2412.07174; code: github.com/IntelLabs/SCAP): statistical calibrated
activation pruning — mode-centred magnitude thresholds on the inputs of the FFN's linears.

At each FFN linear (gate and up, or the one input projection, and down), with ``c`` the mode of
its input's calibration distribution and ``τ`` the ``1 - density`` quantile of ``|x - c|``::

    y = W·[(x - c)·(|x - c| ≥ τ)] + (b + W·c)

— the input-sparse kernel (:func:`tda.engine.tokenwise.threshold_linear`) on the shifted input,
with ``W·c`` folded into the bias once (exactly ``W·x + b`` when every entry is kept; density 1
runs the dense function itself). Attention projections stay dense, as in the code's configs.

Where this follows the code rather than the paper, or the engine rather than the code:

- ``c`` is **one number per tensor** (the code's ``mode`` is a float per linear, its bias
  ``W·(c·1)``), not a per-channel vector; it is estimated by the **median** of the input (the
  code's ``median`` option; its ``kde`` peak estimate, which needs seaborn, is not ported; its
  ``zero`` option is ``teal`` restricted to the FFN). Mode and threshold come from all calibration
  tokens pooled, as the code's single calibration batch (:mod:`tda.masks.channel_thresholds`;
  BOS excluded, sampled).
- The code has separate target sparsities for up/gate and down; here one density for all three.
- The code zeroes ``|x - c| ≤ τ``; here ``|x - c| ≥ τ`` is kept (the same set off ties).
- Only decode steps are sparse (the prefill is dense), as for every method of the engine.
"""

from __future__ import annotations

import torch

from tda.engine.methods.chess import channel_thresholds
from tda.engine.methods.token import TokenWise
from tda.engine.tokenwise import Counter, LinearFn, masked_linear, threshold_linear


class SCAP(TokenWise):
    name = "scap"
    needs_density = True
    calibrates = "mode (median) and |x - mode| quantiles at every FFN linear's input"
    summary = "SCAP: |x - c| thresholds at the FFN linears' inputs, c the calibrated mode (W·c in the bias)"

    def modules(self):
        return self.ffn_modules()

    def build(self):
        cal, d, ffn = channel_thresholds(self.lm, self.cfg), self.cfg.density, self.lm.ffn
        table = {}
        for L in range(ffn.n_layers):
            for m, site in [*((m, f"scap.in.{L}") for m in ffn.in_modules(L)), (ffn.out_module(L), f"scap.down.{L}")]:
                table[m] = self.centred_fn(m, cal.centre(site), None if d >= 1.0 else cal.threshold(site, d))
        return table

    def centred_fn(self, module, c: float, cut):
        """Keep ``|x_i - c| ≥ cut`` at ``module`` (``cut=None``: the dense function)."""
        from tda.engine.layouts import input_major
        from tda.models import placement

        if cut is None or c == 0.0:
            return self.threshold_fn(module, cut)
        dense, counter = self.dense_fn(module), self.counter(module)
        if placement.is_offloaded(module):  # mask, then the dense function: W·(z + c) + b
            inner = masked_linear(cut, lambda z: dense(z + c), counter)
            return lambda x: inner(x - c)
        return centred_linear(input_major(module), getattr(module, "bias", None), c, cut, dense, counter)


def centred_linear(wt: torch.Tensor, bias, c: float, cut, dense: LinearFn, counter: Counter | None = None) -> LinearFn:
    """``y = W·[(x - c) kept where |x - c| ≥ cut] + (b + W·c)`` over ``W_t[d_in, d_out]``."""
    folded = wt.sum(dim=0, dtype=torch.float64) * float(c)  # W·(c·1) [d_out]
    if bias is not None:
        folded = folded + bias.detach().double()
    inner = threshold_linear(wt, folded.to(wt.dtype), cut, dense, counter)

    def fn(x):
        return inner(x - c)

    return fn
