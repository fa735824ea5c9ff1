"""``predictor`` (Deja Vu line: arXiv 2310.17157, FMInference/DejaVu; NimbleEdge's
sparse_transformers): a small learned rank-``r`` predictor per layer scores every FFN neuron from
the FFN input ``x`` *before* the gate and up projections are read; each token keeps the top
``k = round(density · d_ff)`` scores, and the gate and up projections compute only those neurons
(rows of ``W_gate``/``W_up``, :func:`tda.engine.kernels.output_sparse`) and the down projection
reads only their columns (input-sparse over ``W_down^T``).

The predictors come from :mod:`tda.masks.predictor_train` (``tda train-predictor``; the newest
cached predictor of the model and calibration data is used, else one with default settings is
trained on first use, with progress on stderr). Unlike Deja Vu and sparse_transformers, which
score the *previous* block's hidden state so that prediction overlaps with attention on a GPU,
the predictor here reads the FFN's own input (there is nothing to overlap on one CPU thread, and
the prediction is more accurate); top-k as in sparse_transformers' ``topk`` mode. A batch reads the
union of the rows' sets, each row masked to its own. Density 1 is the dense FFN (no predictor).

Bytes: gate, up and down count their kept neurons' rows; the predictor's ``r·(d_model + d_ff)``
weights per layer are added to the ``ffn`` group of :meth:`read_fraction`. A module whose weight
another method made input-major (TEAL, WINA, R-Sparse in the same process) is converted back to
row-major once; GPT-2's Conv1D input projection cannot be, so it runs dense (counted in full).
"""

from __future__ import annotations

import torch

from tda.engine import kernels, quant_kernels
from tda.engine.layouts import input_major, quant_input_major, row_major
from tda.engine.methods.rsparse import stderr_progress
from tda.engine.methods.token import TokenWise, read_fraction
from tda.engine.tokenwise import sparse_product
from tda.models import hugepages
from tda.models.dispatch import module_weight, weight_numel
from tda.models.quant import QuantLinear


class Predictor(TokenWise):
    name = "predictor"
    needs_density = True
    calibrates = "a rank-r neuron predictor per layer (tda train-predictor)"
    summary = "Deja Vu-style learned predictor: per-token top-k neurons, chosen before gate/up are read"

    def modules(self):
        return self.ffn_modules()

    def predictor(self):
        from tda.masks.predictor_train import load_or_train

        texts = None if self.cfg.calibration_texts is None else list(self.cfg.calibration_texts)
        return load_or_train(self.lm, texts, newest=True, progress=stderr_progress)[0]

    def build(self):
        self.pred_params = 0
        if self.cfg.density >= 1.0:
            return {m: self._dense_counted(m) for m in self.modules()}
        pred = self.pred = self.predictor()
        ffn = self.lm.ffn
        k = max(1, min(ffn.d_ff, round(self.cfg.density * ffn.d_ff)))
        table = {}
        for L in range(ffn.n_layers):
            ins, down = ffn.in_modules(L), ffn.out_module(L)
            dev, dt = (ins[0].storage.device, torch.float32) if isinstance(ins[0], QuantLinear) else \
                (module_weight(ins[0]).device, module_weight(ins[0]).dtype)
            a = hugepages.contiguous(pred.A[L].to(device=dev, dtype=dt))  # read by every step: huge pages
            b = hugepages.contiguous(pred.B[L].to(device=dev, dtype=dt))
            self.pred_params += a.numel() + b.numel()
            state: dict = {}
            table[ins[0]] = self._in_fn(ins[0], state, select=(a, b, k))
            for m in ins[1:]:
                table[m] = self._in_fn(m, state)
            table[down] = self._down_fn(down, state)
        return table

    def _dense_counted(self, module):
        dense, counter = self.dense_fn(module), self.counter(module)

        def fn(x):
            counter.add(1, 1)
            return dense(x)

        return fn

    def _in_fn(self, module, state: dict, select=None):
        """Gate/up (or the one input projection): only the predicted neurons' rows; the first
        projection of a layer (``select``) runs the predictor and shares the selection. A quantized
        linear reads the selected rows of its blocks (:func:`tda.engine.quant_kernels.rows`)."""
        quantized = isinstance(module, QuantLinear)
        w = None if quantized else row_major(module)
        bias = getattr(module, "bias", None)
        bias = None if bias is None else bias.detach()
        dense = self.dense_fn(module) if w is None else None
        tiles = dense if quantized and getattr(dense, "tda_tiles", None) is not None else None  # every row on its tiles
        dense = None if quantized else dense
        counter = self.counter(module)
        d_ff = self.lm.ffn.d_ff

        def fn(x):
            x2 = x.reshape(-1, x.shape[-1])
            if select is not None:
                a, b, k = select
                scores = kernels.input_dense(kernels.input_dense(x2, a), b)  # [N, d_ff]
                top = kernels.topk_sorted(scores, k)  # [N, k], ascending
                if x2.shape[0] == 1:
                    state["idx"], state["keep"] = top[0], None
                else:
                    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, top, True)
                    state["idx"], state["keep"] = keep.any(dim=0).nonzero().flatten(), keep
            idx = state["idx"]
            out = x2.new_zeros(x2.shape[0], d_ff)
            if quantized and tiles is not None and x2.shape[0] == 1 and idx.numel() >= quant_kernels.dense_from() * d_ff:
                counter.add(idx.numel(), d_ff)
                counter.also_read += d_ff - idx.numel()
                out.index_copy_(1, idx, tiles(x2).index_select(1, idx))  # each row's value: its own, on the tiles
            elif quantized:
                counter.add(idx.numel(), d_ff)
                out.index_copy_(1, idx, quant_kernels.rows(x2, module.qweight, idx, bias))
            elif dense is None:
                counter.add(idx.numel(), d_ff)
                out.index_copy_(1, idx, kernels.output_sparse(x2, idx, w, bias))
            else:  # Conv1D: the dense product, read in full
                counter.add(d_ff, d_ff)
                out.index_copy_(1, idx, dense(x2).index_select(1, idx))
            return out.view(*x.shape[:-1], d_ff)

        return fn

    def _down_fn(self, down, state: dict):
        quantized = isinstance(down, QuantLinear)
        wt = quant_input_major(down) if quantized else input_major(down)  # [d_ff, d_model]
        d_model = wt.shape[0] if quantized else wt.shape[1]
        bias = getattr(down, "bias", None)
        bias = None if bias is None else bias.detach()
        counter = self.counter(down)
        dense = self.dense_fn(down) if quantized else None

        def fn(act):
            a2 = act.reshape(-1, act.shape[-1])
            idx, keep = state["idx"], state["keep"]
            if quantized:  # the kept inputs' rows of the repack, or a decode row on the dense tiles (sparse_product)
                a32 = a2.to(torch.float32)
                return sparse_product(act, a32, keep, wt, bias, dense, counter, idx=idx if keep is None else None)
            counter.add(idx.numel(), a2.shape[1])
            if keep is not None:
                a2 = a2 * keep
            return kernels.input_sparse(a2, idx, wt, bias).view(*act.shape[:-1], d_model)

        return fn

    def read_fraction(self):
        """As token-wise methods, with the predictors' weights added to the ``ffn`` group."""
        rf = read_fraction(self.lm, self.counters)
        if getattr(self, "pred_params", 0):
            rf["ffn"] += self.pred_params / sum(weight_numel(m) for m in self.modules())
        return rf
