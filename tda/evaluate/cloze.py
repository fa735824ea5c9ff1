"""Cloze (LAMBADA-style last-word prediction) under a sparse session.

An item ``{"context", "target"}`` is correct when greedy decoding would produce the target word:
every token of ``" " + target`` is the top-1 prediction given the context and the tokens before
it. As in the perplexity evaluation, the first half of the context is the dense prefill that
builds the mask; the rest of the context and the target are teacher-forced with the mask fixed,
so the target's predictions come from the sparse model (a dense prefill predicting the target
directly would make every method score like dense).
"""

from __future__ import annotations

import torch

from tda.evaluate.scoring import split_point


def item_ids(lm, item: dict) -> tuple[list[int], int]:
    """``(ids, n_target)``: context + target tokens (cut from the left to the context length)."""
    ctx = lm.tokenizer(item["context"], add_special_tokens=True).input_ids
    tgt = lm.tokenizer(" " + item["target"], add_special_tokens=False).input_ids
    ids = (ctx + tgt)[-lm.n_ctx:]
    return ids, len(tgt)


def cloze_eval(lm, items: list[dict], vs, *, cett: float = 0.2, fast: bool | None = True,
               thresholds: dict | None = None, calibration_texts=None, progress=None,
               batch_tokens: int | None = None, journal=None) -> dict[str, list[int]]:
    """``{label: [1 if correct else 0 per item]}`` for every variant, in item order. Items are scored
    in batches (:func:`tda.evaluate.scoring.score_units`: one shared prefill per batch, the lm_head on
    the target positions only); ``batch_tokens=0``: one item at a time. ``journal``
    (:class:`tda.evaluate.journal.Journal`): scored items are journalled (keyed with their target's
    token count), journalled ones read back."""
    from tda.evaluate.scoring import CLOZE_BATCH_TOKENS, score_units

    if not items:
        return {v.label: [] for v in vs}
    enc = [item_ids(lm, it) for it in items]
    seqs = [ids for ids, _ in enc]
    splits = [split_point(len(ids) - nt, 0.5) for ids, nt in enc]
    keep = max(nt for _, nt in enc)

    def reduce(i, pieces):
        ids, nt = enc[i]
        return int(torch.cat(pieces)[-nt:].argmax(-1).tolist() == ids[-nt:])

    bt = CLOZE_BATCH_TOKENS if batch_tokens is None else max(batch_tokens, 1)
    per_item = score_units(lm, seqs, splits, list(vs), keep_last=keep, cett=cett, fast=fast, thresholds=thresholds,
                           calibration_texts=calibration_texts, batch_tokens=bt, what="cloze", progress=progress,
                           reduce=reduce, journal=journal, tags=[nt for _, nt in enc])
    res = {v.label: [r[v.label] for r in per_item] for v in vs}
    if progress:
        for v in vs:
            progress(f"cloze {v.label}: {sum(res[v.label]) / max(len(items), 1):.3f} over {len(items)} items")
    return res
