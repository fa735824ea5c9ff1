"""generate(): density 1.0 = dense, batch = per prompt, two threads, dtypes, HF semantics."""

from __future__ import annotations

import threading

import pytest
import torch

from tda.common.errors import BadInput
from tda.engine.generate import generate

FAMILIES = ("tiny-llama", "tiny-gemma3", "tiny-gpt2", "tiny-opt")
PROMPTS = ["the quick brown fox jumps over", "a house by the river", "one two three four five six seven"]


@pytest.mark.parametrize("spec", FAMILIES)
def test_density_one_is_dense(load_tiny, spec):
    lm = load_tiny(spec)
    dense = generate(lm, PROMPTS[0], "dense", max_new_tokens=8, min_new_tokens=8)
    stock = generate(lm, PROMPTS[0], "dense", max_new_tokens=8, min_new_tokens=8, stock=True)
    assert dense.token_ids == stock.token_ids and len(dense.token_ids[0]) == 8
    for method in ("griffin", "tda", "tt"):
        r = generate(lm, PROMPTS[0], method, density=1.0, max_new_tokens=8, min_new_tokens=8)
        assert r.token_ids == dense.token_ids, method
        assert r.density == pytest.approx(1.0)
    half = generate(lm, PROMPTS[0], "griffin", density=0.5, max_new_tokens=8, min_new_tokens=8)
    assert half.density == pytest.approx(0.5, abs=0.01)
    assert all(len(row) == lm.ffn.n_layers for row in half.density_per_layer)


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-opt"])
@pytest.mark.parametrize("method,mode", [("griffin", "union"), ("tda", "union"), ("tda", "rows"), ("tt", "union")])
def test_batch_equals_per_prompt(load_tiny, spec, method, mode):
    lm = load_tiny(spec)
    kw = dict(density=0.5, max_new_tokens=6, min_new_tokens=6, batch_mode=mode)
    batch = generate(lm, PROMPTS, method, **kw)
    for i, p in enumerate(PROMPTS):
        single = generate(lm, p, method, **kw)
        assert batch.token_ids[i] == single.token_ids[0], (i, p)
        if method != "tt":
            assert batch.density_per_layer[i] == pytest.approx(single.density_per_layer[0])


def test_two_threads_get_independent_results(tiny_llama):
    lm = tiny_llama
    jobs = [("dense", None), ("griffin", 0.25), ("tda", 0.5), ("random", 0.3)]
    expected = {j: generate(lm, PROMPTS[2], j[0], density=j[1], max_new_tokens=10, min_new_tokens=10).token_ids
                for j in jobs}
    got, errors = {}, []

    def worker(job, reps=3):
        try:
            for _ in range(reps):
                r = generate(lm, PROMPTS[2], job[0], density=job[1], max_new_tokens=10, min_new_tokens=10)
                got.setdefault(job, []).append(r.token_ids)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({str(v) for v in expected.values()}) > 1  # the methods really differ
    for j in jobs:
        assert got[j] == [expected[j]] * 3, j


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision(dtype):
    from tda.models.load import load_model

    lm = load_model("tiny-llama", dtype=dtype)
    for method in ("dense", "griffin", "tt", "tda"):
        r = generate(lm, PROMPTS[:2], method, density=0.5, max_new_tokens=5, min_new_tokens=5)
        assert [len(t) for t in r.token_ids] == [5, 5]
        assert r.params["fast"] is (dtype == "bf16")  # the fast dense path takes fp32 and bf16


def test_sampling_seed_and_stop_tokens(tiny_llama):
    lm = tiny_llama
    kw = dict(max_new_tokens=12, min_new_tokens=12, do_sample=True, temperature=1.5, top_k=0, top_p=1.0)
    a = generate(lm, PROMPTS[0], "griffin", density=0.5, seed=7, **kw)
    b = generate(lm, PROMPTS[0], "griffin", density=0.5, seed=7, **kw)
    c = generate(lm, PROMPTS[0], "griffin", density=0.5, seed=8, **kw)
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids
    greedy = generate(lm, PROMPTS[0], "dense", max_new_tokens=6)
    stop = greedy.token_ids[0][2]
    cut = generate(lm, PROMPTS[0], "dense", max_new_tokens=6, stop_token_ids=[stop])
    first = greedy.token_ids[0].index(stop)
    assert cut.token_ids[0] == greedy.token_ids[0][:first + 1]


