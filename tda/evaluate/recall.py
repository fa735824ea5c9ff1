"""Do prompt (prefill) masks predict decode-time activations? Metrics, sweeps and the study.

A sequence-wise mask ``mask[layer, neuron]`` is built from the *prefill* activations of a prompt
(:mod:`tda.masks.build`) and compared with the activations of the tokens generated after it,
``decode_acts[layer, step, neuron]`` (:mod:`tda.activations.decode`). Ground truth per decode token:

- ``tt``: its TT active set, ``|a_i|·‖W_down[:, i]‖ ≥ t_L`` with the CETT-calibrated ``t_L``;
- ``top``: the ``top_p`` fraction of neurons with the largest output norm ``|a_i|·‖W_down[:, i]‖``.

Per layer, pooled over the decode steps ``s`` (``m`` = mask, ``A`` = active, ``w`` = output norm):

- recall = ``Σ_s |m ∧ A_s| / Σ_s |A_s|`` (fraction of decode-active neurons inside the mask);
- mass recall = ``Σ_s Σ_{i∈m} w_si / Σ_s Σ_i w_si`` (fraction of all output-norm mass covered;
  independent of the ground truth);
- precision = ``Σ_s |m ∧ A_s| / (|m| · steps)``; density = ``|m| / d_ff``.

Methods: ``tda`` (swept over a threshold scale: kept when the prompt's RMS output norm is
``≥ scale·t_L``), ``tda_matched``, ``griffin``, ``static``, ``random`` (swept over a target density),
and ``oracle``: the top-k neurons by the *decode* tokens' own mean output norm — the best any fixed
mask of that density could do on mass recall (an upper reference, not a method).

Everything here except :func:`study_prompt`/:func:`recall_study` is pure tensor/list maths.
Rows are plain dicts (``pandas.DataFrame(rows)`` works).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from tda.common.errors import BadInput
from tda.masks.build import (
    check_density,
    griffin_mask,
    random_mask,
    static_mask,
    tda_mask,
    tda_matched_mask,
    topk_mask,
    tt_masks,
)

TRUTHS = ("tt", "top")
RECALL_METHODS = ("tda", "tda_matched", "griffin", "static", "random", "oracle")
DEFAULT_DENSITIES = tuple(round(0.1 * i, 10) for i in range(1, 10))
DEFAULT_SCALES = tuple(round(2 ** (k / 2), 4) for k in range(-4, 5))  # 0.25 … 4, includes 1
DEFAULT_TOP_P = 0.2
METRICS = ("recall", "mass_recall", "precision", "density")


# ----- arguments ---------------------------------------------------------------------------------
def parse_values(spec: str | Sequence[float], *, what: str = "densities") -> list[float]:
    """``"0.1:0.9:0.1"`` (start:stop:step, stop included) or ``"0.25,0.5"`` → sorted floats."""
    if not isinstance(spec, str):
        vals = [float(v) for v in spec]
    else:
        s = spec.replace(" ", "")
        try:
            if ":" in s:
                parts = [float(p) for p in s.split(":")]
                if len(parts) != 3 or parts[2] <= 0 or parts[1] < parts[0]:
                    raise ValueError
                n = int(math.floor((parts[1] - parts[0]) / parts[2] + 1e-9)) + 1
                vals = [round(parts[0] + i * parts[2], 10) for i in range(n)]
            else:
                vals = [float(p) for p in s.split(",") if p]
        except ValueError:
            raise BadInput(f"{what} must be start:stop:step or a comma-separated list, got '{spec}'") from None
    if not vals:
        raise BadInput(f"no {what} given")
    return sorted(set(vals))


def parse_densities(spec: str | Sequence[float]) -> list[float]:
    return [check_density(d) for d in parse_values(spec, what="densities")]


def parse_scales(spec: str | Sequence[float]) -> list[float]:
    vals = parse_values(spec, what="threshold scales")
    for v in vals:
        if not v > 0 or not math.isfinite(v):
            raise BadInput(f"threshold scales must be positive, got {v}")
    return vals


def check_methods(methods: Iterable[str] | str) -> list[str]:
    if isinstance(methods, str):
        methods = [m for m in methods.replace(" ", "").split(",") if m]
    methods = list(methods)
    bad = [m for m in methods if m not in RECALL_METHODS]
    if bad or not methods:
        raise BadInput(f"unknown method(s) {', '.join(bad) or '(none)'}; use {', '.join(RECALL_METHODS)}")
    return methods


def check_top_p(top_p: float) -> float:
    if not isinstance(top_p, (int, float)) or not 0.0 < float(top_p) <= 1.0:
        raise BadInput(f"top-p must be in (0, 1], got {top_p}")
    return float(top_p)


# ----- ground truth ------------------------------------------------------------------------------
def output_mass(decode_acts: torch.Tensor, down_norms: torch.Tensor) -> torch.Tensor:
    """``w[layer, step, neuron] = |a|·‖W_down[:, neuron]‖`` for ``down_norms[layer, neuron]``."""
    return decode_acts.float().abs() * down_norms.float()[:, None, :]


def tt_active(decode_acts: torch.Tensor, down_norms: torch.Tensor, thresholds) -> torch.Tensor:
    """``active[layer, step, neuron]``: TT's CETT rule per decode token (via :func:`tda.masks.build.tt_masks`)."""
    return tt_masks(decode_acts, down_norms, thresholds).keep


