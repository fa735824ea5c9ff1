"""Masks: each constructor against an independent straightforward computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tda.common.errors import BadInput
from tda.masks.build import (
    build_mask,
    check_density,
    griffin_mask,
    griffin_scores,
    k_for_density,
    model_down_norms,
    model_static_scores,
    random_mask,
    static_mask,
    tda_mask,
    tda_matched_mask,
    tda_scores,
    topk_mask,
    tt_masks,
)


def _acts(n_layers=3, n_tokens=7, d_ff=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_layers, n_tokens, d_ff, generator=g) * torch.rand(n_layers, 1, d_ff, generator=g)


def _norms(n_layers=3, d_ff=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n_layers, d_ff, generator=g) + 0.1


def test_griffin_statistic_equals_plain_loops():
    acts = _acts()
    a = acts.numpy().astype(np.float64)
    L, T, F = a.shape
    expected = np.zeros((L, F))
    for layer in range(L):
        for j in range(F):
            s = 0.0
            for t in range(T):
                row_norm = math.sqrt(sum(float(a[layer, t, i]) ** 2 for i in range(F)))
                s += (a[layer, t, j] / row_norm) ** 2
            expected[layer, j] = math.sqrt(s)
    np.testing.assert_allclose(griffin_scores(acts).numpy(), expected, rtol=1e-5)


def test_griffin_mask_keeps_the_top_k_of_the_statistic_in_every_layer():
    acts = _acts(d_ff=50)
    m = griffin_mask(acts, 0.3)
    scores = griffin_scores(acts).numpy()
    for layer in range(3):
        kept = set(m.indices(layer).tolist())
        assert len(kept) == 15
        order = np.argsort(-scores[layer])
        assert kept == set(order[:15].tolist())


def test_tt_masks_equal_per_token_thresholding():
    acts, norms = _acts(), _norms()
    thresholds = [0.05, 0.1, 0.2]
    keep = tt_masks(acts, norms, thresholds).keep
    L, T, F = acts.shape
    for layer in range(L):
        for t in range(T):
            for i in range(F):
                want = abs(float(acts[layer, t, i])) >= thresholds[layer] / float(norms[layer, i])
                # the float product |a|·‖w‖ ≥ t vs the division |a| ≥ t/‖w‖: equal unless on the boundary
                assert bool(keep[layer, t, i]) == want or abs(abs(float(acts[layer, t, i])) * float(norms[layer, i]) - thresholds[layer]) < 1e-6
    assert keep.shape == acts.shape and keep.dtype == torch.bool
    # a larger threshold keeps fewer neurons
    assert tt_masks(acts, norms, [2 * t for t in thresholds]).density < tt_masks(acts, norms, thresholds).density


def test_tda_mask_is_rms_of_output_norm_against_threshold():
    acts, norms = _acts(), _norms()
    thresholds = torch.tensor([0.1, 0.2, 0.3])
    m = tda_mask(acts, norms, thresholds)
    a = acts.numpy().astype(np.float64)
    for layer in range(3):
        for j in range(acts.shape[2]):
            rms = math.sqrt(np.mean([(abs(a[layer, t, j]) * float(norms[layer, j])) ** 2 for t in range(a.shape[1])]))
            assert bool(m.keep[layer, j]) == (rms >= float(thresholds[layer]))
    np.testing.assert_allclose(tda_scores(acts, norms)[0, 0], math.sqrt(np.mean((np.abs(a[0, :, 0]) * float(norms[0, 0])) ** 2)), rtol=1e-5)
    # neuron active on every token is kept; never active is dropped
    acts2 = torch.zeros(1, 4, 3)
    acts2[0, :, 0] = 1.0
    m2 = tda_mask(acts2, torch.ones(1, 3), [0.5])
    assert m2.keep.tolist() == [[True, False, False]]
    assert tda_mask(acts, norms, thresholds, scale=2.0).density <= m.density


@pytest.mark.parametrize("density", [0.05, 0.25, 0.5, 0.8, 1.0])
def test_topk_methods_hit_their_density_in_every_layer(density):
    acts = _acts(d_ff=40)
    k = k_for_density(40, density)
    for m in (griffin_mask(acts, density), static_mask(_norms(), density), random_mask(3, 40, density, seed=3)):
        assert m.keep.sum(dim=1).tolist() == [k, k, k]
        assert m.density == pytest.approx(k / 40)
        assert m.density_per_layer().tolist() == pytest.approx([k / 40] * 3)


@pytest.mark.parametrize("density", [0.1, 0.33, 0.5, 0.9])
def test_tda_matched_hits_its_target(density):
    acts, norms = _acts(n_layers=4, d_ff=200), _norms(n_layers=4, d_ff=200)
    m = tda_matched_mask(acts, norms, [0.05, 0.1, 0.2, 0.4], density)
    # the mask keeps at least the target and overshoots by at most one neuron of the 800
    assert density - 1e-9 <= m.density <= density + 1.5 / 800
    # it is a TDA mask at one common scale
    scale = m.params["scale"]
    assert torch.equal(m.keep, tda_mask(acts, norms, [0.05, 0.1, 0.2, 0.4], scale=scale).keep)


def test_static_mask_uses_weight_scores(tiny_llama):
    scores = model_static_scores(tiny_llama)
    assert scores.shape == (tiny_llama.ffn.n_layers, tiny_llama.ffn.d_ff)
    g, u = (w.float() for w in tiny_llama.ffn.in_weights(1))
    torch.testing.assert_close(scores[1], g.norm(dim=1) * u.norm(dim=1))
    m = static_mask(scores, 0.25)
    assert set(m.indices(1).tolist()) == set(scores[1].topk(32).indices.tolist())
    norms = model_down_norms(tiny_llama)
    torch.testing.assert_close(norms[2], tiny_llama.ffn.down_weight(2).float().norm(dim=0))


def test_random_mask_is_seeded():
    a, b, c = random_mask(3, 64, 0.5, seed=1), random_mask(3, 64, 0.5, seed=1), random_mask(3, 64, 0.5, seed=2)
    assert torch.equal(a.keep, b.keep)
    assert not torch.equal(a.keep, c.keep)


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.0001, 2, float("nan"), "0.5", None])
def test_bad_densities_raise(bad):
    with pytest.raises(BadInput, match="density"):
        check_density(bad)
    acts = _acts()
    with pytest.raises(BadInput):
        griffin_mask(acts, bad)
    with pytest.raises(BadInput):
        tda_matched_mask(acts, _norms(), [0.1, 0.1, 0.1], bad)


def test_build_mask_dispatch_and_errors():
    acts, norms = _acts(), _norms()
    th = [0.1, 0.1, 0.1]
    assert torch.equal(build_mask("griffin", acts, density=0.5).keep, griffin_mask(acts, 0.5).keep)
    assert torch.equal(build_mask("tda", acts, thresholds=th, down_norms=norms).keep, tda_mask(acts, norms, th).keep)
    with pytest.raises(BadInput, match="unknown mask method"):
        build_mask("nope", acts, density=0.5)
    with pytest.raises(BadInput, match="needs a density"):
        build_mask("griffin", acts)
    with pytest.raises(BadInput, match="thresholds"):
        build_mask("tda", acts)
    with pytest.raises(BadInput, match="one threshold per layer"):
        tda_mask(acts, norms, [0.1, 0.1])
    with pytest.raises(BadInput, match="no prompt tokens"):
        griffin_mask(torch.zeros(3, 0, 40), 0.5)


def test_topk_mask_shape():
    keep = topk_mask(torch.arange(12.0).reshape(2, 6), 0.5)
    assert keep.tolist() == [[False] * 3 + [True] * 3] * 2
