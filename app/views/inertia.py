"""Page 1 (Inertia explorer): Study 1 numbers and heatmaps for one prompt."""

from __future__ import annotations

from app.views.captures import layer_index

CONTROL_STEP = 16  # the paper's control is 16 random tokens


def control_length(n_tokens: int, limit: int = 256) -> int:
    """Tokens in the random-token control: the prompt's count rounded up to a multiple of 16, so
    that most prompt edits reuse the cached control captures."""
    return min(limit, max(CONTROL_STEP, -(-n_tokens // CONTROL_STEP) * CONTROL_STEP))


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
                 tokens=None, control_panels: bool = False) -> dict:
    """Page 1: the side-by-side heatmaps of ``layer`` and Study 1's numbers and curves."""
    from analysis.plots import inertia_curves

    seq = captures[("real", "sequence")]
    li = layer_index(seq, layer)
    out = inertia_result(captures, rule, model_id=model_id)
    figure = heatmap_figure(captures, layer=layer, neurons=neurons, max_cols=max_cols, tokens=tokens,
                            control_panels=control_panels, model_id=model_id)
    curves = inertia_curves({model_id: out["result"]}, title=f"{model_id}: Study 1 per layer ({rule.label})")
    return {**out, "row": out["tables"]["real"][li], "figure": figure, "curves": curves}


PANELS = {("real", "isolated"): "prompt — isolated (each token alone)", ("real", "sequence"): "prompt — sequence",
          ("random", "isolated"): "random tokens — isolated", ("random", "sequence"): "random tokens — sequence"}


def heatmap_figure(captures: dict, *, layer: int, neurons: tuple[int, int], max_cols: int, tokens=None,
                   control_panels: bool = False, model_id: str = ""):
    """Isolated vs sequence ``|a|`` of ``layer`` side by side on one colour scale
    (:func:`analysis.plots.heatmap_panels`: max-|a| pooling beyond ``max_cols``), neurons ``lo:hi``.

    ``tokens`` label the prompt's rows; ``control_panels`` adds the random-token control's row.
    """
    from analysis.plots import heatmap_panels

    lo, hi = neurons
    keys = list(PANELS) if control_panels else [("real", "isolated"), ("real", "sequence")]
    panels = {}
    for src, mode in keys:
        cap = captures[(src, mode)]
        labels = tokens if (src == "real" and tokens is not None) else cap.tokens
        labels = [f"{i}:{t}" for i, t in enumerate(labels)]  # unique categories
        panels[PANELS[(src, mode)]] = (cap.acts[layer_index(cap, layer), :, lo:hi].abs().numpy(), labels)
    n_rows = 2 if control_panels else 1
    n_tok = max(len(v[1]) for v in panels.values())
    height = int(min(1500, max(380, n_rows * (14 * n_tok + 60) + 140)))
    fig = heatmap_panels(panels, title=f"{model_id} layer {layer}: |a| per token (y) and neuron (x), "
                                       f"neurons {lo}–{hi - 1}", max_cols=max_cols, rows=n_rows, cols=2,
                         height=height)
    if lo:  # the builder numbers the columns from 0: shift to the zoomed range's neuron indices
        for t in fig.data:
            t.x = [int(x) + lo for x in t.x]
    return fig
