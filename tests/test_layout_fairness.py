"""The rule of benchmarks/layout_fairness.py: a method timed in one process with others is flagged
only when its speedup differs from its speedup alone by more than the tolerance *and* the two 95%
intervals do not overlap; a difference inside the noise is said to be so."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fairness():
    spec = importlib.util.spec_from_file_location("layout_fairness", ROOT / "benchmarks" / "layout_fairness.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _s(x, lo, hi):
    return {"decode_speedup_vs_dense": x, "speedup_lo": lo, "speedup_hi": hi}


def test_within_tolerance_is_within_whatever_the_intervals(fairness):
    assert fairness.verdict(_s(1.00, 0.99, 1.01), _s(1.04, 1.03, 1.05)) == "within"
    assert fairness.verdict(_s(1.00, 0.50, 2.00), _s(0.96, 0.40, 2.10)) == "within"


def test_outside_tolerance_with_separated_intervals_differs(fairness):
    assert fairness.verdict(_s(1.20, 1.18, 1.22), _s(1.05, 1.03, 1.07)) == "differs"
    assert fairness.verdict(_s(0.90, 0.88, 0.92), _s(1.00, 0.99, 1.01)) == "differs"


def test_outside_tolerance_with_overlapping_intervals_is_noise(fairness):
    assert fairness.verdict(_s(0.834, 0.64, 1.08), _s(0.889, 0.73, 1.13)) == "noise"


def test_missing_intervals_count_as_a_difference(fairness):
    assert fairness.verdict(_s(1.20, None, None), _s(1.00, 0.9, 1.1)) == "differs"
