"""Paired differences between variants scored on the same texts or items.

Every quality metric is a ratio of sums over units (texts, items, prompts), kept per unit in the
quality result (``per_text``, ``mc_per_item``, ``cloze_per_item``, ``gen_per_text``). This module
says where each metric's units live (:data:`METRICS`) and computes, for any two variants, the
paired difference with its paired bootstrap interval (:func:`tda.evaluate.bootstrap.paired_interval`:
one resample of the units for both arms). Column names: ``<metric>_delta`` (``_delta_pct`` for the
perplexities, whose difference is relative), ``_lo``/``_hi`` appended.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tda.evaluate.bootstrap import ITERS, SEED, paired_interval


@dataclass(frozen=True)
class Metric:
    """Where one metric's per-unit sums live in a quality result, and how to read them."""

    group: str  # the quality result's key: per_text, mc_per_item, cloze_per_item, gen_per_text
    num: str | None  # per-unit numerator field (None: the group's value is the list itself)
    den: str | None  # per-unit denominator field (None: one per unit)
    log: bool = False  # the statistic is exp(Σ num / Σ den) (perplexity) and its delta is in percent
    higher_better: bool = True
    label: str = ""

    def delta_key(self, name: str) -> str:
        return f"{name}_delta_pct" if self.log else f"{name}_delta"


METRICS: dict[str, Metric] = {
    "ppl": Metric("per_text", "nll", "tokens", log=True, higher_better=False, label="perplexity"),
    "agreement": Metric("per_text", "agree", "tokens", label="top-1 agreement with dense"),
    "mc_acc": Metric("mc_per_item", None, None, label="multiple-choice accuracy"),
    "cloze_acc": Metric("cloze_per_item", None, None, label="cloze (last-word) accuracy"),
    "gen_rougeL": Metric("gen_per_text", "rougeL", None, label="ROUGE-L of the continuation vs dense's"),
    "gen_prefix": Metric("gen_per_text", "prefix", "tokens", label="share of tokens before the first divergence"),
    "gen_rep": Metric("gen_per_text", "rep", "ngrams", higher_better=False, label="repeated 4-gram rate"),
    "gen_ppl": Metric("gen_per_text", "dnll", "dtok", log=True, higher_better=False,
                      label="perplexity of the continuation under dense"),
}


def delta_columns() -> tuple[str, ...]:
    """Every paired column: ``ppl_delta_pct, ppl_delta_pct_lo`` ... in :data:`METRICS` order."""
    out = []
    for name, m in METRICS.items():
        k = m.delta_key(name)
        out += [k, f"{k}_lo", f"{k}_hi"]
    return tuple(out)


def units(quality: dict, label: str, metric: str) -> tuple[list[float], list[float]] | None:
    """``(nums, dens)`` per unit of ``metric`` for the variant ``label``, or None when not scored."""
    m = METRICS[metric]
    g = (quality.get(m.group) or {}).get(label)
    if g is None:
        return None
    if m.num is None:
        vals = [float(x) for x in g]
        return (vals, [1.0] * len(vals)) if vals else None
    nums = g.get(m.num)
    if not nums or any(x is None or x < 0 for x in nums):  # agreement is -1 when no dense ran first
        return None
    dens = g.get(m.den) if m.den else [1.0] * len(nums)
    return [float(x) for x in nums], [float(x) for x in dens]


def compare(quality: dict, a: str, b: str, metric: str, *, iters: int = ITERS,
            seed: int = SEED) -> tuple[float, float, float] | None:
    """Paired ``(delta, lo, hi)`` of variant ``b`` from variant ``a`` on ``metric`` (percent for the
    perplexities), or None when either was not scored on the same units."""
    ua, ub = units(quality, a, metric), units(quality, b, metric)
    if ua is None or ub is None or len(ua[0]) != len(ub[0]):
        return None
    m = METRICS[metric]
    return paired_interval(*ua, *ub, transform=np.exp if m.log else None, relative=m.log, iters=iters, seed=seed)


def deltas_vs(quality: dict, base: str, label: str, *, iters: int = ITERS, seed: int = SEED) -> dict[str, float]:
    """Every paired column of ``label`` against ``base`` (normally dense) that both were scored on."""
    out: dict[str, float] = {}
    for name, m in METRICS.items():
        c = compare(quality, base, label, name, iters=iters, seed=seed)
        if c is not None:
            k = m.delta_key(name)
            out[k], out[f"{k}_lo"], out[f"{k}_hi"] = c
    return out


def better_sign(metric: str) -> int:
    """+1 when a larger value of ``metric`` is better, −1 when a smaller one is."""
    return 1 if METRICS[metric].higher_better else -1
