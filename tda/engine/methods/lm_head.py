"""The lm_head option: sparsify the lm_head's input token-wise (TEAL's rule), for any method.

Off by default (``SparsityConfig.lm_head_density=None``). On Gemma 3 270M the 262k-word lm_head
is 62% of the bytes a decode step reads, so it bounds what FFN sparsity alone can gain. The
threshold on the final hidden state's ``|x_i|`` is calibrated like TEAL's (per tensor, offline).
"""

from __future__ import annotations

from tda.engine.layouts import input_major
from tda.engine.methods.thresholds import input_thresholds
from tda.engine.methods.token import TokenWise
from tda.engine.tokenwise import threshold_linear
from tda.masks.input_thresholds import module_names


class LMHead(TokenWise):
    name = "lm_head"
    summary = "TEAL's |x| threshold on the lm_head input"

    @classmethod
    def check(cls, lm, cfg) -> None:
        if lm.model.get_output_embeddings() is None:
            from tda.common.errors import BadInput

            raise BadInput(f"{lm.model_id} has no lm_head to sparsify")

    def modules(self):
        return [self.lm.model.get_output_embeddings()]

    def build(self):
        head = self.lm.model.get_output_embeddings()
        d = self.cfg.lm_head_density
        t = None if d >= 1.0 else input_thresholds(self.lm, self.cfg).threshold(module_names(self.lm.model)[id(head)], d)
        return {head: threshold_linear(input_major(head), getattr(head, "bias", None), t, self.dense_fn(head),
                                       self.counter(head))}
