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

    assert not batchable("tt") and not batchable("tt+head0.5") and batchable("griffin") and not batchable("griffin+tt")
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


def test_only_dense_and_prompt_fixed_rules_share_a_batch():
    """A token-wise rule is discontinuous: another batch's rounding flips near-threshold entries
    (on Gemma the flips spread through the KV cache), so only dense and prompt-fixed masks batch."""
    from tda.engine.methods.registry import get_method

    for m in method_names(combos=True):
        kind = get_method(m).kind
        assert batchable(m) == (kind in ("dense", "prompt")), m
        assert not batchable(f"{m}+head0.7"), m


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gemma3"])
def test_batched_scoring_is_per_passage_scoring_bit_for_bit(load_tiny, spec):
    """perplexity_eval in padded batches gives every token-wise method the very numbers of scoring
    one passage at a time (==, not close); dense and prompt-fixed methods agree to float rounding."""
    from tda.common.data import load_texts
    from tda.evaluate.quality import perplexity_eval, variants

    lm = load_tiny(spec)
    texts = [t for t in load_texts(limit=12)][:8]  # 40–90 words: padded batches of several rows
    methods = [m for m in ("dense", "griffin", "teal", "cats", "wina", "chess", "scap", "tt", "griffin+tt",
                           "teal+head0.5")]
    vs = []
    for v in variants(methods, [0.5]):
        try:
            SparseSession(lm, v.method, density=v.density)
        except BadInput:  # a method this family cannot run
            continue
        vs.append(v)
    cal = load_texts(limit=4)
    batched = perplexity_eval(lm, texts, vs, boot_iters=10, calibration_texts=cal, batch_tokens=4096)
    alone = perplexity_eval(lm, texts, vs, boot_iters=10, calibration_texts=cal, batch_tokens=0)
    token_wise = 0
    for v in vs:
        a, b = batched[v.label]["per_text"], alone[v.label]["per_text"]
        assert a["tokens"] == b["tokens"] and len(a["nll"]) == len(texts)
        if batchable(v.method):
            assert a["nll"] == pytest.approx(b["nll"], rel=1e-5), v.label
        else:
            assert a["nll"] == b["nll"] and a["agree"] == b["agree"], v.label
            token_wise += 1
    assert token_wise >= 4



def test_layouts_in_place_before_the_first_passage(monkeypatch):
    """A fresh model's linears are converted to the input-major layout by the first token-wise
    build, and the dense path then rounds differently (``mm`` instead of oneDNN; on Gemma a token-
    wise rule turns those last bits into other per-text NLLs). score_units builds every session
    first, so every passage is scored with the layouts that the later ones see; a second run of the
    same evaluation in the same process gives the very same numbers."""
    from tda.common.data import load_texts
    from tda.engine.layouts import is_input_major
    from tda.evaluate import scoring
    from tda.evaluate.quality import perplexity_eval, variants
    from tda.models.dispatch import linear_modules
    from tda.models.load import load_model

    lm = load_model("tiny-llama")  # its own copy: the shared fixtures' layouts are converted already
    assert not any(is_input_major(m) for m in linear_modules(lm.model))
    texts = load_texts(limit=6)
    vs = variants(["dense", "teal", "griffin"], [0.5])
    seen = []
    real = scoring.batch_logits

    def spy(lm_, seqs, splits, sessions, **kw):
        seen.append(sum(is_input_major(m) for m in linear_modules(lm_.model)))
        return real(lm_, seqs, splits, sessions, **kw)

    monkeypatch.setattr(scoring, "batch_logits", spy)
    first = perplexity_eval(lm, texts, vs, boot_iters=10, batch_tokens=0)
    n = sum(is_input_major(m) for m in linear_modules(lm.model))
    assert n > 0 and seen[0] == 0 and seen[1:] == [n] * (len(seen) - 1)  # the build first, then every passage
    again = perplexity_eval(lm, texts, vs, boot_iters=10, batch_tokens=0)
    for v in vs:
        assert first[v.label]["per_text"]["nll"] == again[v.label]["per_text"]["nll"], v.label
