"""Batched teacher-forced scoring (one shared prefill, padded rows) equals the per-token scoring
of each method: the continuation decoded one token at a time through the KV cache."""

from __future__ import annotations

import pytest
import torch

from tda.common.errors import BadInput
from tda.engine.generate import SparseSession
from tda.engine.methods.registry import method_names
from tda.evaluate.scoring import (
    batch_logits,
    batchable,
    batches_by_length,
    continuation_logits,
    window,
)

# short enough for tiny-gemma3's 16-token sliding window once padded (a longer batch is scored row by row)
TEXTS = ["the quick brown fox jumps over the dog", "one two three four five six",
         "a short line of words here"]
LONG = ["the quick brown fox jumps over the lazy dog and runs far away into the woods today and tomorrow",
        "one two three four five six seven eight nine ten"]


def stepwise_logits(lm, ids: list[int], k: int, session: SparseSession) -> torch.Tensor:
    """The reference: dense prefill of ``ids[:k]``, then one decode step per continuation token."""
    with session.active(), torch.inference_mode():
        prefix = torch.tensor([ids[:k]])
        session.begin(prefix)
        cache = lm.new_cache()
        out = lm.model(input_ids=prefix, use_cache=True, **lm.cache_kw(cache), logits_to_keep=1)
        session.finish_prefill()
        rows = [out.logits[0, -1:].float()]
        for t in ids[k:-1]:
            out = lm.model(input_ids=torch.tensor([[t]]), use_cache=True, **lm.cache_kw(cache))
            rows.append(out.logits[0, -1:].float())
    return torch.cat(rows)


def _session(lm, method: str, cal):
    return SparseSession(lm, method, density=None if method == "dense" else 0.5, calibration_texts=cal)


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gemma3"])
def test_batched_equals_per_token_every_method(load_tiny, spec):
    from tda.common.data import load_texts

    lm = load_tiny(spec)
    cal = load_texts(limit=4)
    checked = 0
    for texts in (TEXTS, LONG):
        seqs = [lm.tokenizer(t).input_ids for t in texts]
        ks = [len(s) // 2 for s in seqs]
        for m in (*method_names(combos=True), "griffin+head0.5", "teal+head0.7"):
            try:
                _session(lm, m, cal)
            except BadInput:  # a method this family cannot run (e.g. gated-only)
                continue
            rows = [[i] for i in range(len(seqs))] if not batchable(m) else [list(range(len(seqs)))]
            for group in rows:
                got = batch_logits(lm, [seqs[i] for i in group], [ks[i] for i in group],
                                   {m: _session(lm, m, cal), "dense": _session(lm, "dense", cal)})
                for j, i in enumerate(group):
                    ref = stepwise_logits(lm, seqs[i], ks[i], _session(lm, m, cal))
                    torch.testing.assert_close(got[m][j], ref, rtol=1e-4, atol=2e-4, msg=f"{spec} {m} row {i}")
                    checked += 1
            # keep_last: the last positions only, the same numbers
            last = batch_logits(lm, seqs[:1], ks[:1], {m: _session(lm, m, cal)}, keep_last=2)[m][0]
            full = continuation_logits(lm, seqs[0], ks[0], _session(lm, m, cal))
            torch.testing.assert_close(last, full[-2:], rtol=1e-4, atol=2e-4)
    assert checked >= 20


def test_pooled_fit_methods_are_not_batched(tiny_llama):
    """tt with a density fits its scale on the pooled prefill: rows would change each other."""
    from tda.common.data import load_texts

    assert not batchable("tt") and not batchable("tt+head0.5") and batchable("griffin") and batchable("griffin+tt")
    cal = load_texts(limit=4)
    seqs = [tiny_llama.tokenizer(t).input_ids for t in LONG]
    ks = [len(s) // 2 for s in seqs]
    both = batch_logits(tiny_llama, seqs, ks, {"tt": _session(tiny_llama, "tt", cal)})["tt"]
    alone = stepwise_logits(tiny_llama, seqs[0], ks[0], _session(tiny_llama, "tt", cal))
    assert not torch.allclose(both[0], alone, atol=1e-4)


def test_window_and_batches():
    assert batches_by_length([5, 50, 10, 48], max_tokens=100) == [[1, 3], [2, 0]]
    assert batches_by_length([300, 10], max_tokens=100) == [[0], [1]]
    assert batches_by_length([4, 4, 4], max_tokens=100, max_rows=2) == [[0, 1], [2]]


def test_window_of_models(load_tiny):
    assert window(load_tiny("tiny-gemma3")) == 16
    assert window(load_tiny("tiny-llama")) > 10**9


def test_batch_logits_bad_input(tiny_llama):
    with pytest.raises(BadInput, match="too short"):
        batch_logits(tiny_llama, [[1, 2]], [2], {"dense": SparseSession(tiny_llama, "dense")})
