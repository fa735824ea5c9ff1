"""Fast start-up (issue #11): specs and shapes without torch, the embedded tokenizer's fast path."""

from __future__ import annotations

import json

import pytest

from tda.models import specs


@pytest.mark.parametrize("spec", specs.TINY_SPECS)
def test_tiny_shapes_match_the_loaded_models(load_tiny, spec):
    lm = load_tiny(spec)
    shape = specs.shape_of(spec)
    assert shape == specs.shape_of_model(lm.model)
    assert (shape.n_layers, shape.d_ff, shape.n_ctx) == (lm.ffn.n_layers, lm.ffn.d_ff, lm.n_ctx)
    counted = sum(p.numel() for p in lm.model.parameters())
    assert abs(shape.n_params - counted) / counted < 0.05  # norms and biases are left out of the estimate


def test_random_preset_shape_without_loading():
    shape = specs.shape_of("random:llama-1b")
    assert shape.n_layers == 22 and shape.d_ff == 5632 and 1.0e9 < shape.n_params < 1.2e9
    assert specs.shape_of("tiny-llama+randinit3") == specs.shape_of("tiny-llama")
    assert specs.shape_of("owner/not-here") is None


def test_local_folder_shape_from_config_json(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 96, "num_hidden_layers": 5,
           "num_attention_heads": 4, "max_position_embeddings": 128, "vocab_size": 100}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    shape = specs.shape_of(str(tmp_path))
    assert (shape.n_layers, shape.d_ff, shape.n_ctx, shape.head_dim) == (5, 96, 128, 8)


@pytest.mark.slow
def test_embedded_shape_and_fast_tokenizer(gemma):
    from transformers import AutoTokenizer

    from tda.common.data import CORPUS, HELDOUT
    from tda.models import embedded

    shape = specs.shape_of("gemma-3-270m")
    assert shape == specs.shape_of_model(gemma.model)
    assert shape.windows.count(None) == 3 and shape.windows[0] == 512
    fast = gemma.tokenizer
    slow = AutoTokenizer.from_pretrained(gemma.tokenizer_dir)
    assert fast is not slow and embedded.load_tokenizer(embedded.embedded_cache_path()).padding_side == "left"
    texts = [json.loads(line)["text"] for f in (CORPUS, HELDOUT) for line in open(f)]
    texts += ["", " a", "héllo wörld ✓ 日本語 🙂", "<bos>inside", "x <eos> y", "a\n\n\tb"]
    for t in texts:
        for special in (True, False):
            ids = slow(t, add_special_tokens=special).input_ids
            assert fast(t, add_special_tokens=special).input_ids == ids
        assert fast.convert_ids_to_tokens(ids) == slow.convert_ids_to_tokens(ids)
        assert fast.decode(ids, skip_special_tokens=True) == slow.decode(ids, skip_special_tokens=True)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "padding_side", "all_special_ids"):
        assert getattr(fast, attr) == getattr(slow, attr), attr
