"""FFN adapters: weights in one orientation reproduce each family's FFN exactly."""

from __future__ import annotations

import pytest
import torch

from tda.common.errors import UnsupportedArchitecture
from tda.models.ffn import SUPPORTED_MODEL_TYPES, family_for

from .conftest import TINY


def _ffn_io(lm, layer, ids):
    """Input of the FFN's first projection and the activation ``a`` for one layer."""
    seen = {}
    h1 = lm.ffn.in_modules(layer)[0].register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    h2 = lm.ffn.out_module(layer).register_forward_pre_hook(lambda m, a: seen.setdefault("a", a[0]))
    with torch.no_grad():
        lm.model(ids)
    h1.remove()
    h2.remove()
    return seen["x"], seen["a"]


@pytest.mark.parametrize("spec", TINY)
def test_weights_reproduce_the_ffn(load_tiny, spec):
    lm = load_tiny(spec)
    ids = torch.tensor([[1, 7, 42, 99, 3]])
    for layer in range(lm.ffn.n_layers):
        x, a = _ffn_io(lm, layer, ids)
        ws, bs = lm.ffn.in_weights(layer), lm.ffn.in_biases(layer)
        pre = [x @ w.T + (b if b is not None else 0) for w, b in zip(ws, bs)]
        act = lm.ffn.act_fn(layer)
        a_ref = act(pre[0]) * pre[1] if lm.ffn.gated else act(pre[0])
        assert torch.allclose(a_ref, a, atol=1e-6)
        assert torch.allclose(lm.ffn.activations(layer, x), a, atol=1e-6)
        assert lm.ffn.down_weight(layer).shape == (lm.ffn.d_model, lm.ffn.d_ff)
        out = a @ lm.ffn.down_weight(layer).T + (lm.ffn.down_bias(layer) if lm.ffn.down_bias(layer) is not None else 0)
        with torch.no_grad():
            assert torch.allclose(out, lm.ffn.out_module(layer)(a), atol=1e-6)
        assert torch.allclose(lm.ffn.down_norms(layer), lm.ffn.down_weight(layer).norm(dim=0))


def test_gated_flags(load_tiny):
    assert load_tiny("tiny-llama").ffn.gated and load_tiny("tiny-gemma3").ffn.gated
    assert not load_tiny("tiny-gpt2").ffn.gated and not load_tiny("tiny-opt").ffn.gated
    assert load_tiny("tiny-opt").ffn.act_name == "relu"


def test_unsupported_family_message():
    with pytest.raises(UnsupportedArchitecture) as e:
        family_for("bert")
    for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gpt2", "opt"):
        assert t in SUPPORTED_MODEL_TYPES and t in str(e.value)


def test_layer_out_of_range(load_tiny):
    from tda.common.errors import BadInput

    with pytest.raises(BadInput, match="out of range"):
        load_tiny("tiny-llama").ffn.in_modules(3)
