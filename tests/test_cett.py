"""CETT and the threshold bisection, on cases with hand-computed answers; calibration files."""

from __future__ import annotations

import math

import pytest
import torch

from tda.common.errors import BadInput
from tda.masks.calibrate import Calibration, calibrate, load_or_calibrate
from tda.masks.cett import active_by_threshold, cett_per_token, find_threshold, mean_cett


def _orthogonal_w(col_norms, d_model=6, seed=0):
    """``W_down[d_model, neuron]`` with orthogonal columns of the given norms (a rotated basis)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d_model, d_model, generator=g, dtype=torch.float64))
    return (q[:, : len(col_norms)] * torch.tensor(col_norms, dtype=torch.float64)).float()


# Token A: output norms |a_i|·‖W[:, i]‖ = 1, 2, 3, 4 (Σ‖n_i‖² = 30). Orthogonal columns: norms add
# in quadrature, so CETT(t) = sqrt(Σ_{‖n_i‖<t} ‖n_i‖² / 30):
#   t ≤ 1: 0;  1 < t ≤ 2: sqrt(1/30) = 0.1826;  2 < t ≤ 3: sqrt(5/30) = 0.4082;  3 < t ≤ 4: sqrt(14/30) = 0.6831.
W = _orthogonal_w([1.0, 2.0, 0.5, 4.0])
TOKEN_A = torch.tensor([[1.0, 1.0, 6.0, -1.0]])  # norms 1, 2, 3, 4 (sign does not matter)


@pytest.mark.parametrize(("t", "expected"), [
    (0.5, 0.0), (1.0, 0.0), (1.5, math.sqrt(1 / 30)), (2.0, math.sqrt(1 / 30)), (2.5, math.sqrt(5 / 30)),
    (3.5, math.sqrt(14 / 30)), (4.5, 1.0),
])
def test_cett_per_token_by_hand(t, expected):
    assert float(cett_per_token(TOKEN_A, W, t)[0]) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(("target", "expected"), [
    (0.1, 1.0),   # CETT(1+) = 0.18 > 0.1: the largest t is 1
    (0.2, 2.0),   # CETT(2) = 0.18 ≤ 0.2 < CETT(2+) = 0.41
    (0.5, 3.0),   # CETT(3) = 0.41 ≤ 0.5 < CETT(3+) = 0.68
    (0.9, 4.0),   # CETT(4) = 0.68 ≤ 0.9 < CETT(4+) = 1
])
def test_find_threshold_one_token(target, expected):
    t = find_threshold(TOKEN_A, W, target, iters=50)
    assert t == pytest.approx(expected, abs=1e-6)
    assert mean_cett(TOKEN_A, W, t) <= target


def test_find_threshold_mean_over_tokens():
    # Token B: norms 2, 2, 2, 2 → CETT 0 for t ≤ 2, 1 above. Mean with token A:
    #   1 < t ≤ 2: (0.1826 + 0)/2 = 0.0913;  2 < t ≤ 3: (0.4082 + 1)/2 = 0.704.
    token_b = torch.tensor([[2.0, 1.0, 4.0, 0.5]])
    acts = torch.cat([TOKEN_A, token_b])
    assert find_threshold(acts, W, 0.2, iters=50) == pytest.approx(2.0, abs=1e-6)
    assert find_threshold(acts, W, 0.05, iters=50) == pytest.approx(1.0, abs=1e-6)
    assert find_threshold(acts, W, 0.75, iters=50) == pytest.approx(3.0, abs=1e-6)  # (0.683 + 1)/2 = 0.84 above 3
    assert mean_cett(acts, W, 1.5) == pytest.approx(math.sqrt(1 / 30) / 2, abs=1e-6)


def test_active_by_threshold_matches_rule():
    norms = W.norm(dim=0)
    assert active_by_threshold(TOKEN_A, norms, 2.5).tolist() == [[False, False, True, True]]
    assert active_by_threshold(TOKEN_A, norms, 2.0).tolist() == [[False, True, True, True]]


@pytest.mark.parametrize("bad", [0, 0.0, 1, 1.0, -0.2, 1.5, float("nan")])
def test_bad_targets_raise(bad):
    with pytest.raises(BadInput, match="CETT target"):
        find_threshold(TOKEN_A, W, bad)


def test_empty_calibration_raises(tiny_llama):
    with pytest.raises(BadInput, match="no calibration tokens"):
        find_threshold(torch.zeros(0, 4), W, 0.2)
    with pytest.raises(BadInput, match="empty"):
        calibrate(tiny_llama, ["", "   "], 0.2)


TEXTS = ["The cat sat on the mat and looked at the birds.", "Prices rose sharply in March, said the bank.",
         "A quick brown fox jumps over the lazy dog near the river bank."]


def test_calibrate_tiny_brackets_the_target(tiny_llama):
    from tda.activations.capture import capture_batch

    cal = calibrate(tiny_llama, TEXTS, 0.2)
    assert cal.n_layers == 3 and cal.d_ff == 128 and len(cal.thresholds) == 3
    caps = capture_batch(tiny_llama, TEXTS)
    for L in range(3):
        acts = torch.cat([c.acts[L] for c in caps])
        w = tiny_llama.ffn.down_weight(L).float()
        t = cal.thresholds[L]
        step = float((acts.abs() * w.norm(dim=0)).max()) * 2.0 ** -23  # twice the bisection's resolution
        assert mean_cett(acts, w, t) <= 0.2 + 1e-6
        assert mean_cett(acts, w, t + step) > 0.2
        dens = float(active_by_threshold(acts, w.norm(dim=0), t).float().mean())
        assert cal.densities[L] == pytest.approx(dens)
        assert 0 < dens < 1


def test_calibration_file_and_model_check(tmp_path, tiny_llama, load_tiny, monkeypatch):
    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path / "cache"))
    cal = load_or_calibrate(tiny_llama, TEXTS, 0.3)
    path = cal.save(tmp_path / "t.json")
    back = Calibration.load(path)
    assert back == cal
    back.check_model(tiny_llama)
    with pytest.raises(BadInput, match="thresholds are for model 'tiny-llama'"):
        back.check_model(load_tiny("tiny-gemma3"))
    # cached: a second call does not recompute
    import tda.masks.calibrate as C

    monkeypatch.setattr(C, "calibrate", lambda *a, **k: pytest.fail("recomputed despite the cache"))
    assert load_or_calibrate(tiny_llama, TEXTS, 0.3) == cal
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(BadInput, match="not a valid threshold file"):
        Calibration.load(tmp_path / "bad.json")
