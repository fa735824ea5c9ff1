"""``cats`` (CATS, arXiv 2404.08763): threshold ``|act(W_gate x)|`` per layer, then compute the up
and down projections only for the active neurons.

The gate is computed densely; a neuron is active when ``|act(gate)_j| ≥ τ_L``. ``τ_L`` is
calibrated offline on the gate activations of calibration text: to the target density, or —
without one — to the density CETT's calibrated thresholds give in that layer (so ``cats`` and
``tt`` keep as many neurons per layer). The up projection reads only the active rows of
``W_up`` (its output is zero elsewhere, so ``act(gate)·up`` is too) and the down projection
only the active rows of ``W_down^T``.
"""

from __future__ import annotations

import torch

from tda.engine import kernels
from tda.engine.layouts import input_major, quant_input_major, row_major
from tda.engine.methods.thresholds import input_thresholds
from tda.engine.methods.token import TokenWise
from tda.engine.tokenwise import sparse_product
from tda.models.quant import QuantLinear


class CATS(TokenWise):
    name = "cats"
    gated_only = True
    calibrates = "|act(gate)| quantiles per layer (and CETT densities without a density)"
    summary = "CATS: |act(gate)| threshold per layer; up and down only for active neurons"

    def modules(self):
        ffn = self.lm.ffn
        return [m for L in range(ffn.n_layers) for m in (*ffn.in_modules(L), ffn.out_module(L))]

    def layer_densities(self) -> list[float]:
        n = self.lm.ffn.n_layers
        if self.cfg.density is not None:
            return [self.cfg.density] * n
        from tda.masks.calibrate import load_or_calibrate

        texts = None if self.cfg.calibration_texts is None else list(self.cfg.calibration_texts)
        return list(load_or_calibrate(self.lm, texts=texts, target=self.cfg.cett).densities)

    def build(self):
        ffn = self.lm.ffn
        table = {}
        for L, d in enumerate(self.layer_densities()):
            gate, up = ffn.in_modules(L)
            down = ffn.out_module(L)
            tau = self.gate_cut(L, d)
            state: dict = {}
            table[gate] = self._gate_fn(L, gate, tau, state)
            table[up] = self._up_fn(up, state)
            table[down] = self._down_fn(down, state)
            self.counters[id(up)] = (up, self.counters[id(down)][1])  # up reads the same rows as down
        return table

    def gate_cut(self, L: int, density: float):
        """The cut on ``|act(gate)|`` of layer ``L``: one number (CATS) or one per channel."""
        return input_thresholds(self.lm, self.cfg).threshold(f"gate_act.{L}", density)

    def _gate_fn(self, L: int, gate, tau, state: dict):
        dense, act = self.dense_fn(gate), self.lm.ffn.act_fn(L)

        def fn(x):
            g = dense(x)
            a = act(g)
            if a.dtype == torch.float32 and a.numel() == a.shape[-1]:  # one row: the kept channels' indices, one C++ pass
                state["idx"] = state["idx_down"] = kernels.active_indices(a, tau)
                state["keep"] = state["keep_down"] = None
                return g
            a = a.abs()
            keep = (a if a.dtype in (torch.float32, torch.float64) else a.float()) >= tau  # [..., d_ff]; tau never rounded to bf16
            state["keep"] = state["keep_down"] = keep.reshape(-1, keep.shape[-1])
            state["idx"] = state["idx_down"] = None
            return g

        return fn

    def _up_fn(self, up, state: dict):
        if isinstance(up, QuantLinear):  # the quantized format: the active rows of its blocks
            return self._quant_up_fn(up, state)
        # [d_ff, d_model] row-major, the layout this method reads: the active outputs' rows are
        # contiguous. When an input-sparse method (TEAL, WINA, ...) made W_up input-major earlier in
        # this process, it is converted back here (tda.engine.layouts.row_major): each method reads
        # its own layout, and one that ran before cannot change how this one is timed (sessions
        # still holding the input-major copy keep it alive for as long as they live).
        w = row_major(up)
        b = getattr(up, "bias", None)

        def fn(x):
            keep, idx = state.pop("keep"), state.pop("idx")
            x2 = x.reshape(-1, x.shape[-1])
            if idx is None:
                idx = torch.nonzero(keep.any(dim=0) if keep.shape[0] > 1 else keep[0]).flatten()
            out = torch.zeros(x2.shape[0], w.shape[0], dtype=x.dtype, device=x.device)
            vals = kernels.output_sparse(x2, idx, w, b)
            out[:, idx] = vals * keep[:, idx] if keep is not None and keep.shape[0] > 1 else vals
            return out.view(*x.shape[:-1], w.shape[0])

        return fn

    def _quant_up_fn(self, up, state: dict):
        """The active rows of the blocks — or, for a decode row keeping at least
        :func:`~tda.engine.quant_kernels.dense_from` of them where the dense function reads integer
        tiles, every row on those tiles with the inactive ones zeroed (each row's value does not
        depend on the others; the tiles are faster there, as for the down projection)."""
        from tda.engine import quant_kernels

        qw, b, d_out = up.qweight, up.bias, up.out_features
        dense = self.dense_fn(up)
        tiles = getattr(dense, "tda_tiles", None) is not None

        def fn(x):
            keep, idx = state.pop("keep"), state.pop("idx")
            x2 = x.reshape(-1, x.shape[-1])
            if idx is None:
                idx = torch.nonzero(keep.any(dim=0) if keep.shape[0] > 1 else keep[0]).flatten()
            if tiles and x2.shape[0] == 1 and idx.numel() >= quant_kernels.dense_from() * d_out:
                y = dense(x2)
                return torch.zeros_like(y).index_copy_(1, idx, y.index_select(1, idx)).view(*x.shape[:-1], d_out)
            out = torch.zeros(x2.shape[0], d_out, dtype=x.dtype, device=x.device)
            vals = quant_kernels.rows(x2, qw, idx, b)
            out[:, idx] = vals * keep[:, idx] if keep is not None and keep.shape[0] > 1 else vals
            return out.view(*x.shape[:-1], d_out)

        return fn

    def _down_fn(self, down, state: dict):
        # the quantized format reads its input-major repack, full-precision weights their W_t
        wt = quant_input_major(down) if isinstance(down, QuantLinear) else input_major(down)
        b, dense, counter = getattr(down, "bias", None), self.dense_fn(down), self.counter(down)

        def fn(a):
            return sparse_product(a, a.reshape(-1, a.shape[-1]), state.pop("keep_down"), wt, b, dense, counter,
                                  idx=state.pop("idx_down"))

        return fn
