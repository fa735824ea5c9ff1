"""Cloze (LAMBADA-style last-word prediction) under a sparse session.

An item ``{"context", "target"}`` is correct when greedy decoding would produce the target word:
every token of ``" " + target`` is the top-1 prediction given the context and the tokens before
it. As in the perplexity evaluation, the first half of the context is the dense prefill that
builds the mask; the rest of the context and the target are teacher-forced with the mask fixed,
so the target's predictions come from the sparse model (a dense prefill predicting the target
directly would make every method score like dense).
"""

from __future__ import annotations

from tda.common import distributed
from tda.engine.generate import SparseSession
from tda.evaluate.scoring import continuation_logits, split_point


def item_ids(lm, item: dict) -> tuple[list[int], int]:
    """``(ids, n_target)``: context + target tokens (cut from the left to the context length)."""
    ctx = lm.tokenizer(item["context"], add_special_tokens=True).input_ids
    tgt = lm.tokenizer(" " + item["target"], add_special_tokens=False).input_ids
    ids = (ctx + tgt)[-lm.n_ctx:]
    return ids, len(tgt)


def cloze_eval(lm, items: list[dict], vs, *, cett: float = 0.2, fast: bool | None = True,
               thresholds: dict | None = None, calibration_texts=None, progress=None) -> dict[str, list[int]]:
    """``{label: [1 if correct else 0 per item]}`` for every variant, in item order."""
    thresholds = thresholds or {}

    def one_item(i, item) -> dict[str, int]:
        ids, nt = item_ids(lm, item)
        k = split_point(len(ids) - nt, 0.5)
        out = {}
        for v in vs:
            sess = SparseSession(lm, v.method, density=v.density, cett=cett, fast=fast,
                                 thresholds=thresholds.get(v.method), calibration_texts=calibration_texts)
            logits = continuation_logits(lm, ids, k, sess)
            pred = logits[-nt:].argmax(-1).tolist()
            out[v.label] = int(pred == ids[-nt:])
        return out

    per_item = distributed.map_sharded(one_item, items)
    res = {v.label: [r[v.label] for r in per_item] for v in vs}
    if progress:
        for v in vs:
            progress(f"cloze {v.label}: {sum(res[v.label]) / max(len(items), 1):.3f} over {len(items)} items")
    return res
