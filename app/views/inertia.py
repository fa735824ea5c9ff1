"""Page 1 (Inertia explorer): Study 1 numbers and heatmaps for one prompt."""

from __future__ import annotations

import torch

from app.views.captures import layer_index, order_by_counts

CONTROL_STEP = 16  # the paper's control is 16 random tokens


def control_length(n_tokens: int, limit: int = 256) -> int:
    """Random words in the control: the prompt's count rounded up to a multiple of 16, so that most
    prompt edits reuse the cached control captures; one under ``limit`` (the capture adds BOS)."""
    return min(limit - 1, max(CONTROL_STEP, -(-n_tokens // CONTROL_STEP) * CONTROL_STEP))


def inertia_result(captures: dict, rule, *, model_id: str) -> dict:
    """Study 1's numbers (:func:`analysis.studies.inertia_from_captures`) and the Claim 4 verdict.

    ``captures``: ``{(source, mode): Capture}`` for ``real`` (the prompt) and ``random`` (the
    random-token control), modes ``isolated``/``sequence``.
    """
    from analysis.inertia import claim4_verdict, mode_differences
    from analysis.studies import inertia_from_captures

    result = inertia_from_captures(captures, rule, model_id=model_id)
    verdict = claim4_verdict(result)
    tables = {}
    for src, d in result["sources"].items():
        diffs = mode_differences(d["isolated"], d["sequence"])
        tables[src] = [
            {"layer": s["layer"],
             "density seq": round(s["density"], 4), "density iso": round(i["density"], 4),
             "hist. Jaccard seq": round(s["jaccard"], 4), "hist. Jaccard iso": round(i["jaccard"], 4),
             "Δ Jaccard": round(df["d_jaccard"], 4), "chance seq": round(s["jaccard_chance"], 4),
             "n50 seq": s["n50"], "n50 iso": i["n50"], "Δ n50": df["d_n50"],
             "J(prev) seq": round(s["jaccard_prev"], 4), "self Jaccard": round(sj, 4)}
            for s, i, df, sj in zip(d["sequence"], d["isolated"], diffs, d["self_jaccard"], strict=True)
        ]
    return {"result": result, "verdict": verdict, "tables": tables}


def inertia_view(captures: dict, rule, *, model_id: str, layer: int, neurons: tuple[int, int], max_cols: int,
                 tokens=None, control_panels: bool = False, show: str = "raw", order: str = "index") -> dict:
    """Page 1: the side-by-side heatmaps of ``layer`` and Study 1's numbers and curves."""
    from analysis.plots import inertia_curves

    seq = captures[("real", "sequence")]
    li = layer_index(seq, layer)
    out = inertia_result(captures, rule, model_id=model_id)
    figure = heatmap_figure(captures, layer=layer, neurons=neurons, max_cols=max_cols, tokens=tokens,
                            control_panels=control_panels, model_id=model_id, rule=rule, show=show, order=order)
    curves = inertia_curves({model_id: out["result"]}, title=f"{model_id}: Study 1 per layer ({rule.label})")
    return {**out, "row": out["tables"]["real"][li], "figure": figure, "curves": curves,
            "criteria": verdict_rows(out["verdict"])}


PANELS = {("real", "isolated"): "prompt — isolated (each token alone)", ("real", "sequence"): "prompt — sequence",
          ("random", "isolated"): "random tokens — isolated", ("random", "sequence"): "random tokens — sequence"}
SHOW = {"active": "active set (1 = active under the rule)", "masked": "|a| where active (0 elsewhere)",
        "raw": "raw |a| (every neuron)"}
ORDER = {"frequency": "most often active in the sequence first", "index": "neuron index"}


def neuron_order(active, order: str, n: int):
    """Column order of ``n`` neurons: ``frequency`` sorts them by how many tokens of
    ``active[token, neuron]`` they fire for (descending, ties by index), so neurons shared by many
    tokens form stripes at the left; ``index`` keeps the model's order."""
    return torch.arange(n) if order == "index" else order_by_counts(active.sum(0))


def mean_pool(vals, width: int):
    """``vals[token, column]`` averaged over bins of ``width`` columns (the last bin may be short):
    pooled binary sets read as the share of active neurons per bin, not as "any active"."""
    if width <= 1:
        return vals
    n = vals.shape[1]
    pad = (-n) % width
    summed = torch.nn.functional.pad(vals, (0, pad)).reshape(vals.shape[0], -1, width).sum(-1)
    sizes = torch.full((summed.shape[1],), float(width))
    sizes[-1] = width - pad
    return summed / sizes


def panel_values(cap, active, layer: int, show: str):
    """``[token, neuron]`` values drawn for ``show`` (:data:`SHOW`): 0/1 active set, |a| masked, raw |a|."""
    li = layer_index(cap, layer)
    a = cap.acts[li].abs()
    if show == "raw":
        return a
    act = active[li]
    return act.float() if show == "active" else a * act


def heatmap_figure(captures: dict, *, layer: int, neurons: tuple[int, int], max_cols: int, tokens=None,
                   control_panels: bool = False, model_id: str = "", rule=None, show: str = "raw",
                   order: str = "index"):
    """Isolated vs sequence panels of ``layer`` side by side on one colour scale
    (:func:`analysis.plots.heatmap_panels`: max pooling beyond ``max_cols``).

    ``show`` (:data:`SHOW`) draws the active sets under ``rule`` (binary, or |a| masked by them) or
    the raw ``|a|``; ``order`` (:data:`ORDER`) sorts the neurons (all panels share the prompt
    sequence's order, so shared stripes line up); ``neurons = (lo, hi)`` then picks columns
    ``lo:hi`` of that order. ``tokens`` label the prompt's rows; ``control_panels`` adds the
    random-token control's row. Hover shows each column's neuron id.
    """
    import numpy as np

    from analysis.plots import heatmap_panels

    lo, hi = neurons
    keys = list(PANELS) if control_panels else [("real", "isolated"), ("real", "sequence")]
    actives = {k: rule.active_capture(captures[k]) for k in keys} if show != "raw" or order != "index" else {}
    seq = captures[("real", "sequence")]
    seq_active = actives[("real", "sequence")][layer_index(seq, layer)] if actives else None
    cols = neuron_order(seq_active, order, seq.acts.shape[-1])[lo:hi]
    width = max(1, -(-len(cols) // max_cols)) if show == "active" else 1  # bins of the binary view
    panels = {}
    for src, mode in keys:
        cap = captures[(src, mode)]
        labels = tokens if (src == "real" and tokens is not None) else cap.tokens
        labels = [f"{i}:{t}" for i, t in enumerate(labels)]  # unique categories
        vals = panel_values(cap, actives.get((src, mode)), layer, show)[:, cols]
        panels[PANELS[(src, mode)]] = (mean_pool(vals, width).numpy(), labels)
    n_rows = 2 if control_panels else 1
    n_tok = max(len(v[1]) for v in panels.values())
    height = int(min(1500, max(380, n_rows * (14 * n_tok + 60) + 140)))
    what = {"active": "active sets" + (f" (share active per {width} neurons)" if width > 1 else ""),
            "masked": "|a| of active neurons", "raw": "raw |a|"}[show]
    x_title = "neuron (index)" if order == "index" else "neurons, most often active first (hover: id)"
    fig = heatmap_panels(panels, title=f"{model_id} layer {layer}: {what} per token (y) and neuron (x)",
                         max_cols=max_cols, rows=n_rows, cols=2, height=height, x_title=x_title,
                         zmax=1.0 if show == "active" else None,
                         colorscale=[[0, "#FFFFFF"], [1, "#08306B"]] if show == "active" else "Viridis",
                         colorbar_title=("share active" if width > 1 else "active") if show == "active" else "|a|")
    fig.update_layout(width=None)
    ids = cols.numpy()
    for t in fig.data:  # the builder numbers the columns 0..: show the neuron ids they stand for
        starts = np.asarray(t.x, dtype=int) * width
        t.x = starts + lo
        if order != "index":
            t.customdata = np.broadcast_to(ids[starts], (len(t.y), len(starts)))
            t.hovertemplate = t.hovertemplate.replace("neuron %{x}", "neuron %{customdata} (rank %{x})")
    return fig


def verdict_sentence(verdict: dict, model_id: str, *, example: bool = False) -> str:
    """One sentence saying what the verdict means for this prompt, with the layer counts behind it;
    ``example``: the prompt is the paper's own example sentence (Study 1's XSum line)."""
    a, b = verdict["parts"]["A"], verdict["parts"]["B"]
    counts = "; ".join(f"{'prompt' if src == 'real' else 'random tokens'}: A in {a[src]['n']}/{a[src]['of']}, "
                       f"B in {b[src]['n']}/{b[src]['of']} layers" for src in a)
    meaning = {"holds": "this model shows the paper's flocking on it (both criteria pass)",
               "partly holds": "this model shows only part of the paper's flocking on it (one criterion passes)",
               "fails": "this model does not show the paper's flocking on it (neither criterion passes in enough "
                        "layers for both token sources)"}[verdict["verdict"]]
    head = ("This is the paper's own example sentence (Study 1's XSum line), and on " if example else "On ")
    return (f"{head}{model_id} {meaning} — {counts}, a criterion needing ≥ {verdict['majority']:.0%} of the "
            f"layers — a measured result about this model and prompt, not an error of the page.")


def verdict_rows(verdict: dict) -> list[dict]:
    """Claim 4's criteria (:func:`analysis.inertia.claim4_verdict`) as table rows: one per criterion
    and token source, each pass/fail with its number."""
    rows = []
    src_label = {"real": "prompt", "random": "random tokens"}
    for src, p in verdict["parts"]["A"].items():
        rows.append({"criterion": "A · flocking: ΔJaccard > 0 and Δn50 < 0",
                     "tokens": src_label.get(src, src), "layers passing": f"{p['n']}/{p['of']}",
                     "number": f"mean ΔJaccard {p['mean_d_jaccard']:+.3f}, mean Δn50 {p['mean_d_n50']:+.1f}",
                     "result": "pass" if p["holds"] else "fail"})
    for src, p in verdict["parts"]["B"].items():
        rows.append({"criterion": "B · context over identity: J(prev) > self J",
                     "tokens": src_label.get(src, src), "layers passing": f"{p['n']}/{p['of']}",
                     "number": f"J(prev) {p['mean_jaccard_prev_seq']:.3f} vs self J {p['mean_self_jaccard']:.3f}",
                     "result": "pass" if p["holds"] else "fail"})
    return rows