def test_min_new_tokens_holds_back_stop_tokens_like_hf(tiny_llama):
    """The engine's own min-new-tokens processor (greedy) gives Hugging Face's tokens."""
    lm = tiny_llama
    stop = generate(lm, PROMPTS[1], "dense", max_new_tokens=2).token_ids[0][0]
    assert generate(lm, PROMPTS[1], "dense", max_new_tokens=8, stop_token_ids=[stop]).token_ids[0] == [stop]
    kw = dict(max_new_tokens=8, min_new_tokens=5, stop_token_ids=[stop])
    ours = generate(lm, PROMPTS[1], "dense", **kw)
    hf = generate(lm, PROMPTS[1], "dense", stock=True, **kw)
    assert ours.token_ids == hf.token_ids
    assert len(ours.token_ids[0]) >= 5 and stop not in ours.token_ids[0][:5]


def test_fast_path_probe_and_timings(tiny_llama):
    from tda.engine.fastpath import mkldnn_available, use_fast

    r = generate(tiny_llama, PROMPTS[0], "griffin", density=0.5, max_new_tokens=4, min_new_tokens=4)
    assert r.params["fast"] == (mkldnn_available() and use_fast(tiny_llama))
    t = r.timings
    assert t["decode_steps"] == 3 and t["prefill_s"] > 0 and t["decode_ms_per_token"] > 0
    assert t["total_s"] >= t["prefill_s"]


@pytest.mark.parametrize("kw,msg", [
    (dict(method="nope"), "unknown method"),
    (dict(method="griffin", density=0.0), "density"),
    (dict(method="griffin", density=1.5), "density"),
    (dict(method="griffin"), "needs a density"),
    (dict(method="dense", max_new_tokens=0), "max-new-tokens"),
    (dict(method="dense", max_new_tokens=10**6), "exceeds the context"),
])
def test_bad_input(tiny_llama, kw, msg):
    with pytest.raises(BadInput, match=msg):
        generate(tiny_llama, PROMPTS[0], **kw)
    with pytest.raises(BadInput):
        generate(tiny_llama, [], "dense")
    with pytest.raises(BadInput):
        generate(tiny_llama, ["  "], "dense")


def test_shared_model_not_mutated(tiny_llama):
    before = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
    generate(tiny_llama, PROMPTS[0], "tda", density=0.3, max_new_tokens=3)
    after = tiny_llama.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m._forward_pre_hooks for m in tiny_llama.model.modules())


@pytest.mark.slow
def test_gemma_density_one_and_fast_path(gemma):
    """The real model: the oneDNN probe passes, fast dense = stock tokens, griffin@1.0 = dense."""
    from tda.engine.fastpath import mkldnn_available, use_fast

    p = "The weather in Edinburgh during the winter festival was"
    stock = generate(gemma, p, "dense", stock=True, max_new_tokens=6, min_new_tokens=6)
    dense = generate(gemma, p, "dense", max_new_tokens=6, min_new_tokens=6)
    full = generate(gemma, p, "griffin", density=1.0, max_new_tokens=6, min_new_tokens=6)
    assert dense.params["fast"] == (mkldnn_available() and use_fast(gemma))
    assert dense.token_ids == stock.token_ids == full.token_ids
    half = generate(gemma, p, "tda", density=0.5, max_new_tokens=6, min_new_tokens=6)
    assert half.density == pytest.approx(0.5, abs=0.02) and len(half.token_ids[0]) == 6


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gemma3"])
def test_fast_table_fuses_rms_norms(load_tiny, spec):
    """The fast dense table overrides every RMSNorm with one fused call equal to the module."""
    from tda.engine.fastpath import dense_table, norm_fn
    from tda.models.dispatch import linear_modules, norm_modules, original_forward

    lm = load_tiny(spec)
    if lm.dtype != torch.float32:
        pytest.skip("fp32 only")
    norms = norm_modules(lm.model)
    assert norms and not set(norms) & set(linear_modules(lm.model))  # norms are not linears
    table = dense_table(lm.model, fast=True)
    assert all(m in table for m in norms)
    for m in norms:
        x = torch.randn(2, 3, m.weight.shape[0])
        with torch.inference_mode():
            assert torch.allclose(table[m](x), original_forward(m)(x), rtol=1e-5, atol=1e-5)
    assert norm_fn(torch.nn.LayerNorm(4)) is None  # not an RMSNorm variant it knows
