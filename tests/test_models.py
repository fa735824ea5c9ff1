"""Model specs: tiny, local folder, hub name offline, unknown, unsupported, random, embedded cache."""

from __future__ import annotations

import json

import pytest
import torch

from tda.common.errors import BadInput, ModelLoadError, UnsupportedArchitecture
from tda.models import embedded
from tda.models.load import TINY_SPECS, list_specs, load_model

from .conftest import TINY


@pytest.mark.parametrize("spec", TINY)
def test_tiny_specs_load_and_are_deterministic(spec):
    a, b = load_model(spec), load_model(spec)
    assert a.kind == "tiny" and a.model_id == spec and a.is_random
    assert a.ffn.n_layers == 3 and a.ffn.d_ff == 128
    for (na, pa), (nb, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert na == nb and torch.equal(pa, pb), na
    assert a.tokenizer_dir is not None


def test_tiny_specs_differ_from_each_other():
    w = [load_model(s).ffn.down_weight(0) for s in ("tiny-llama", "tiny-mistral")]
    assert not torch.equal(w[0], w[1]) or w[0].shape != w[1].shape


def test_local_folder_round_trip(tmp_path, tiny_llama):
    tiny_llama.model.save_pretrained(tmp_path / "m")
    tiny_llama.tokenizer.save_pretrained(tmp_path / "m")
    lm = load_model(str(tmp_path / "m"))
    assert lm.kind == "local" and lm.model_id == "m"
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        assert torch.allclose(lm.model(ids).logits, tiny_llama.model(ids).logits, atol=1e-6)


def test_unsupported_architecture_lists_supported(tmp_path):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64)
    GPTNeoXForCausalLM(cfg).save_pretrained(tmp_path / "neox")
    with pytest.raises(UnsupportedArchitecture) as e:
        load_model(str(tmp_path / "neox"))
    msg = str(e.value)
    assert "gpt_neox" in msg and "llama" in msg and "gemma3" in msg and "\n" not in msg


def test_missing_local_folder():
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("./no/such/model")


def test_hub_name_offline_fails_clearly(monkeypatch):
    import tda.common.hub as hub

    monkeypatch.setattr(hub, "hub_resolvable", lambda: False)
    with pytest.raises(ModelLoadError) as e:
        load_model("google/gemma-3-270m")
    assert "offline" in str(e.value) and "gemma-3-270m" in str(e.value)


def test_unknown_spec_and_bad_options():
    with pytest.raises(ModelLoadError, match="unknown model spec"):
        load_model("not a model")
    with pytest.raises(BadInput, match="dtype"):
        load_model("tiny-llama", dtype="int3")
    if not torch.cuda.is_available():
        with pytest.raises(BadInput, match="no CUDA"):
            load_model("tiny-llama", device="cuda")
    with pytest.raises(ModelLoadError, match="random preset"):
        load_model("random:nope")


def test_dtype_option(load_tiny):
    lm = load_model("tiny-gemma3", dtype="bf16")
    assert lm.dtype == torch.bfloat16


def test_random_preset_is_labelled(monkeypatch):
    import tda.models.load as m

    # A shrunken preset keeps the test fast; the code path is the one random:llama-1b uses.
    monkeypatch.setitem(m.RANDOM_PRESETS, "llama-test", dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=512, max_position_embeddings=128))
    lm = load_model("random:llama-test")
    assert lm.kind == "random" and "RANDOM WEIGHTS" in lm.description and "timing only" in lm.description
    assert lm.ffn.d_ff == 64
    specs = [r["spec"] for r in list_specs()]
    assert "random:llama-1b" in specs and "random:llama-2-7b" in specs and set(TINY_SPECS) <= set(specs)


def test_embedded_cache_detects_partial_and_corrupt(tmp_path, monkeypatch):
    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path))
    calls = []

    def fake_convert(dest, progress):
        calls.append(dest)
        (dest / "model.safetensors").write_bytes(b"x" * 100)
        files = {"model.safetensors": 100}
        (dest / embedded.MANIFEST).write_text(json.dumps({"format": embedded.CACHE_FORMAT, "files": files}))

    monkeypatch.setattr(embedded, "_convert", fake_convert)
    path = embedded.ensure_embedded_cache(progress=lambda m: None)
    assert embedded.cache_is_valid(path) and len(calls) == 1
    embedded.ensure_embedded_cache(progress=lambda m: None)
    assert len(calls) == 1  # valid cache: no second conversion
    (path / "model.safetensors").write_bytes(b"x" * 10)  # truncated file
    assert not embedded.cache_is_valid(path)
    embedded.ensure_embedded_cache(progress=lambda m: None)
    assert len(calls) == 2 and embedded.cache_is_valid(path)
    (path / embedded.MANIFEST).unlink()  # interrupted before the manifest
    assert not embedded.cache_is_valid(path)
    embedded.ensure_embedded_cache(progress=lambda m: None)
    assert len(calls) == 3
    assert not list(tmp_path.glob(".gemma-3-270m.*"))  # no temporary folders left


@pytest.mark.slow
def test_embedded_gemma_loads_from_cache(gemma):
    # The fixture is that cached load (a second load here would hold a second 1.1 GB copy). How fast
    # it is lives in a benchmark, not here (benchmarks/startup.py, "load").
    lm = gemma
    info = lm.info()
    assert info["n_layers"] == 18 and info["d_ff"] == 2048 and info["gated"] and lm.kind == "embedded"
    assert "gelu" in info["activation"]


def test_randinit_control_spec(tiny_llama):
    ctl = load_model("tiny-llama+randinit3")
    again = load_model("tiny-llama+randinit3")
    assert ctl.model_id == "tiny-llama+randinit3" and ctl.kind == "random"
    assert ctl.ffn.describe() == tiny_llama.ffn.describe()
    assert not torch.equal(ctl.ffn.down_weight(0), tiny_llama.ffn.down_weight(0))
    assert torch.equal(ctl.ffn.down_weight(0), again.ffn.down_weight(0))
    assert "random weights" in ctl.description
