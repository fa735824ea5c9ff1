"""``tda``: TT's neuron output norms, root-mean-square over the prompt, kept when ``≥ t_L``.

With a density: one scale on every ``t_L`` so the mean density hits it (``tda_matched``);
without: the calibrated CETT thresholds as they are.
"""

from __future__ import annotations

from tda.engine.methods.prompt import PromptMask
from tda.engine.methods.thresholds import cett_thresholds
from tda.masks.build import build_mask, model_down_norms


class TDA(PromptMask):
    name = "tda"
    statistic = "tda"
    calibrates = "CETT thresholds t_L per layer"
    summary = "TDA: RMS over the prompt of |a_i|·‖W_down[:, i]‖ against t_L, sliced"

    def __init__(self, session, cfg=None):
        super().__init__(session, cfg)
        self.thresholds = cett_thresholds(self.lm, self.cfg)

    def row_mask(self, acts):
        norms = model_down_norms(self.lm)
        if self.cfg.density is None:
            return build_mask("tda", acts, thresholds=self.thresholds, down_norms=norms)
        return build_mask("tda_matched", acts, density=self.cfg.density, thresholds=self.thresholds,
                          down_norms=norms)
