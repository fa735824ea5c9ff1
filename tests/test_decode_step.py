"""The leaner decode step (issue 17, point 1): one fused attention call per layer at decode steps
(tda.engine.attention) inside a lean decoder stack (tda.engine.decoder), used by dense and by every
method on the fast path. Greedy fp32 tokens stay
identical to stock Hugging Face ``generate``; sampling with a seed too; padded batches and the
families it does not cover keep HF's attention."""

from __future__ import annotations

import pytest
import torch

from tda.engine import attention, decoder
from tda.engine.generate import generate
from tests.conftest import TINY

PROMPTS = ["the quick brown fox jumps over the lazy dog and", "one two three four five six seven eight nine ten"]
LEAN = ("tiny-llama", "tiny-gemma3", "tiny-qwen3", "tiny-mistral")


@pytest.fixture
def calls(monkeypatch):
    """How many decode-step attentions the lean path computed."""
    n = [0]

    def spy(orig):
        def fn(*a, **k):
            out = orig(*a, **k)
            n[0] += out is not None
            return out
        return fn

    monkeypatch.setattr("tda.engine.session.decode_attention", spy(attention.decode_attention))
    monkeypatch.setattr("tda.engine.decoder.fused_step", spy(attention.fused_step))  # the lean stack's
    monkeypatch.setattr("tda.engine.decoder.decode_attention", spy(attention.decode_attention))  # with hooks
    return n


@pytest.fixture
def stacks(monkeypatch):
    """How many decode steps the lean decoder stack computed."""
    n = [0]
    orig = decoder.decode_stack

    def spy(*a, **k):
        out = orig(*a, **k)
        n[0] += out is not None
        return out

    monkeypatch.setattr("tda.engine.session.decode_stack", spy)
    return n


@pytest.mark.parametrize("spec", TINY)
def test_greedy_tokens_equal_stock_hf(load_tiny, spec, calls, stacks):
    lm = load_tiny(spec)
    for p in PROMPTS:
        ref = generate(lm, p, max_new_tokens=24, min_new_tokens=24, stock=True)
        got = generate(lm, p, max_new_tokens=24, min_new_tokens=24)
        assert got.params["fast"] and got.token_ids == ref.token_ids, (spec, p)
    layers = lm.model.config.num_hidden_layers
    if spec in LEAN:  # 23 decode steps per prompt, every layer (tiny-gemma3's window of 16 passed)
        assert calls[0] == 2 * 23 * layers and stacks[0] == 2 * 23
    else:
        assert calls[0] == 0 and stacks[0] == 0


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gemma3", "tiny-qwen3"])
def test_bf16_greedy_runs_the_lean_stack(spec, stacks):
    from tda.models.load import load_model

    lm = load_model(spec, dtype="bf16")
    got = generate(lm, PROMPTS[0], max_new_tokens=8, min_new_tokens=8)
    assert len(got.token_ids[0]) == 8 and stacks[0] == 7


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gemma3"])
def test_sampling_with_a_seed_equals_stock_hf(load_tiny, spec, calls):
    lm = load_tiny(spec)
    kw = dict(max_new_tokens=12, do_sample=True, temperature=0.9, top_k=20, top_p=0.95, seed=7)
    assert generate(lm, PROMPTS[0], **kw).token_ids == generate(lm, PROMPTS[0], stock=True, **kw).token_ids
    assert calls[0] > 0


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gemma3", "tiny-qwen3", "tiny-mistral"])
def test_one_step_logits_match_eager(load_tiny, spec):
    from tda.models.dispatch import attention_override, decoder_override

    lm = load_tiny(spec)
    ids = torch.tensor([lm.tokenizer(PROMPTS[1] * 2).input_ids])
    with torch.inference_mode():
        outs = []
        for attn, stack in ((None, None), (attention.decode_attention, None), (None, decoder.decode_stack)):
            cache = lm.new_cache()
            lm.model(input_ids=ids[:, :-1], use_cache=True, **lm.cache_kw(cache))
            with attention_override(attn), decoder_override(stack):
                outs.append(lm.model(input_ids=ids[:, -1:], use_cache=True, **lm.cache_kw(cache)).logits)
            assert stack is None or decoder._PLAN.get(lm.model.model)
    assert ids.shape[1] > 17  # past tiny-gemma3's sliding window
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[2], outs[0], rtol=1e-5, atol=1e-5)


def test_padded_batch_keeps_hf_attention(tiny_llama, calls, stacks):
    ref = generate(tiny_llama, PROMPTS + ["a b"], max_new_tokens=8, min_new_tokens=8, stock=True)
    got = generate(tiny_llama, PROMPTS + ["a b"], max_new_tokens=8, min_new_tokens=8)
    assert got.token_ids == ref.token_ids and calls[0] == 0 and stacks[0] == 0


def test_unpadded_batch_uses_the_lean_stack(tiny_llama, stacks):
    prompts = [PROMPTS[0], PROMPTS[0].replace("dog", "cat")]
    assert len({len(tiny_llama.tokenizer(p).input_ids) for p in prompts}) == 1  # no padding
    ref = generate(tiny_llama, prompts, max_new_tokens=8, min_new_tokens=8, stock=True)
    got = generate(tiny_llama, prompts, max_new_tokens=8, min_new_tokens=8)
    assert got.token_ids == ref.token_ids and stacks[0] == 7


