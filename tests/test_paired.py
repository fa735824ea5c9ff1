"""Paired bootstrap, paired deltas, Pareto flags and verdicts on hand-made numbers with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tda.evaluate.bootstrap import paired_interval, ratio_interval
from tda.evaluate.paired import compare, deltas_vs
from tda.evaluate.verdicts import pareto_flags, verdicts, verdicts_markdown


def test_paired_difference_constant_shift_is_exact():
    """b = a + 1 on every unit: every resample's difference is exactly 1, although the separate
    intervals of a and b overlap widely."""
    a = [1.0, 5.0, 2.0, 9.0, 4.0, 7.0]
    b = [x + 1 for x in a]
    ones = [1.0] * len(a)
    d, lo, hi = paired_interval(a, ones, b, ones, iters=500, seed=3)
    assert d == pytest.approx(1.0) and lo == pytest.approx(1.0) and hi == pytest.approx(1.0)
    _, alo, ahi = ratio_interval(a, ones, iters=500)
    _, blo, bhi = ratio_interval(b, ones, iters=500)
    assert blo < ahi  # unpaired: not separated


def test_paired_relative_perplexity_known_ratio():
    """nll_b = nll_a + log(1.1) per token: perplexity ratio exactly 1.1 in every resample → +10%."""
    nll_a, tok = [30.0, 55.0, 12.0, 80.0], [10.0, 20.0, 5.0, 25.0]
    nll_b = [n + math.log(1.1) * t for n, t in zip(nll_a, tok)]
    d, lo, hi = paired_interval(nll_a, tok, nll_b, tok, transform=np.exp, relative=True, iters=300)
    assert (d, lo, hi) == pytest.approx((10.0, 10.0, 10.0))


def test_paired_interval_contains_point_and_collapses():
    a, b = [0, 1, 1, 0, 1, 0, 1, 1], [1, 1, 1, 0, 1, 1, 1, 1]
    ones = [1.0] * 8
    d, lo, hi = paired_interval(a, ones, b, ones, iters=1000)
    assert d == pytest.approx(0.25) and lo <= d <= hi and lo >= 0.0  # b never worse on any unit
    assert paired_interval([1.0], [1.0], [3.0], [1.0]) == (2.0, 2.0, 2.0)  # one unit: nothing to resample
    with pytest.raises(ValueError):
        paired_interval([1, 2], [1, 1], [1], [1])


def _quality():
    tok = [10.0, 10.0, 10.0, 10.0, 10.0]
    base = [20.0, 25.0, 22.0, 30.0, 21.0]
    return {"per_text": {
        "dense": {"nll": base, "tokens": tok, "agree": tok},
        "a@0.5": {"nll": [n + 1.0 for n in base], "tokens": tok, "agree": [9, 8, 9, 9, 8]},  # slightly worse
        "b@0.5": {"nll": [n + 5.0 for n in base], "tokens": tok, "agree": [5, 6, 5, 6, 5]},  # much worse
    }, "mc_per_item": {"dense": [1, 0, 1, 1], "a@0.5": [1, 0, 1, 1], "b@0.5": [0, 0, 1, 1]}}


def _row(method, dens, sp, lo, hi):
    return {"method": method, "density_target": dens, "decode_speedup": sp, "speedup_lo": lo, "speedup_hi": hi}


def test_deltas_vs_dense():
    q = _quality()
    d = deltas_vs(q, "dense", "a@0.5", iters=200)
    assert d["ppl_delta_pct"] == pytest.approx(100 * (math.exp(0.1) - 1))
    assert d["ppl_delta_pct_lo"] == pytest.approx(d["ppl_delta_pct"])  # the same shift on every text
    assert d["agreement_delta"] == pytest.approx(43 / 50 - 1) and d["agreement_delta_hi"] < 0
    assert d["mc_acc_delta"] == 0.0 and "cloze_acc_delta" not in d
    assert compare(q, "a@0.5", "b@0.5", "ppl")[1] > 0  # b separated-worse than a


def test_pareto_and_verdicts():
    q = _quality()
    rows = [_row("dense", None, 1.0, 1.0, 1.0), _row("a", 0.5, 1.2, 1.1, 1.3), _row("b", 0.5, 1.15, 1.05, 1.25)]
    # b: slower (not separated) and separated-worse in perplexity than a: off the set
    assert pareto_flags(rows, q, iters=200) == [True, True, False]
    v = verdicts(rows, q, iters=200)
    assert len(v) == 1 and v[0]["verdict"] == "a beats b" and v[0]["delta"] > 0
    # b much faster (separated): a trade-off
    rows[2] = _row("b", 0.5, 2.0, 1.9, 2.1)
    assert pareto_flags(rows, q, iters=200) == [True, True, True]
    assert verdicts(rows, q, iters=200)[0]["verdict"] == "trade-off: a better quality, b faster"
    # the same quality, speeds overlapping: not separated
    q["per_text"]["b@0.5"] = dict(q["per_text"]["a@0.5"])
    rows[2] = _row("b", 0.5, 1.25, 1.0, 1.4)
    v = verdicts(rows, q, iters=200)
    assert v[0]["verdict"] == "not separated at this sample size"
    assert "| 0.5 | a | b | not separated" in verdicts_markdown(v)
