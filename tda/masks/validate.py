"""Values that cannot be right, refused at write time and at read time with a line naming the file.

A threshold file (CETT calibration) or an input-threshold file (quantiles) that is short, holds
strings, NaN/inf or absurd magnitudes used to fail deep inside a run (IndexError, TypeError) or
give density 0 without a word. These checks run when such a file is saved and when it is read;
cached copies also carry a content hash (:mod:`tda.common.integrity`), so same-size damage that
still parses is caught too.
"""

from __future__ import annotations

from tda.common import integrity
from tda.common.errors import BadInput

MAX_THRESHOLD = 1e6  # |a| of an FFN neuron far beyond any real model's; 1e30 cannot be a threshold


def calibration_problem(cal) -> str | None:
    """Why a :class:`tda.masks.calibrate.Calibration` cannot be right, or None."""
    for name in ("n_layers", "d_ff", "n_tokens"):
        v = getattr(cal, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "n_tokens" else 1):
            return f"{name} is {v!r}"
    if isinstance(cal.target, bool) or not isinstance(cal.target, int | float) or not 0 < cal.target < 1:
        return f"target is {cal.target!r}, not in (0, 1)"
    return (integrity.finite_floats(cal.thresholds, "thresholds", length=cal.n_layers,
                                    low=-MAX_THRESHOLD, high=MAX_THRESHOLD)
            or integrity.finite_floats(cal.densities, "densities", length=cal.n_layers, low=0.0, high=1.0))


def input_thresholds_problem(cal, grid: int) -> str | None:
    """Why an :class:`tda.masks.input_thresholds.InputThresholds` cannot be right, or None."""
    if not isinstance(cal.model_id, str) or not isinstance(cal.quantiles, dict) or not cal.quantiles:
        return "no model id or no quantiles"
    for site, q in cal.quantiles.items():
        bad = integrity.finite_floats(q, f"quantiles[{site}]", length=grid + 1, low=0.0, high=1e30)
        if bad:
            return bad
        if any(b < a for a, b in zip(q, q[1:])):
            return f"quantiles[{site}] are not increasing"
    return None


def refuse(problem: str | None, path, what: str) -> None:
    """Raise the one-line BadInput naming ``path`` when ``problem`` is set."""
    if problem:
        raise BadInput(f"{what} {path} cannot be right: {problem}")


# the cache-file helpers live in tda.common.integrity (lower stages use them too)
cached_ok = integrity.cached_ok
drop = integrity.drop
record = integrity.record
