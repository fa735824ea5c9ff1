"""``static``: weight magnitudes only (``‖W_gate[j]‖·‖W_up[j]‖`` or ``‖W_in[j]‖``), top-k."""

from __future__ import annotations

import torch

from tda.engine.methods.prompt import PromptMask
from tda.masks.build import build_mask, model_static_scores


class Static(PromptMask):
    name = "static"
    needs_density = True
    summary = "static: the same neurons for every prompt, by weight norms"

    def row_mask(self, acts):
        n, d = self.lm.ffn.n_layers, self.lm.ffn.d_ff
        return build_mask("static", torch.zeros(n, 1, d), density=self.cfg.density,
                          static_scores=model_static_scores(self.lm))
