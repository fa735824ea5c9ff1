"""Prompt-fixed methods: one neuron mask per prompt, built from the dense prefill, then sliced.

Statistics are reduced online during the prefill, never stored per token: TDA's mean over tokens
of ``a_i²`` and GRIFFIN's ``Σ_t (a[t, j]/‖a[t, :]‖)²`` per batch row (pad and BOS positions
left out, as in :mod:`tda.activations.capture`), turned into a single equivalent "token" for
:func:`tda.masks.build.build_mask` — the same mask as the full activations give (tested). The
kept rows of ``W_gate``/``W_up`` and columns of ``W_down`` are then copied once into contiguous
tensors (:mod:`tda.engine.sparse`), used at every decode step.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from tda.engine.methods.base import Method
from tda.engine.sparse import slice_layer_batch, sliced_fns
from tda.masks.build import NeuronMask


class PromptMask(Method):
    kind = "prompt"
    statistic: ClassVar[str | None] = None  # "griffin" | "tda" | None (weights or seed only)

    def __init__(self, session, cfg=None):
        super().__init__(session, cfg)
        self.masks: list[NeuronMask] = []
        self.stats: dict[int, torch.Tensor] = {}
        self.slices: list = []

    def modules(self):
        return self.ffn_modules()

    def prefill_hooks(self):
        if self.statistic is None:
            return {}
        ffn = self.lm.ffn
        return {ffn.out_module(L): (lambda a, L=L: self._accumulate(L, a)) for L in range(ffn.n_layers)}

    def begin(self) -> None:
        self.stats = {}

    def _accumulate(self, L: int, a: torch.Tensor) -> None:
        s = self.session
        a = a.detach().float().reshape(s.B, s.T, -1)  # OPT passes [B*T, d_ff]
        w = s.use.to(a.device)[:, :, None]
        if self.statistic == "griffin":
            rows = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            part = (rows.pow(2) * w).sum(dim=1)  # [B, d_ff]
        else:
            part = (a.pow(2) * w).sum(dim=1) / s.n_used.to(a.device)[:, None]
        prev = self.stats.get(L)  # a chunked prefill adds each window's share
        self.stats[L] = part if prev is None else prev + part

    # ----- masks ---------------------------------------------------------------------------------
    def row_mask(self, acts: torch.Tensor | None) -> NeuronMask:
        """The mask of one batch row from its equivalent token ``acts[layer, 1, d_ff]`` (or None)."""
        raise NotImplementedError

    def row_masks(self) -> list[NeuronMask]:
        n, B = self.lm.ffn.n_layers, self.session.B
        if self.statistic is None:
            return [self.row_mask(None)] * B
        if set(self.stats) != set(range(n)):
            raise RuntimeError("the prefill did not reach every FFN layer; no mask can be built")
        pseudo = torch.stack([self.stats[L].cpu() for L in range(n)], dim=1)  # [B, layer, d_ff]
        return [self.row_mask(pseudo[b].sqrt()[:, None, :]) for b in range(B)]

    def build(self):
        ffn = self.lm.ffn
        self.masks = self.row_masks()
        keep = torch.stack([mk.keep for mk in self.masks], dim=1)  # [layer, B, d_ff]
        table, self.slices = {}, []
        for L in range(ffn.n_layers):
            sl = slice_layer_batch(ffn, L, keep[L], self.cfg.batch_mode)
            self.slices.append(sl)
            table.update(self.layer_table(L, sl))
        self.stats = {}
        return table

    def layer_table(self, L: int, sl) -> dict:
        ins, out = sliced_fns(sl, fast=self.session.fast)
        ffn = self.lm.ffn
        return {**dict(zip(ffn.in_modules(L), ins)), ffn.out_module(L): out}

    def densities(self):
        rows = [[float(x) for x in mk.density_per_layer()] for mk in self.masks]
        return sum(mk.density for mk in self.masks) / len(self.masks), rows

    def read_fraction(self):
        d_ff = self.lm.ffn.d_ff
        ks = [sl.k * (sl.down_w.shape[0] if sl.rows else 1) for sl in self.slices]
        return {"ffn": sum(ks) / (len(ks) * d_ff) if ks else 1.0, "other": 1.0, "lm_head": 1.0}
