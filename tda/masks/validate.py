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


def channel_thresholds_problem(cal, grid: int) -> str | None:
    """Why a :class:`tda.masks.channel_thresholds.ChannelThresholds` (CHESS) cannot be right, or None."""
    bad = input_thresholds_problem(cal, grid)
    if bad or not isinstance(cal.scales, dict):
        return bad or "scales is not a mapping"
    for site, m in cal.scales.items():
        bad = integrity.finite_floats(m, f"scales[{site}]", low=0.0, high=1e30)
        if bad:
            return bad
    return None


def scap_problem(cal) -> str | None:
    """Why a :class:`tda.masks.scap_calibration.ScapCalibration` cannot be right, or None."""
    if not isinstance(cal.modes, dict) or not isinstance(cal.thresholds, dict) or not cal.modes:
        return "no modes or no thresholds"
    if set(cal.modes) != set(cal.thresholds):
        return "modes and thresholds name different sites"
    sites = sorted(cal.modes)
    return (integrity.finite_floats([cal.modes[s] for s in sites], "modes", low=-1e30, high=1e30)
            or integrity.finite_floats([cal.thresholds[s] for s in sites], "thresholds", low=0.0, high=1e30))


def rsparse_problem(cal) -> str | None:
    """Why a :class:`tda.masks.lowrank.RSparseCalibration` cannot be right, or None."""
    if not isinstance(cal.sites, dict) or not cal.sites:
        return "no sites"
    for name, split in cal.sites.items():
        if not isinstance(split, dict) or set(split) != {"alpha", "tau", "channels", "rank", "rel_error"}:
            return f"sites[{name}] is not a split"
        for key in ("channels", "rank"):
            v = split[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                return f"sites[{name}].{key} is {v!r}"
        bad = (integrity.finite_floats([split["alpha"]], f"sites[{name}].alpha", low=0.0, high=1.0)
               or integrity.finite_floats([split["tau"]], f"sites[{name}].tau", low=-1.0, high=1e30)
               or integrity.finite_floats([split["rel_error"]], f"sites[{name}].rel_error", low=0.0, high=1e30))
        if bad:
            return bad
    return None


def refuse(problem: str | None, path, what: str) -> None:
    """Raise the one-line BadInput naming ``path`` when ``problem`` is set."""
    if problem:
        raise BadInput(f"{what} {path} cannot be right: {problem}")


# the cache-file helpers live in tda.common.integrity (lower stages use them too)
cached_ok = integrity.cached_ok
drop = integrity.drop
record = integrity.record


def load_cached_json(path, cls, what: str, problem, model_id: str, *, sink=None):
    """The calibration ``cls(**json)`` cached at ``path``, or None when there is none. A file that
    differs from its recorded hash, does not parse, holds values that cannot be right
    (``problem(cal)``) or belongs to another model is removed with one line (the caller computes
    it again)."""
    import json

    if not path.exists() or not cached_ok(path, what, sink=sink):
        return None
    try:
        cal = cls(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as e:
        drop(path, what, f"not a valid file: {type(e).__name__}", sink=sink)
        return None
    bad = problem(cal) or (None if cal.model_id == model_id else f"it is for model {cal.model_id!r}")
    if bad:
        drop(path, what, f"it cannot be right: {bad}", sink=sink)
        return None
    return cal


def save_cached_json(path, cal, what: str, problem) -> None:
    """Write ``cal.to_json()`` to the cache file ``path`` and record its hash; values that cannot
    be right (``problem(cal)``) are refused in one line naming the file, and nothing is written."""
    from tda.common.atomic import write_text_atomic

    refuse(problem(cal), path, what)
    write_text_atomic(path, cal.to_json())
    record(path)
