"""Activation capture: modes, TransformerLens vs hooks, batch, save/load, streaming, threads."""

from __future__ import annotations

import threading

import pytest
import torch

from tda.activations.capture import (
    Capture,
    capture,
    capture_batch,
    capture_to_dir,
    hook_name,
    load_dir,
    resolve_layers,
)
from tda.common.errors import BadInput

from .conftest import TINY

TEXT = "Almost one million people visited the city"


@pytest.mark.parametrize("spec", TINY)
@pytest.mark.parametrize("mode", ["sequence", "isolated"])
def test_transformerlens_equals_hooks(load_tiny, spec, mode):
    lm = load_tiny(spec)
    a = capture(lm, TEXT, mode=mode, backend="hooks")
    b = capture(lm, TEXT, mode=mode, backend="tl")
    assert a.acts.shape == b.acts.shape == (3, len(a.token_ids), 128)
    assert (a.acts - b.acts).abs().max() <= 1e-5


@pytest.mark.parametrize("spec", TINY)
def test_bridge_wraps_its_own_modules_over_the_shared_weights(load_tiny, spec):
    """The TransformerLens bridge runs a copy of the model's modules (the shared model keeps its own,
    unhooked, and computes as before) over the same weight tensors: no second set of weights."""
    lm = load_tiny(spec)
    before = capture(lm, TEXT, backend="hooks")
    copy = lm.bridge().original_model
    capture(lm, TEXT, backend="tl")
    assert not {id(m) for m in copy.modules()} & {id(m) for m in lm.model.modules()}
    assert not any(p is q for p in copy.parameters() for q in lm.model.parameters())
    # every weight of the model is the copy's too (GPT-2's adapter adds split q/k/v of its own)
    assert {p.data_ptr() for p in lm.model.parameters()} <= {p.data_ptr() for p in copy.parameters()}
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in lm.model.modules())
    assert torch.equal(capture(lm, TEXT, backend="hooks").acts, before.acts)


def test_modes_shapes_and_bos(tiny_llama):
    seq = capture(tiny_llama, TEXT)
    iso = capture(tiny_llama, TEXT, mode="isolated")
    ids = tiny_llama.tokenizer(TEXT).input_ids
    assert ids[0] == tiny_llama.tokenizer.bos_token_id
    assert seq.token_ids == iso.token_ids == ids[1:]  # BOS conditions but is not a row
    assert seq.tokens[0] == "A" and seq.mode == "sequence" and iso.mode == "isolated"
    # The first token sees only BOS in both modes: identical rows; later tokens differ.
    assert torch.allclose(seq.acts[:, 0], iso.acts[:, 0], atol=1e-6)
    assert not torch.allclose(seq.acts[:, -1], iso.acts[:, -1], atol=1e-3)
    with_bos = capture(tiny_llama, TEXT, include_bos=True)
    assert with_bos.n_tokens == seq.n_tokens + 1


def test_isolated_means_no_context(tiny_llama):
    """A token's isolated activation does not depend on the other tokens of the prompt."""
    a = capture(tiny_llama, "the city", mode="isolated")
    b = capture(tiny_llama, "people visited the city", mode="isolated")
    assert torch.allclose(a.acts[:, -1], b.acts[:, -1], atol=1e-6)


def test_layer_selection(tiny_llama):
    cap = capture(tiny_llama, TEXT, layers="2,0")
    full = capture(tiny_llama, TEXT)
    assert cap.layers == [0, 2]
    assert torch.equal(cap.layer(2), full.layer(2))
    assert resolve_layers(tiny_llama, [-1]) == [2]
    with pytest.raises(BadInput, match="out of range"):
        capture(tiny_llama, TEXT, layers=[3])
    with pytest.raises(BadInput, match="not in this capture"):
        cap.layer(1)
    assert hook_name(4) == "blocks.4.mlp.hook_post"


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt2", "tiny-opt"])
def test_batch_excludes_padding(load_tiny, spec):
    lm = load_tiny(spec)
    texts = [TEXT, "The city", "Nearly one million people visited the city during the festival"]
    caps = capture_batch(lm, texts, batch_size=2)
    assert [c.mode for c in caps] == ["batch"] * 3
    for text, cap in zip(texts, caps):
        single = capture(lm, text)
        assert cap.token_ids == single.token_ids
        assert (cap.acts - single.acts).abs().max() <= 1e-5
    tl = capture_batch(lm, texts, backend="tl")
    assert all((a.acts - b.acts).abs().max() <= 1e-5 for a, b in zip(caps, tl))


def test_save_load_round_trip(tmp_path, tiny_llama):
    cap = capture(tiny_llama, TEXT, layers=[0, 2], mode="isolated")
    path = cap.save(tmp_path / "c.safetensors")
    back = Capture.load(path)
    assert torch.equal(back.acts, cap.acts)
    assert (back.layers, back.token_ids, back.tokens, back.model_id, back.mode, back.text) == (
        cap.layers, cap.token_ids, cap.tokens, cap.model_id, cap.mode, cap.text)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(BadInput, match="not a valid tda capture"):
        Capture.load(bad)
    with pytest.raises(BadInput, match="does not exist"):
        Capture.load(tmp_path / "none.safetensors")


def test_streaming_to_dir(tmp_path, tiny_llama):
    texts = [f"text number {i} about the city" for i in range(5)]
    out = capture_to_dir(tiny_llama, texts, tmp_path / "caps", layers=[1], batch_size=2)
    loaded = list(load_dir(out))
    assert len(loaded) == 5 and all(c.layers == [1] for c in loaded)
    assert torch.allclose(loaded[3].acts, capture(tiny_llama, texts[3], layers=[1]).acts, atol=1e-5)


def test_bad_prompts(tiny_llama):
    with pytest.raises(BadInput, match="empty"):
        capture(tiny_llama, "   \n")
    with pytest.raises(BadInput, match="limit is 512"):
        capture(tiny_llama, "city " * 600)
    with pytest.raises(BadInput, match="mode"):
        capture(tiny_llama, TEXT, mode="diagonal")


def test_concurrent_captures_do_not_mix(tiny_llama):
    """Two threads capturing different prompts on one shared model get their own results."""
    texts = {0: TEXT, 1: "Less than one million aliens visited the planet today"}
    expected = {i: capture(tiny_llama, t).acts for i, t in texts.items()}
    errors = []

    def work(i):
        for _ in range(20):
            got = capture(tiny_llama, texts[i]).acts
            if got.shape != expected[i].shape or not torch.allclose(got, expected[i], atol=1e-6):
                errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sequence", "isolated"])
def test_transformerlens_equals_hooks_on_gemma(gemma, mode):
    a = capture(gemma, TEXT, mode=mode, backend="hooks")
    b = capture(gemma, TEXT, mode=mode, backend="tl")
    assert a.acts.shape == (18, 7, 2048)
    assert (a.acts - b.acts).abs().max() <= 1e-5
