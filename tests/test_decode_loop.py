"""The lean decode loop (tda.engine.decode_loop) gives Hugging Face ``generate``'s tokens: stop
tokens (one row finishing before another), ``max_new_tokens``, ``min_new_tokens``, a chunked
prefill; padded batches, sampling and a model whose own generation config asks for more go to
``generate``. And the C++ argmax it uses equals ``torch.argmax``."""

from __future__ import annotations

import pytest
import torch

from tda.engine import decode_loop, kernels, kvcache
from tda.engine.generate import generate
from tda.models.load import cache_kwarg
from tests.conftest import TINY

PROMPTS = ["the quick brown fox jumps over the lazy dog and", "the quick brown fox jumps over the lazy cat and"]


@pytest.fixture
def loops(monkeypatch):
    """How many generations ran the lean loop."""
    n = [0]
    orig = decode_loop.decode

    def spy(*a, **k):
        n[0] += 1
        return orig(*a, **k)

    monkeypatch.setattr(decode_loop, "decode", spy)
    return n


def _hf(monkeypatch, fn):
    """``fn()`` with the lean loop off: the engine's own generate call through Hugging Face's loop."""
    with monkeypatch.context() as m:
        m.setattr(decode_loop, "applicable", lambda *a, **k: False)
        return fn()


@pytest.mark.parametrize("spec", TINY)
def test_greedy_equals_generate_with_stops(load_tiny, spec, loops, monkeypatch):
    lm = load_tiny(spec)
    free = generate(lm, PROMPTS[0], max_new_tokens=12, min_new_tokens=12)
    stop = free.token_ids[0][5]  # a token greedy decoding emits: generation stops there
    for kw in (dict(max_new_tokens=12, stop_token_ids=[stop]), dict(max_new_tokens=12, min_new_tokens=9,
                                                                     stop_token_ids=[stop]),
               dict(max_new_tokens=1)):
        got = generate(lm, PROMPTS[0], **kw)
        ref = _hf(monkeypatch, lambda kw=kw: generate(lm, PROMPTS[0], **kw))
        assert got.token_ids == ref.token_ids and got.texts == ref.texts, (spec, kw)
    assert len(generate(lm, PROMPTS[0], max_new_tokens=12, stop_token_ids=[stop]).token_ids[0]) <= 6
    assert loops[0] == 5  # every generation above but the three with the loop switched off


def test_a_row_that_stops_first_is_padded_like_generate(tiny_llama, loops, monkeypatch):
    lm = tiny_llama
    assert len({len(lm.tokenizer(p).input_ids) for p in PROMPTS}) == 1  # an unpadded batch
    rows = generate(lm, PROMPTS, max_new_tokens=10, min_new_tokens=10).token_ids
    diverge = next(i for i, (a, b) in enumerate(zip(*rows)) if a != b and a not in rows[1][:i + 1])
    stop = rows[0][diverge]  # only the first row emits it here: it finishes, the second goes on
    got = generate(lm, PROMPTS, max_new_tokens=10, stop_token_ids=[stop])
    ref = _hf(monkeypatch, lambda: generate(lm, PROMPTS, max_new_tokens=10, stop_token_ids=[stop]))
    assert got.token_ids == ref.token_ids and len(got.token_ids[0]) == diverge + 1
    assert loops[0] == 2


def test_chunked_prefill_then_the_loop(tiny_llama, loops, monkeypatch):
    long = " ".join(PROMPTS * 4)
    got = generate(tiny_llama, long, max_new_tokens=8, min_new_tokens=8, chunk=7)
    ref = generate(tiny_llama, long, max_new_tokens=8, min_new_tokens=8, stock=True)
    assert got.token_ids == ref.token_ids and loops[0] == 1


class _Seen:
    """A logits processor that records the storage of the scores it gets (and writes nothing)."""

    def __init__(self, writes: bool):
        self.writes_scores, self.ptrs = writes, []

    def __call__(self, input_ids, scores):
        self.ptrs.append(scores.untyped_storage().data_ptr())
        return scores


@pytest.mark.parametrize("writes", [False, True])
def test_the_logits_are_copied_only_for_a_processor_that_may_write(tiny_llama, writes):
    """A chain of processors that all say ``writes_scores = False`` reads the model's logits in
    place; one that may write (the default) gets a copy; the tokens are the same either way."""
    lm = tiny_llama
    ids = lm.tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    logits = []
    hook = lm.model.register_forward_hook(lambda m, a, out: logits.append(out.logits.untyped_storage().data_ptr()))
    seen = _Seen(writes)
    try:
        cache = kvcache.new_cache(lm, ids.shape[1] + 4)
        with torch.inference_mode():
            out = decode_loop.decode(lm.model, ids, cache, cache_kwarg(lm.model), max_new_tokens=4, processors=[seen])
    finally:
        hook.remove()
    assert len(seen.ptrs) == len(logits) == 4
    same = [a == b for a, b in zip(seen.ptrs, logits)]
    assert all(same) if not writes else not any(same)
    ref = generate(lm, PROMPTS[0], max_new_tokens=4, min_new_tokens=4)
    assert out[0, ids.shape[1]:].tolist() == ref.token_ids[0]


