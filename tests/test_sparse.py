"""Sliced FFN overrides equal the masked dense FFN; online mask statistics equal build_mask."""

from __future__ import annotations

import pytest
import torch

from tda.engine.sparse import ffn_apply, masked_dense_ffn, slice_layer_batch, sliced_fns, tt_out_fn
from tda.models.dispatch import linear_overrides

FAMILIES = ("tiny-llama", "tiny-gemma3", "tiny-gpt2", "tiny-opt")


def _table(lm, L, fns):
    ins, out = fns
    t = {m: f for m, f in zip(lm.ffn.in_modules(L), ins)}
    t[lm.ffn.out_module(L)] = out
    return t


def _rand_keep(B, d_ff, density, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, d_ff, generator=g) < density


@pytest.mark.parametrize("spec", FAMILIES)
@pytest.mark.parametrize("fast", [False, True])
def test_sliced_equals_masked_dense(load_tiny, spec, fast):
    lm = load_tiny(spec)
    ffn = lm.ffn
    x = torch.randn(1, 5, ffn.d_model, generator=torch.Generator().manual_seed(1))
    keep = _rand_keep(1, ffn.d_ff, 0.4, 2)
    for L in range(ffn.n_layers):
        sl = slice_layer_batch(ffn, L, keep, "union")
        assert sl.k == int(keep.sum())
        with torch.inference_mode(), linear_overrides(_table(lm, L, sliced_fns(sl, fast=fast))):
            got = ffn_apply(ffn, L, x)
        ref = masked_dense_ffn(ffn, L, x, keep[0])
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
        dense = masked_dense_ffn(ffn, L, x, torch.ones(ffn.d_ff, dtype=torch.bool))
        assert not torch.allclose(got, dense, atol=1e-5)  # the mask really removed something


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-opt", "tiny-gpt2"])
@pytest.mark.parametrize("mode", ["union", "rows"])
def test_batch_rows_keep_their_own_mask(load_tiny, spec, mode):
    lm = load_tiny(spec)
    ffn = lm.ffn
    B = 3
    x = torch.randn(B, 4, ffn.d_model, generator=torch.Generator().manual_seed(3))
    keep = torch.stack([_rand_keep(1, ffn.d_ff, d, 10 + i)[0] for i, d in enumerate((0.3, 0.5, 0.7))])
    sl = slice_layer_batch(ffn, 1, keep, mode)
    with torch.inference_mode(), linear_overrides(_table(lm, 1, sliced_fns(sl, fast=False))):
        got = ffn_apply(ffn, 1, x)
    for b in range(B):
        ref = masked_dense_ffn(ffn, 1, x[b:b + 1], keep[b])
        torch.testing.assert_close(got[b:b + 1], ref, rtol=1e-4, atol=1e-5)


def test_tt_out_fn_zeroes_small_activations(tiny_llama):
    ffn = tiny_llama.ffn
    a = torch.randn(2, 3, ffn.d_ff, generator=torch.Generator().manual_seed(4))
    cut = torch.full((ffn.d_ff,), 0.8)
    counter = [torch.zeros((), dtype=torch.long), 0]
    fn = tt_out_fn(ffn.down_weight(0), ffn.down_bias(0), cut, fast=False, counter=counter)
    got = fn(a)
    ref = (a * (a.abs() >= 0.8)) @ ffn.down_weight(0).T
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert counter[1] == a.numel()
    assert int(counter[0]) == int((a.abs() >= 0.8).sum())


@pytest.mark.parametrize("method", ["griffin", "tda"])
def test_online_statistics_give_build_mask_result(tiny_llama, method):
    """The session's reduced prefill statistics give the mask build_mask gives on full captures."""
    from tda.activations.capture import capture
    from tda.engine.generate import SparseSession
    from tda.masks.build import build_mask, model_down_norms

    lm = tiny_llama
    text = "the cat sat on the mat and looked at the door"
    sess = SparseSession(lm, method, density=0.5, fast=False)
    ids = torch.tensor([lm.tokenizer(text).input_ids])
    with sess.active(), torch.inference_mode():
        sess.begin(ids)
        lm.model(input_ids=ids, use_cache=False)
        sess.finish_prefill()
    cap = capture(lm, text)
    kind = "griffin" if method == "griffin" else "tda_matched"
    ref = build_mask(kind, cap.acts, density=0.5, thresholds=sess.thresholds, down_norms=model_down_norms(lm))
    assert torch.equal(sess.masks[0].keep, ref.keep)
