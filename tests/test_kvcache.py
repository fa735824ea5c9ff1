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


@pytest.mark.parametrize("window", [2, 4, 7])
def test_sliding_ring_layer_equals_hf_sliding_layer(window):
    """Prefills, many single steps (several wrap-arounds of the ring), another chunk, more steps:
    the returned keys/values, the kept ones, the length and the mask sizes all equal HF's."""
    from transformers.cache_utils import DynamicSlidingWindowLayer

    g = torch.Generator().manual_seed(window)
    ref, got = DynamicSlidingWindowLayer(window), kvcache.sliding_layer_class()(window)
    for n in (3,) + (1,) * (3 * window + 2) + (5,) + (1,) * (2 * window):
        k, v = torch.randn(1, 2, n, 4, generator=g), torch.randn(1, 2, n, 4, generator=g)
        a, b = ref.update(k, v), got.update(k, v)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert torch.equal(ref.keys, got.keys) and torch.equal(ref.values, got.values)
        assert ref.get_seq_length() == got.get_seq_length()
        assert ref.get_mask_sizes(1) == got.get_mask_sizes(1)
    buf = got._kbuf.data_ptr()
    got.update(*(torch.ones(1, 2, 1, 4),) * 2)
    assert got._kbuf.data_ptr() == buf  # single steps write in place


def test_new_cache_uses_the_ring_for_sliding_layers(load_tiny):
    lm = load_tiny("tiny-gemma3")
    cache = kvcache.new_cache(lm, 16)
    kinds = {type(layer).__name__ for layer in cache.layers}
    if any(getattr(layer, "is_sliding", False) for layer in lm.new_cache().layers):
        assert "_SlidingRingLayer" in kinds
