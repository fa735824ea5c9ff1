"""``teal`` (TEAL, arXiv 2408.14690): magnitude thresholds on the inputs of every linear of every
block (q, k, v, o, gate, up, down), one per tensor, calibrated offline to the target density on
the activation distribution of calibration text (uniform density across tensors)."""

from __future__ import annotations

from tda.engine.layouts import input_major
from tda.engine.methods.thresholds import input_thresholds
from tda.engine.methods.token import TokenWise
from tda.engine.tokenwise import threshold_linear
from tda.masks.input_thresholds import module_names


class TEAL(TokenWise):
    name = "teal"
    needs_density = True
    calibrates = "|x| quantiles at every block linear's input"
    summary = "TEAL: per-tensor |x| thresholds on every block linear's input"

    def modules(self):
        return block_linears(self.lm)

    def build(self):
        cal = input_thresholds(self.lm, self.cfg)
        names = module_names(self.lm.model)
        table = {}
        for m in self.modules():
            t = None if self.cfg.density >= 1.0 else cal.threshold(names[id(m)], self.cfg.density)
            table[m] = threshold_linear(input_major(m), getattr(m, "bias", None), t, self.dense_fn(m),
                                        self.counter(m))
        return table


def block_linears(lm) -> list:
    """Every instrumented linear inside the decoder blocks (attention and FFN), in order."""
    from tda.models.dispatch import is_instrumented

    return [m for layer in lm.ffn.layers for m in layer.modules() if is_instrumented(m)]