def top_active(decode_acts: torch.Tensor, down_norms: torch.Tensor, top_p: float) -> torch.Tensor:
    """``active[layer, step, neuron]``: per token, the ``top_p`` fraction largest output norms."""
    top_p = check_top_p(top_p)
    w = output_mass(decode_acts, down_norms)
    k = max(1, min(w.shape[-1], round(top_p * w.shape[-1])))
    idx = w.topk(k, dim=-1).indices
    return torch.zeros_like(w, dtype=torch.bool).scatter_(-1, idx, True)


# ----- metrics -----------------------------------------------------------------------------------
def mask_metrics(mask: torch.Tensor, active: torch.Tensor, mass: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-layer recall, mass recall, precision and density of ``mask[layer, neuron]``.

    ``active[layer, step, neuron]`` (bool ground truth), ``mass[layer, step, neuron]`` (output
    norms). Pooled over steps; a ratio with a zero denominator is NaN.
    """
    if mask.dim() != 2 or active.dim() != 3 or mask.shape != (active.shape[0], active.shape[2]):
        raise BadInput("need mask[layer, neuron] and active[layer, step, neuron] of matching shapes")
    if mass.shape != active.shape:
        raise BadInput("mass must have the shape of active: [layer, step, neuron]")
    m = mask.bool()[:, None, :]
    act = active.bool()
    steps = active.shape[1]
    hits = (act & m).sum(dim=(1, 2)).double()
    n_active = act.sum(dim=(1, 2)).double()
    mass = mass.double()
    covered = (mass * m).sum(dim=(1, 2))
    total = mass.sum(dim=(1, 2))
    kept = mask.bool().sum(dim=1).double()
    nan = torch.tensor(float("nan"), dtype=torch.float64)

    def ratio(a, b):
        return torch.where(b > 0, a / b.clamp_min(1e-300), nan)

    return {
        "recall": ratio(hits, n_active),
        "mass_recall": ratio(covered, total),
        "precision": ratio(hits, kept * steps),
        "density": kept / mask.shape[1],
    }


def oracle_mask(decode_acts: torch.Tensor, down_norms: torch.Tensor, density: float) -> torch.Tensor:
    """``keep[layer, neuron]``: top-k by the decode tokens' own mean output norm (upper reference)."""
    return topk_mask(output_mass(decode_acts, down_norms).mean(dim=1), density)


def sweep_masks(prefill_acts: torch.Tensor, decode_acts: torch.Tensor, *, down_norms: torch.Tensor,
                thresholds, static_scores: torch.Tensor | None = None,
                densities: Sequence[float] = DEFAULT_DENSITIES, scales: Sequence[float] = DEFAULT_SCALES,
                methods: Sequence[str] = RECALL_METHODS, seed: int = 0):
    """Yield ``(method, param, value, mask[layer, neuron])`` for every method and sweep point.

    ``tda`` is swept over ``scales`` (param ``scale``); the others over ``densities``.
    """
    methods = check_methods(methods)
    densities = [check_density(d) for d in densities]
    n_layers, d_ff = prefill_acts.shape[0], prefill_acts.shape[2]
    for method in methods:
        if method == "tda":
            for s in scales:
                yield method, "scale", float(s), tda_mask(prefill_acts, down_norms, thresholds, scale=s).keep
            continue
        if method == "static" and static_scores is None:
            raise BadInput("method 'static' needs the weight scores")
        for d in densities:
            if method == "tda_matched":
                keep = tda_matched_mask(prefill_acts, down_norms, thresholds, d).keep
            elif method == "griffin":
                keep = griffin_mask(prefill_acts, d).keep
            elif method == "static":
                keep = static_mask(static_scores, d).keep
            elif method == "random":
                keep = random_mask(n_layers, d_ff, d, seed).keep
            else:
                keep = oracle_mask(decode_acts, down_norms, d)
            yield method, "density", float(d), keep


def recall_rows(prefill_acts: torch.Tensor, decode_acts: torch.Tensor, *, down_norms: torch.Tensor,
                thresholds, static_scores: torch.Tensor | None = None,
                densities: Sequence[float] = DEFAULT_DENSITIES, scales: Sequence[float] = DEFAULT_SCALES,
                methods: Sequence[str] = RECALL_METHODS, top_p: float = DEFAULT_TOP_P, seed: int = 0,
                extra: dict | None = None) -> list[dict]:
    """One row per truth × method × sweep point × layer for one prompt.

    ``prefill_acts[layer, token, neuron]``, ``decode_acts[layer, step, neuron]``,
    ``down_norms[layer, neuron]``, ``thresholds[layer]``. ``extra`` is copied into every row.
    """
    if prefill_acts.dim() != 3 or decode_acts.dim() != 3:
        raise BadInput("need prefill_acts[layer, token, neuron] and decode_acts[layer, step, neuron]")
    if decode_acts.shape[1] < 1:
        raise BadInput("no decode steps to compare with")
    truths = {"tt": tt_active(decode_acts, down_norms, thresholds), "top": top_active(decode_acts, down_norms, top_p)}
    mass = output_mass(decode_acts, down_norms)
    truth_density = {k: v.float().mean(dim=(1, 2)) for k, v in truths.items()}
    rows = []
    for method, param, value, keep in sweep_masks(
        prefill_acts, decode_acts, down_norms=down_norms, thresholds=thresholds, static_scores=static_scores,
        densities=densities, scales=scales, methods=methods, seed=seed,
    ):
        for truth, active in truths.items():
            m = mask_metrics(keep, active, mass)
            for L in range(keep.shape[0]):
                rows.append({
                    **(extra or {}), "truth": truth, "method": method, "param": param, "value": value,
                    "layer": L, **{k: float(v[L]) for k, v in m.items()},
                    "truth_density": float(truth_density[truth][L]),
                })
    return rows


# ----- aggregation (pure, over rows) -------------------------------------------------------------
def _nanmean(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return sum(xs) / len(xs) if xs else float("nan")


def aggregate(rows: Sequence[dict], by: Sequence[str] = ("truth", "method", "param", "value", "layer"),
              metrics: Sequence[str] = (*METRICS, "truth_density")) -> list[dict]:
    """Mean (NaN-skipping) of ``metrics`` over rows grouped by ``by``; adds ``n`` (rows per group)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    out = []
    for key, rs in groups.items():
        row = dict(zip(by, key))
        for m in metrics:
            row[m] = _nanmean([float(r[m]) for r in rs])
        row["n"] = len(rs)
        out.append(row)
    return out


def summary_at(rows: Sequence[dict], density: float = 0.5, scale: float = 1.0) -> list[dict]:
    """Per truth × method: metrics averaged over layers (and prompts) at one sweep point.

    Density methods at the sweep density closest to ``density``; ``tda`` at the scale closest to
    ``scale`` (its density is whatever the calibrated thresholds give).
    """
    out = []
    for truth in TRUTHS:
        for method in RECALL_METHODS:
            rs = [r for r in rows if r["truth"] == truth and r["method"] == method]
            if not rs:
                continue
            target = scale if rs[0]["param"] == "scale" else density
            best = min({r["value"] for r in rs}, key=lambda v: (abs(v - target), v))
            pick = [r for r in rs if r["value"] == best]
            row = {"truth": truth, "method": method, "param": rs[0]["param"], "value": best}
            for m in (*METRICS, "truth_density"):
                row[m] = _nanmean([float(r[m]) for r in pick])
            out.append(row)
    return out


def curve(rows: Sequence[dict], *, truth: str = "tt", metric: str = "recall") -> dict[str, dict]:
    """Per method: ``{"param", "value": [...], "density": [...], metric: [...]}`` averaged over layers."""
    agg = aggregate([r for r in rows if r["truth"] == truth], by=("method", "param", "value"))
    out: dict[str, dict] = {}
    for r in sorted(agg, key=lambda r: (r["method"], r["value"])):
        c = out.setdefault(r["method"], {"param": r["param"], "value": [], "density": [], metric: []})
        c["value"].append(r["value"])
        c["density"].append(r["density"])
        c[metric].append(r[metric])
    return out


# ----- the study (runs the model) ----------------------------------------------------------------
def study_prompt(lm, prompt: str, calibration, *, new_tokens: int = 64,
                 densities: Sequence[float] = DEFAULT_DENSITIES, methods: Sequence[str] = RECALL_METHODS,
                 scales: Sequence[float] = DEFAULT_SCALES, top_p: float = DEFAULT_TOP_P, seed: int = 0,
                 extra: dict | None = None, norms: torch.Tensor | None = None,
                 static_scores: torch.Tensor | None = None):
    """Generate, capture and score one prompt: returns ``(DecodeCapture, rows)``."""
    from tda.activations.decode import generate_with_capture
    from tda.masks.build import model_down_norms, model_static_scores

    calibration.check_model(lm)
    methods = check_methods(methods)
    densities = [check_density(d) for d in densities]
    check_top_p(top_p)
    norms = model_down_norms(lm) if norms is None else norms
    if static_scores is None and "static" in methods:
        static_scores = model_static_scores(lm)
    dc = generate_with_capture(lm, prompt, new_tokens)
    rows = recall_rows(
        dc.prefill_acts, dc.decode_acts, down_norms=norms, thresholds=calibration.thresholds,
        static_scores=static_scores, densities=densities, scales=scales, methods=methods, top_p=top_p,
        seed=seed, extra={**(extra or {}), "prompt_tokens": dc.prefill_acts.shape[1], "steps": dc.n_steps},
    )
    return dc, rows


def recall_study(lm, prompt: str, calibration, new_tokens: int = 64,
                 densities: Sequence[float] = DEFAULT_DENSITIES, methods: Sequence[str] = RECALL_METHODS,
                 **kw) -> list[dict]:
    """Rows of :func:`recall_rows` for one prompt (the app's entry point); see :func:`study_prompt`."""
    return study_prompt(lm, prompt, calibration, new_tokens=new_tokens, densities=densities,
                        methods=methods, **kw)[1]
