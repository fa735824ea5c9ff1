"""Teacher-forced scoring of a continuation under a sparse session (quality and lm-eval share it)."""

from __future__ import annotations

import torch

from tda.common.errors import BadInput
from tda.engine.generate import SparseSession


def continuation_logits(lm, ids: list[int], n_prefix: int, session: SparseSession) -> torch.Tensor:
    """Logits ``[n_cont, vocab]`` predicting ``ids[n_prefix:]``: dense prefill on the prefix (mask
    built from it), then the continuation teacher-forced through the KV cache with the mask fixed."""
    if not 0 < n_prefix < len(ids):
        raise BadInput("the text is too short to split into a prompt and a continuation")
    dev = lm.device
    prefix = torch.tensor([ids[:n_prefix]], device=dev)
    cont = torch.tensor([ids[n_prefix:-1]], device=dev)
    with session.active(), torch.inference_mode():
        session.begin(prefix)
        cache = lm.new_cache()
        out = lm.model(input_ids=prefix, use_cache=True, **lm.cache_kw(cache), logits_to_keep=1)
        session.finish_prefill()
        logits = [out.logits[0, -1:].float()]
        if cont.shape[1]:
            out2 = lm.model(input_ids=cont, use_cache=True, **lm.cache_kw(cache))
            logits.append(out2.logits[0].float())
    return torch.cat(logits)


def split_point(n_tokens: int, frac: float = 0.5) -> int:
    return max(1, min(n_tokens - 1, int(round(n_tokens * frac))))
