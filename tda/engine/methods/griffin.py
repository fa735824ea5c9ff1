"""``griffin``: GRIFFIN's prompt statistic ``‖(a[t, j]/‖a[t, :]‖)_t‖₂``, the same top-k in every layer."""

from __future__ import annotations

from tda.engine.methods.prompt import PromptMask
from tda.masks.build import build_mask


class Griffin(PromptMask):
    name = "griffin"
    statistic = "griffin"
    needs_density = True
    summary = "GRIFFIN: prompt-normalised activation norm, top-k per layer, sliced"

    def row_mask(self, acts):
        return build_mask("griffin", acts, density=self.cfg.density, reference=self.cfg.griffin_reference)
