"""Paired timing logic with injected timings (no real clock): schedule, neighbour ratios, intervals,
early stop at a target interval width, and re-measuring a speedup above its bytes ceiling."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from tda.evaluate.paired_timing import (
    neighbour_ratios,
    paired_rounds,
    relative_half_width,
    round_schedule,
    speedup_interval,
)


def test_schedule_puts_dense_beside_every_variant():
    seq = round_schedule(["dense", "a", "b", "c"], 0)
    assert seq == ["dense", "a", "b", "dense", "c", "dense"]
    assert round_schedule(["dense", "a", "b", "c"], 1) == ["dense", "b", "c", "dense", "a", "dense"]
    assert round_schedule(["dense", "teal"], 5) == ["dense", "teal", "dense"]
    for r in range(4):  # ~1.5x the measurements of a plain pass over 4 variants
        assert len(round_schedule(["dense", "a", "b", "c", "d"], r)) == 4 + 3


def test_neighbour_ratios_follow_a_slow_spell():
    """Dense slows from 10 to 20 ms in the middle of a round; the variant beside it runs at half of
    its neighbours: its ratio is 2 whatever the drift."""
    seq = [("dense", 10.0), ("a", 5.0), ("dense", 10.0), ("b", 10.0), ("dense", 20.0)]
    r = neighbour_ratios(seq)
    assert r == {"a": pytest.approx(2.0), "b": pytest.approx(1.5)}


def test_speedup_interval():
    assert speedup_interval([]) != speedup_interval([])  # NaNs
    assert speedup_interval([1.5]) == (1.5, 1.5, 1.5)
    m, lo, hi = speedup_interval([1.5, 1.5, 1.5, 1.5])
    assert m == lo == hi == pytest.approx(1.5)
    m, lo, hi = speedup_interval([1.4, 1.5, 1.6, 1.45, 1.55])
    assert m == 1.5 and lo < 1.5 < hi and relative_half_width(lo, hi, m) < 0.1
    m2, lo2, hi2 = speedup_interval([1.4, 1.5, 1.6, 1.45, 1.55] * 4)
    assert hi2 - lo2 < hi - lo  # more rounds, tighter


def _fake(times: dict):
    """measure(label) returning the next of ``times[label]`` (an iterator or a constant)."""
    its = {k: (iter(v) if isinstance(v, list) else itertools.repeat(v)) for k, v in times.items()}
    calls = []

    def measure(label):
        calls.append(label)
        t = next(its[label])
        return {"decode_ms_per_token": t, "total_s": t / 10}

    return measure, calls


def test_paired_rounds_fixed_count_and_drift():
    # dense drifts 10 → 30 ms over the run; the variant is always 2x faster than its dense neighbours
    drift = [10.0 + i for i in range(40)]
    dense_iter = iter(drift)
    last = {"t": 10.0}

    def measure(label):
        if label == "dense":
            last["t"] = next(dense_iter)
            return {"decode_ms_per_token": last["t"], "total_s": 1.0}
        return {"decode_ms_per_token": (last["t"] + 0.5) / 2, "total_s": 1.0}

    res = paired_rounds(measure, ["dense", "v"], rounds=4)
    assert res["rounds_run"] == 4 and not res["stopped_early"] and res["remeasured"] == {}
    assert res["ratios"]["v"]["decode_ms_per_token"] == pytest.approx([2.0] * 4)
    assert len(res["timings"]["dense"]) == 8 and len(res["timings"]["v"]) == 4  # warm-up not counted


def test_paired_rounds_stop_early_at_target():
    measure, calls = _fake({"dense": 10.0, "a": 5.0, "b": [8.0, 8.2, 7.9, 8.1] * 10})
    res = paired_rounds(measure, ["dense", "a", "b"], rounds=3, max_rounds=12, target_ci=0.05)
    assert res["stopped_early"] and res["rounds_run"] == 3
    measure, _ = _fake({"dense": 10.0, "a": [5.0, 9.0, 4.0, 8.0] * 10})  # noisy: never tight
    res = paired_rounds(measure, ["dense", "a"], rounds=3, max_rounds=6, target_ci=0.01)
    assert not res["stopped_early"] and res["rounds_run"] == 6
    measure, _ = _fake({"dense": 10.0, "a": 5.0})
    assert paired_rounds(measure, ["dense", "a"], rounds=3)["rounds_run"] == 3  # no target: exactly rounds


def test_above_ceiling_is_remeasured_boundedly():
    # the first 3 rounds make 'a' look 2x (dense slow); fresh measurements give the true 1.1x
    measure, _ = _fake({"dense": [20.0] * 7 + [11.0] * 100, "a": [10.0] * 4 + [10.0] * 100})
    res = paired_rounds(measure, ["dense", "a"], rounds=3, ceiling_of=lambda lab: 1.3)
    assert res["remeasured"] == {"a": 1} and res["above_ceiling"] == []
    assert res["ratios"]["a"]["decode_ms_per_token"] == pytest.approx([1.1] * 3)
    # a variant that stays above its ceiling: at most max_retries re-measures, then flagged
    measure, calls = _fake({"dense": 20.0, "a": 10.0})
    res = paired_rounds(measure, ["dense", "a"], rounds=3, ceiling_of=lambda lab: 1.3, max_retries=2)
    assert res["remeasured"] == {"a": 2} and res["above_ceiling"] == ["a"]
    assert calls.count("a") == 1 + 3 + 2 * 3  # warm-up, rounds, two re-measures of 3 rounds each
    # inside its interval: kept
    measure, _ = _fake({"dense": 10.0, "a": [8.0, 6.0, 7.0] * 5})
    assert paired_rounds(measure, ["dense", "a"], rounds=3, ceiling_of=lambda lab: 1.3)["remeasured"] == {}


def test_run_bench_with_injected_measure(tiny_llama):
    """run_bench end to end on injected timings: speedup, interval, rounds and re-measure in the JSON."""
    from tda.evaluate.bench import run_bench

    def fake(v):
        ms = {"dense": 10.0}.get(v.method, 8.0)
        return SimpleNamespace(density=v.density or 1.0, params={}, timings={
            "decode_ms_per_token": ms, "total_s": ms / 100, "prefill_s": 0.01, "mask_s": 0.0, "prompt_tokens": 8})

    res = run_bench(tiny_llama, methods=("dense", "griffin"), densities=[0.5], rounds=3, new_tokens=4,
                    bandwidth_mb=None, measure=fake)
    g = res["results"]["griffin"]
    assert g["decode_speedup_vs_dense"] == pytest.approx(1.25)
    assert g["speedup_lo"] == pytest.approx(1.25) and g["speedup_hi"] == pytest.approx(1.25)
    assert res["rounds_run"] == 3 and g["decode_speedup_rounds"] == pytest.approx([1.25] * 3)
    assert "remeasured" not in g and res["results"]["dense"]["speedup_lo"] == 1.0
