"""``chess`` (CHESS, arXiv 2409.01366; code: github.com/junhuihe-hjh/CHESS): channel-wise thresholds
on the FFN's gate activations plus selective sparsification of the attention projections.

FFN, per layer ``L`` and channel ``j``: keep ``j`` when ``|act(gate)_j| ≥ τ_L / m_j``, i.e. when
its importance ``|act(gate)_j|·m_j`` (``m_j = E|up_j|`` on calibration text) reaches the layer's
threshold ``τ_L`` (the ``1 - density`` quantile of the importance on calibration text). As in
:mod:`~tda.engine.methods.cats` (whose kernels it shares): the gate is computed densely, the up
projection only for the kept rows, the down projection reads only the kept rows of ``W_down^T``.

Attention (the code's ``CHESS+`` method): the q projection's input and the o projection's input
are thresholded at ``|x| ≥ τ`` (one ``τ`` per layer and site, calibrated at the same density);
k and v are computed from the dense input (their errors would persist in the KV cache).

Where this follows the code rather than the paper, or the engine rather than the code:

- The code's thresholds (``CHESS/notebooks/thresholds.py``) are means over calibration samples
  of per-sample statistics (per-sample quantiles, per-sample ``E|up_j|``); so are these
  (:mod:`tda.masks.channel_thresholds`), on the project's calibration corpus (BOS excluded; the
  code's C4 samples include it) and with interpolated quantiles (the code: ``kthvalue``).
- The code masks with ``|v| < t → 0``; here ``|v| ≥ t`` is kept (the same set off ties).
- Only decode steps are sparse (the prefill is dense), as for every method of the engine.
"""

from __future__ import annotations

from tda.common.errors import BadInput
from tda.engine.methods.cats import CATS
from tda.masks.channel_thresholds import attention_projections


class CHESS(CATS):
    name = "chess"
    gated_only = True
    needs_density = True
    calibrates = "E|up_j| and |act(gate)_j|·E|up_j| quantiles per layer; |x| quantiles at q and o inputs"
    summary = "CHESS: per-channel |act(gate)_j| ≥ τ_L/E|up_j| (up, down sparse); q and o inputs thresholded"

    @classmethod
    def check(cls, lm, cfg) -> None:
        super().check(lm, cfg)
        if any(attention_projections(layer) is None for layer in lm.ffn.layers):
            raise BadInput(f"method '{cfg.method}' needs separate q/k/v/o attention projections; "
                           f"{lm.model_id} has none")

    def attention(self) -> list:
        """``[q_L, o_L]`` of every layer, in order."""
        return [m for layer in self.lm.ffn.layers for m in attention_projections(layer)]

    def modules(self):
        return super().modules() + self.attention()

    def gate_cut(self, L: int, density: float):
        if density >= 1.0:  # every channel (nothing to calibrate)
            return 0.0
        return channel_thresholds(self.lm, self.cfg).chess_cuts(L, density).to(self.lm.ffn.device(L))

    def build(self):
        table, d = super().build(), self.cfg.density
        cal = channel_thresholds(self.lm, self.cfg) if d < 1.0 else None
        for L, layer in enumerate(self.lm.ffn.layers):
            for m, role in zip(attention_projections(layer), ("q", "o")):
                table[m] = self.threshold_fn(m, None if cal is None else cal.threshold(f"chess.{role}.{L}", d))
        return table


def channel_thresholds(lm, cfg):
    """CHESS's calibration (:class:`tda.masks.channel_thresholds.ChannelThresholds`, cached)."""
    from tda.masks.channel_thresholds import load_or_calibrate_channels

    return load_or_calibrate_channels(lm, None if cfg.calibration_texts is None else list(cfg.calibration_texts))
