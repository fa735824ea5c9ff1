"""``tt``: TT's token-wise CETT rule, made fast.

``a = act(gate)·up`` is computed densely; the down projection then reads only the columns of the
neurons with ``|a_i| ≥ s·t_L/‖W_down[:, i]‖`` (``s = 1``: the calibrated CETT thresholds; with a
density, ``s`` is fitted on the prefill so that fraction of neurons passes).
"""

from __future__ import annotations

import torch

from tda.common.quantile import quantile
from tda.engine.methods.thresholds import cett_thresholds
from tda.engine.methods.token import TokenWise


class TT(TokenWise):
    name = "tt"
    calibrates = "CETT thresholds t_L per layer"
    summary = "TT: per-token CETT rule on a; the down projection reads only active neurons"

    def __init__(self, session, cfg=None):
        super().__init__(session, cfg)
        self.thresholds = cett_thresholds(self.lm, self.cfg)
        self.scale = 1.0
        self.samples: dict[int, torch.Tensor] = {}

    def modules(self):
        ffn = self.lm.ffn
        return [ffn.out_module(L) for L in range(ffn.n_layers)]

    def prefill_hooks(self):
        d = self.cfg.density
        if d is None or d >= 1.0:
            return {}
        ffn = self.lm.ffn
        return {ffn.out_module(L): (lambda a, L=L: self._sample(L, a)) for L in range(ffn.n_layers)}

    def begin(self) -> None:
        self.samples = {}

    def _sample(self, L: int, a: torch.Tensor) -> None:
        """Relative scores ``|a_i|·‖W_down[:, i]‖/t_L`` of the used prompt tokens (subsampled)."""
        s = self.session
        a = a.detach().float().reshape(s.B, s.T, -1)
        w = s.use.to(a.device) > 0
        norms = self.lm.ffn.down_norms(L).float().to(a.device)
        rel = (a.abs() * norms / max(self.thresholds[L], 1e-12))[w].flatten()
        step = max(1, rel.numel() // 65536)
        prev = self.samples.get(L)  # a chunked prefill adds each window's sample
        self.samples[L] = rel[::step].cpu() if prev is None else torch.cat([prev, rel[::step].cpu()])

    def cutoffs(self) -> list[torch.Tensor | None]:
        """Per layer ``cut[i] = s·t_L/‖W_down[:, i]‖`` (``None`` at density 1: keep everything)."""
        ffn, d = self.lm.ffn, self.cfg.density
        if d is not None and d >= 1.0:
            return [None] * ffn.n_layers
        if d is not None and self.samples:
            rel = torch.cat([self.samples[L] for L in sorted(self.samples)])
            self.scale = float(quantile(rel, 1.0 - d)) if rel.numel() else 1.0
        self.samples = {}
        return [self.scale * self.thresholds[L] / ffn.down_norms(L).float().clamp_min(1e-12)
                for L in range(ffn.n_layers)]

    def build(self):
        ffn, table = self.lm.ffn, {}
        for L, cut in enumerate(self.cutoffs()):
            m = ffn.out_module(L)
            table[m] = self.threshold_fn(m, cut)
        return table
