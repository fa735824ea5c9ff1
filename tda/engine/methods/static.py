"""``static``: weight magnitudes only (``‖W_gate[j]‖·‖W_up[j]‖`` or ``‖W_in[j]‖``), top-k."""

from __future__ import annotations

import torch

from tda.engine.methods.prompt import PromptMask
from tda.engine.sparse import slice_layer_batch
from tda.masks.build import build_mask, model_static_scores
from tda.models.derived import derived


class Static(PromptMask):
    name = "static"
    needs_density = True
    summary = "static: the same neurons for every prompt, by weight norms"

    def row_mask(self, acts):
        n, d = self.lm.ffn.n_layers, self.lm.ffn.d_ff
        return build_mask("static", torch.zeros(n, 1, d), density=self.cfg.density,
                          static_scores=model_static_scores(self.lm))

    def build(self):
        """The prompt does not matter: the mask and its slices are built once per (model, density)
        (kept on the model, :func:`tda.models.derived.derived`) and shared by every prompt and row
        (identical rows make one slice whatever the batch mode)."""
        mask, self.slices = derived(self.lm.model, ("static.build", self.cfg.density), self._mask_and_slices)
        self.masks = [mask] * self.session.B
        table = {}
        for L, sl in enumerate(self.slices):
            table.update(self.layer_table(L, sl))
        return table

    def _mask_and_slices(self):
        mask = self.row_mask(None)
        ffn = self.lm.ffn
        return mask, [slice_layer_batch(ffn, L, mask.keep[L][None], self.cfg.batch_mode) for L in range(ffn.n_layers)]