@pytest.mark.parametrize("method", ["griffin", "teal", "tt", "cats"])
def test_methods_use_the_lean_step(tiny_llama, calls, stacks, method):
    a = generate(tiny_llama, PROMPTS[0], method, density=0.5, max_new_tokens=8, min_new_tokens=8)
    assert calls[0] > 0 and stacks[0] == 7
    calls[0] = stacks[0] = 0
    b = generate(tiny_llama, PROMPTS[0], method, density=0.5, max_new_tokens=8, min_new_tokens=8, fast=False)
    assert calls[0] == 0 and stacks[0] == 0 and len(a.token_ids[0]) == len(b.token_ids[0]) == 8


@pytest.mark.slow
def test_gemma_greedy_tokens_equal_stock_hf(gemma, calls, stacks):
    for p in ("The capital of France is", "Once upon a time, in a small village by the sea,"):
        ref = generate(gemma, p, max_new_tokens=32, min_new_tokens=32, stock=True)
        got = generate(gemma, p, max_new_tokens=32, min_new_tokens=32)
        assert got.token_ids == ref.token_ids, p
    assert calls[0] > 0 and stacks[0] == 2 * 31
    kw = dict(max_new_tokens=16, do_sample=True, seed=3, temperature=0.8, top_k=40, top_p=0.95)
    assert generate(gemma, "Once upon a time", **kw).token_ids == \
        generate(gemma, "Once upon a time", stock=True, **kw).token_ids


def test_hooks_fire_inside_the_lean_stack_and_on_a_layer_keep_hf_forward(tiny_llama, calls, stacks):
    ref = generate(tiny_llama, PROMPTS[0], max_new_tokens=6, min_new_tokens=6, stock=True).token_ids
    generate(tiny_llama, PROMPTS[0], max_new_tokens=2)  # the fast-path probe's forward passes, done
    layer = tiny_llama.model.model.layers[0]
    for mod, lean in ((layer.self_attn, True), (layer.mlp.down_proj, True), (layer, False)):
        seen = []
        h = mod.register_forward_hook(lambda *a, _seen=seen: _seen.append(1))
        calls[0] = stacks[0] = 0
        try:
            got = generate(tiny_llama, PROMPTS[0], max_new_tokens=6, min_new_tokens=6)
        finally:
            h.remove()
        assert len(seen) == 6 and got.token_ids == ref  # the prefill and 5 decode steps
        assert stacks[0] == (5 if lean else 0) and calls[0] == 5 * tiny_llama.model.config.num_hidden_layers


def test_a_deepcopy_of_the_model_runs_its_own_layers(tiny_llama):
    import copy

    cp = copy.deepcopy(tiny_llama.model)  # as the TransformerLens bridge does
    seen = []
    cp.model.layers[0].register_forward_hook(lambda *a: seen.append(1))
    with torch.inference_mode():
        cp(input_ids=torch.tensor([[1, 2, 3]]))
    assert seen == [1]


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gemma3"])
def test_rotary_blocks_equal_one_position_calls(load_tiny, spec):
    """Batch-1 steps read cos/sin from a block of the next positions: the same values as the rotary
    module's own call at each position, across block boundaries and layer types."""
    lm = load_tiny(spec)
    model = lm.model.model
    blocks = decoder.RotaryBlocks(model.rotary_emb)
    assert blocks.ok
    types = sorted(set(getattr(model.config, "layer_types", None) or [])) or [None]
    h = torch.zeros(1, 1, model.config.hidden_size)
    with torch.inference_mode():
        for pos in (5, 6, 5 + decoder.ROPE_BLOCK - 1, 5 + decoder.ROPE_BLOCK, 3):
            for t in types:
                ids = torch.tensor([[pos]])
                want = model.rotary_emb(h, ids) if t is None else model.rotary_emb(h, ids, t)
                got = blocks.get(h, pos, t)
                assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (pos, t)
                assert got[0].is_contiguous() and got[0].shape == want[0].shape


def test_rotary_blocks_stay_off_for_dynamic_rope_and_on_a_mismatch(tiny_llama):
    rot = tiny_llama.model.model.rotary_emb

    class Dynamic(torch.nn.Module):
        rope_type = "dynamic"

    assert not decoder.RotaryBlocks(Dynamic()).ok

    class Drifting(torch.nn.Module):  # a rotary whose one-position call differs from its block rows
        rope_type = "default"

        def forward(self, x, ids):
            cos, sin = rot(x, ids)
            return (cos + 1, sin) if ids.shape[1] == 1 else (cos, sin)

    blocks = decoder.RotaryBlocks(Drifting())
    with torch.inference_mode():
        assert blocks.get(torch.zeros(1, 1, tiny_llama.model.config.hidden_size), 4) is None
    assert not blocks.ok


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gemma3"])
def test_long_greedy_runs_across_rotary_blocks(load_tiny, spec):
    lm = load_tiny(spec)
    n = decoder.ROPE_BLOCK + 20
    ref = generate(lm, PROMPTS[0], max_new_tokens=n, min_new_tokens=n, stock=True)
    got = generate(lm, PROMPTS[0], max_new_tokens=n, min_new_tokens=n)
    assert got.token_ids == ref.token_ids
