"""The in-place KV cache (tda.engine.kvcache): the dynamic cache's values, without a cat per step."""

from __future__ import annotations

import pytest
import torch

from tda.engine import kvcache
from tests.conftest import TINY


def test_layer_equals_dynamic_layer_through_growth_crop_and_selection():
    from transformers.cache_utils import DynamicLayer

    g = torch.Generator().manual_seed(0)
    ref, got = DynamicLayer(), kvcache.preallocated_layer_class()(capacity=5)
    for n in (3, 1, 1, 4, 1):  # a prefill, decode steps, a chunk past the capacity (it grows)
        k, v = torch.randn(2, 2, n, 4, generator=g), torch.randn(2, 2, n, 4, generator=g)
        a, b = ref.update(k, v), got.update(k, v)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert ref.get_seq_length() == got.get_seq_length()
    buf = got._kbuf.data_ptr()
    got.update(*(torch.ones(2, 2, 1, 4),) * 2)
    assert got._kbuf.data_ptr() == buf  # decode steps write in place
    ref.update(*(torch.ones(2, 2, 1, 4),) * 2)
    ref.crop(-2), got.crop(-2)
    idx = torch.tensor([1])
    ref.batch_select_indices(idx), got.batch_select_indices(idx)
    k = torch.randn(1, 2, 1, 4, generator=g)
    a, b = ref.update(k, k), got.update(k, k)
    assert torch.equal(a[0], b[0]) and a[0].shape == (1, 2, 10, 4)


@pytest.mark.parametrize("spec", TINY)
def test_generate_uses_it_and_matches_stock(load_tiny, spec, monkeypatch):
    from tda.engine.generate import generate

    lm = load_tiny(spec)
    made = []
    orig = kvcache.new_cache
    monkeypatch.setattr(kvcache, "new_cache", lambda *a, **k: made.append(orig(*a, **k)) or made[-1])
    p = "the quick brown fox jumps over the lazy dog " * 3
    ref = generate(lm, p, max_new_tokens=10, min_new_tokens=10, stock=True)
    got = generate(lm, p, max_new_tokens=10, min_new_tokens=10)
    assert got.token_ids == ref.token_ids
    cls = kvcache.preallocated_layer_class()
    layers = getattr(made[0], "layers", [])
    if layers:
        assert any(isinstance(layer, cls) and layer._kbuf is not None for layer in layers)
