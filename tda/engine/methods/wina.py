"""``wina`` (WINA, arXiv 2505.19427): per token, keep the inputs with the largest
``|x_i|·‖W[:, i]‖₂`` of every block linear (top-k at the target density; no calibration)."""

from __future__ import annotations

import threading
import weakref

from tda.engine.layouts import input_major, quant_input_major
from tda.engine.methods.teal import block_linears
from tda.engine.methods.token import TokenWise
from tda.engine.tokenwise import quant_topk_linear, topk_linear
from tda.models.quant import QuantLinear

_NORMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> ‖W[:, i]‖ [d_in]
_LOCK = threading.Lock()


def column_norms(module, wt) -> object:
    """``‖W[:, i]‖₂`` per input of ``module`` (cached per module; the weights never change)."""
    with _LOCK:
        norms = _NORMS.get(module)
        if norms is None or norms.device != wt.device:
            norms = _NORMS[module] = wt.float().norm(dim=1)
        return norms


class WINA(TokenWise):
    name = "wina"
    needs_density = True
    summary = "WINA: per-token top-k of |x_i|·‖W[:, i]‖ at every block linear"

    def modules(self):
        return block_linears(self.lm)

    def build(self):
        table = {}
        for m in self.modules():
            if isinstance(m, QuantLinear):  # the quantized format: norms of the exact values, its input-major repack
                qwt = quant_input_major(m)
                k = round(self.cfg.density * qwt.shape[1])
                norms = column_norms(m, m.qweight.dequantize().t())
                table[m] = quant_topk_linear(qwt, m.bias, norms, k, self.dense_fn(m), self.counter(m))
                continue
            wt = input_major(m)
            k = round(self.cfg.density * wt.shape[0])
            table[m] = topk_linear(wt, getattr(m, "bias", None), column_norms(m, wt), k, self.dense_fn(m),
                                   self.counter(m))
        return table
