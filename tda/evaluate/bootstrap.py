"""95% percentile bootstrap intervals over texts (perplexity, agreement) or items (accuracy).

Every statistic here is a ratio of sums over units (texts or items), so one resample draws ``n``
units with replacement and recomputes the ratio: perplexity ``exp(Σ nll / Σ tokens)`` (token
weighted, as the point estimate), agreement ``Σ agree / Σ tokens``, accuracy ``Σ correct / n``.
The interval is the 2.5th and 97.5th percentile of ``iters`` resamples (default 1000), drawn from
``numpy.random.default_rng(seed)``: the same inputs and seed give the same interval. With fewer
than two units the interval collapses onto the point estimate (there is nothing to resample).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ITERS = 1000
SEED = 0
LEVEL = 0.95


def ratio_interval(nums: Sequence[float], dens: Sequence[float], *, transform=None, iters: int = ITERS,
                   seed: int = SEED, level: float = LEVEL) -> tuple[float, float, float]:
    """``(point, lo, hi)`` of ``transform(Σ nums / Σ dens)`` under resampling of the units."""
    f = transform or (lambda x: x)
    num, den = np.asarray(nums, dtype=np.float64), np.asarray(dens, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError("nums and dens must be 1-D and of the same length")
    n = len(num)
    if n == 0 or den.sum() <= 0:
        nan = float("nan")
        return nan, nan, nan
    point = float(f(num.sum() / den.sum()))
    if n < 2 or iters < 1:
        return point, point, point
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(int(iters), n))
    d = den[idx].sum(axis=1)
    ok = d > 0
    stats = f(num[idx].sum(axis=1)[ok] / d[ok])
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return point, float(lo), float(hi)


def perplexity_interval(nll_sums: Sequence[float], token_counts: Sequence[float], **kw) -> tuple[float, float, float]:
    """Token-weighted perplexity ``exp(Σ nll / Σ tokens)`` with the interval over texts."""
    return ratio_interval(nll_sums, token_counts, transform=np.exp, **kw)


def mean_interval(values: Sequence[float], **kw) -> tuple[float, float, float]:
    """Mean of per-item values (e.g. 0/1 correctness) with the interval over items."""
    return ratio_interval(values, [1.0] * len(values), **kw)


def paired_interval(nums_a: Sequence[float], dens_a: Sequence[float], nums_b: Sequence[float],
                    dens_b: Sequence[float], *, transform=None, relative: bool = False, iters: int = ITERS,
                    seed: int = SEED, level: float = LEVEL) -> tuple[float, float, float]:
    """``(point, lo, hi)`` of the paired difference of arm ``b`` from arm ``a`` scored on the same units.

    Each arm's statistic is ``transform(Σ nums / Σ dens)`` (as :func:`ratio_interval`); the
    difference is ``b − a`` or, with ``relative``, ``100 · (b / a − 1)`` (percent). One resample
    draws unit indices with replacement and uses the same indices for both arms, so what the
    units share (a hard text is hard for every method) cancels out of the interval.
    """
    f = transform or (lambda x: x)
    arrs = [np.asarray(x, dtype=np.float64) for x in (nums_a, dens_a, nums_b, dens_b)]
    if any(a.ndim != 1 or a.shape != arrs[0].shape for a in arrs):
        raise ValueError("paired arms must be 1-D and of the same length")
    na, da, nb, db = arrs
    n = len(na)

    def diff(sa, sb):
        return 100.0 * (sb / sa - 1.0) if relative else sb - sa

    if n == 0 or da.sum() <= 0 or db.sum() <= 0:
        nan = float("nan")
        return nan, nan, nan
    point = float(diff(f(na.sum() / da.sum()), f(nb.sum() / db.sum())))
    if n < 2 or iters < 1:
        return point, point, point
    idx = np.random.default_rng(seed).integers(0, n, size=(int(iters), n))
    sda, sdb = da[idx].sum(axis=1), db[idx].sum(axis=1)
    ok = (sda > 0) & (sdb > 0)
    stats = diff(f(na[idx].sum(axis=1)[ok] / sda[ok]), f(nb[idx].sum(axis=1)[ok] / sdb[ok]))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return point, float(lo), float(hi)
