"""``random``: a seeded random set of neurons per layer (the chance baseline)."""

from __future__ import annotations

import torch

from tda.engine.methods.prompt import PromptMask
from tda.masks.build import build_mask


class Random(PromptMask):
    name = "random"
    needs_density = True
    summary = "random: a seeded random neuron set (chance baseline)"

    def row_mask(self, acts):
        n, d = self.lm.ffn.n_layers, self.lm.ffn.d_ff
        return build_mask("random", torch.zeros(n, 1, d), density=self.cfg.density, seed=self.cfg.mask_seed)