def test_padding_and_a_non_neutral_config_go_to_generate(tiny_llama, loops, monkeypatch):
    lm = tiny_llama
    generate(lm, [PROMPTS[0], "a b"], max_new_tokens=4)
    assert loops[0] == 0
    monkeypatch.setattr(lm.model.generation_config, "repetition_penalty", 1.3)
    got = generate(lm, PROMPTS[0], max_new_tokens=12, min_new_tokens=12)
    assert loops[0] == 0
    assert got.token_ids == generate(lm, PROMPTS[0], max_new_tokens=12, min_new_tokens=12, stock=True).token_ids


SAMPLING = [dict(temperature=0.7, top_k=20, top_p=0.9), dict(temperature=1.0, top_k=0, top_p=1.0),
            dict(temperature=1.3, top_k=5, top_p=1.0), dict(temperature=1.0, top_k=0, top_p=0.5)]


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gemma3", "tiny-gpt2"])
@pytest.mark.parametrize("warp", SAMPLING)
def test_sampling_equals_generate_with_the_same_seed(load_tiny, spec, warp, loops, monkeypatch):
    lm = load_tiny(spec)
    for extra in (dict(), dict(min_new_tokens=6, stop_token_ids=[lm.tokenizer.encode(" the")[-1]])):
        kw = dict(max_new_tokens=10, do_sample=True, seed=11, **warp, **extra)
        got = generate(lm, PROMPTS, **kw)
        ref = _hf(monkeypatch, lambda kw=kw: generate(lm, PROMPTS, **kw))
        assert got.token_ids == ref.token_ids, (spec, kw)
    assert loops[0] == 2


def test_sampling_warpers_from_the_model_config_go_to_generate(tiny_llama, loops, monkeypatch):
    monkeypatch.setattr(tiny_llama.model.generation_config, "min_p", 0.2)
    generate(tiny_llama, PROMPTS[0], max_new_tokens=4, do_sample=True, seed=1)
    assert loops[0] == 0
    generate(tiny_llama, PROMPTS[0], max_new_tokens=4)  # greedy never reads min_p
    assert loops[0] == 1


def test_bad_arguments_fail_loud(tiny_llama):
    cache = tiny_llama.new_cache()
    with pytest.raises(ValueError, match="max_new_tokens"):
        decode_loop.decode(tiny_llama.model, torch.tensor([[1, 2]]), cache, "cache", max_new_tokens=0)
    with pytest.raises(ValueError, match="input_ids"):
        decode_loop.decode(tiny_llama.model, torch.tensor([1, 2]), cache, "cache", max_new_tokens=2)


@pytest.mark.parametrize("B,V", [(1, 262144), (3, 32769), (3, 1000), (2, 33), (2, 17), (1, 1)])
def test_argmax_equals_torch(B, V):
    g = torch.Generator().manual_seed(V)
    x = torch.randn(B, V, generator=g)
    cases = [x, x.round(decimals=0)]  # many ties: the first maximum wins
    y = x.clone()
    y[:, V // 2:] = float("nan") if V > 1 else y[:, V // 2:]
    cases.append(y)
    z = torch.full((B, V), float("-inf"))
    cases.append(z)
    w = x.clone()
    w[0, -1] = float("inf")
    w[0, 0] = float("nan") if V > 2 else w[0, 0]
    cases.append(w)
    for c in cases:
        assert torch.equal(kernels.argmax_last(c), torch.argmax(c, dim=-1)), c
    if kernels.cpp_ops() is not None:
        assert torch.equal(kernels.cpp_ops().argmax_rows(x), torch.argmax(x, dim=-1))


@pytest.mark.parametrize("B,n,k", [(1, 5632, 2816), (3, 100, 7), (2, 17, 17), (1, 9, 0), (2, 64, 1)])
def test_topk_sorted_keeps_the_k_largest_in_index_order(B, n, k):
    """The predictor's selection: each row's k largest scores' indices, ascending; ties at the k-th
    value keep the lower indices, NaN ranks first (as torch.topk); bad k fails loud."""
    g = torch.Generator().manual_seed(n + k)
    x = torch.randn(B, n, generator=g)
    got = kernels.topk_sorted(x, k)
    assert got.shape == (B, k) and got.dtype == torch.int64
    assert torch.equal(got, torch.topk(x, k, dim=1).indices.sort(dim=1).values)
    ties = x.round(decimals=0)  # many equal values: the chosen set is the k largest, lower indices on ties
    got = kernels.topk_sorted(ties, k)
    for r in range(B):
        order = sorted(range(n), key=lambda i: (-float(ties[r, i]), i))[:k]
        assert got[r].tolist() == sorted(order)
    if n > 3 and k > 0:
        y = x.clone()
        y[0, 3] = float("nan")
        assert 3 in kernels.topk_sorted(y, k)[0].tolist()
    with pytest.raises(ValueError, match="k in"):
        kernels.topk_sorted(x, n + 1)
