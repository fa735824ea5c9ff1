"""Paired timing: every variant measured right beside dense, speedups with an interval over rounds.

One round is a sequence in which dense is measured first, after every ``group`` variants and last
(``d v1 v2 d v3 v4 d …``; the variants' order rotates each round), so each variant has a dense
measurement at most one position away on each side. A variant's speedup in a round is the mean
of its two dense neighbours divided by its own time (:func:`neighbour_ratios`): a slow spell of a
shared machine hits both. Over rounds: the median, and a 95% t-interval on the log ratios
(:func:`speedup_interval`). With ``group=2`` a round costs ~1.5× a plain pass over the variants.

:func:`paired_rounds` runs the rounds with any ``measure(label) -> timings`` (injectable: the
tests use fake timings), stops early once every interval's relative half-width is at most
``target_ci`` (from ``min_rounds`` on, at most ``max_rounds``), and re-measures a variant whose
whole interval lies above its bytes ceiling (noise: the ceiling is the most its bytes allow), at
most ``max_retries`` times, replacing its rounds with fresh ones.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

BASE = "dense"
GROUP = 2
MIN_ROUNDS = 3
MAX_RETRIES = 2


def round_schedule(labels: list[str], r: int, *, group: int = GROUP, base: str = BASE) -> list[str]:
    """Round ``r``'s measurement order: the non-base labels rotated by ``r``, with ``base`` first,
    after every ``group`` of them and last."""
    if group < 1:
        raise ValueError("group must be >= 1")
    others = [x for x in labels if x != base]
    k = r % len(others) if others else 0
    order = others[k:] + others[:k]
    seq = [base]
    for i in range(0, len(order), group):
        seq += order[i:i + group] + [base]
    return seq


def neighbour_ratios(seq: list[tuple[str, float]], *, base: str = BASE) -> dict[str, float]:
    """``{label: mean(nearest base time before, nearest after) / label's time}`` for one round
    (a label measured twice in a round keeps its last ratio; a missing side uses the other)."""
    out = {}
    for i, (label, t) in enumerate(seq):
        if label == base:
            continue
        before = next((x for lab, x in reversed(seq[:i]) if lab == base), None)
        after = next((x for lab, x in seq[i + 1:] if lab == base), None)
        near = [x for x in (before, after) if x is not None]
        if near and t > 0:
            out[label] = sum(near) / len(near) / t
    return out


def _t975(df: int) -> float:
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:  # pragma: no cover - scipy is a dependency of the lm-eval stack
        return 1.96 + 2.5 / df


def speedup_interval(ratios: list[float]) -> tuple[float, float, float]:
    """``(median, lo, hi)`` over rounds: lo/hi from a 95% t-interval on the log ratios (widened to
    contain the median); one round: lo = hi = median; none: NaNs."""
    xs = [x for x in ratios if x == x and x > 0]
    if not xs:
        nan = float("nan")
        return nan, nan, nan
    med = statistics.median(xs)
    if len(xs) < 2:
        return med, med, med
    logs = [math.log(x) for x in xs]
    mean, sd = statistics.fmean(logs), statistics.stdev(logs)
    half = _t975(len(xs) - 1) * sd / math.sqrt(len(xs))
    return med, min(med, math.exp(mean - half)), max(med, math.exp(mean + half))


def relative_half_width(lo: float, hi: float, point: float) -> float:
    return (hi - lo) / (2 * point) if point and point == point else float("inf")


def paired_rounds(measure: Callable[[str], dict], labels: list[str], *, rounds: int, key: str = "decode_ms_per_token",
                  max_rounds: int | None = None, target_ci: float | None = None, min_rounds: int = MIN_ROUNDS,
                  group: int = GROUP, ceiling_of: Callable[[str], float | None] | None = None,
                  max_retries: int = MAX_RETRIES, warmup: bool = True, base: str = BASE,
                  on_round: Callable[[int], None] | None = None) -> dict:
    """Run paired rounds; ``measure(label)`` returns a timings dict with ``key`` (ms, lower is faster).

    Without ``target_ci``: exactly ``rounds`` rounds. With it: rounds stop once every variant's
    relative half-width is <= ``target_ci`` (checked from ``min(min_rounds, limit)`` rounds on), at
    most ``max_rounds`` (default ``rounds``). Returns ``{"timings": {label: [timings of the counted
    measurements]}, "ratios": {label: {key: [per round]}}, "rounds_run", "stopped_early",
    "remeasured": {label: n}, "above_ceiling": [labels still above after the retries]}``.
    """
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    limit = max(rounds, max_rounds or rounds) if target_ci else rounds
    others = [x for x in labels if x != base]
    timings: dict[str, list[dict]] = {x: [] for x in [base, *others]}
    ratios: dict[str, dict[str, list[float]]] = {x: {} for x in others}
    keys = (key, "total_s")

    def run_seq(seq: list[str], count: bool) -> dict[str, dict[str, float]]:
        done = [(lab, measure(lab)) for lab in seq]
        if not count:
            return {}
        for lab, t in done:
            timings[lab].append(t)
        return {k: neighbour_ratios([(lab, t[k]) for lab, t in done if k in t], base=base) for k in keys}

    def add(rs: dict[str, dict[str, float]]):
        for k, per in rs.items():
            for lab, x in per.items():
                ratios[lab].setdefault(k, []).append(x)

    if warmup:
        run_seq([base, *others], count=False)
    n_done, stopped = 0, False
    while n_done < limit:
        add(run_seq(round_schedule(labels, n_done, group=group, base=base), count=True))
        n_done += 1
        if on_round:
            on_round(n_done)
        if target_ci and n_done >= min(min_rounds, limit) and n_done < limit and all(
                relative_half_width(*speedup_interval(ratios[x].get(key, []))[1:], speedup_interval(
                    ratios[x].get(key, []))[0]) <= target_ci for x in others):
            stopped = True
            break
    remeasured: dict[str, int] = {}
    above: list[str] = []
    for lab in others:
        for attempt in range(max_retries + 1):
            c = ceiling_of(lab) if ceiling_of else None
            _, lo, _ = speedup_interval(ratios[lab].get(key, []))
            if c is None or not lo > c:
                break
            if attempt == max_retries:
                above.append(lab)
                break
            n = len(ratios[lab].get(key, []))  # replace its rounds with as many fresh ones beside dense
            ratios[lab] = {}
            timings[lab] = []
            for _ in range(n):
                add(run_seq([base, lab, base], count=True))
            remeasured[lab] = attempt + 1
    return {"timings": timings, "ratios": ratios, "rounds_run": n_done, "stopped_early": stopped,
            "remeasured": remeasured, "above_ceiling": above}
