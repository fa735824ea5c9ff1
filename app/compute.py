"""What each page computes, as plain functions over library calls (no Streamlit, no new maths).

Every number comes from :mod:`tda` or :mod:`analysis`; this module only wires their functions
together for one prompt so that the pages stay thin and ``benchmarks/app_update.py`` can time
exactly what a page runs after a prompt edit.
"""

from __future__ import annotations

import torch

from tda.errors import BadInput

MISSED_SHOWN = 12  # missed neurons listed per token (largest output norm first)


def layer_index(cap, layer: int) -> int:
    if layer not in cap.layers:
        raise BadInput(f"layer {layer} was not captured (layers {cap.layers[0]}..{cap.layers[-1]})")
    return cap.layers.index(layer)


def sequence_mask(method: str, cap, *, density, scale: float, thresholds, down_norms, static_scores):
    """The sequence-wise :class:`tda.masks.NeuronMask` of ``method`` for a capture of all layers."""
    from tda.masks import build_mask, tda_mask

    if method == "tda":
        return tda_mask(cap.acts, down_norms, thresholds, scale=scale)
    return build_mask(method, cap.acts, density=density, thresholds=thresholds, down_norms=down_norms,
                      static_scores=static_scores)


def mask_view(cap, rule, method: str, *, density, scale: float, layer: int, thresholds, down_norms,
              static_scores) -> dict:
    """Page 2: each token's active set (``rule``) against one sequence mask, at ``layer``.

    Per-token coverage is :func:`tda.recall.mask_metrics` with each token as its own group
    (recall = |mask ∧ A_t| / |A_t|, mass recall = covered output norm / all output norm).
    """
    from analysis.inertia import inertia_table
    from tda.recall import mask_metrics, output_mass

    li = layer_index(cap, layer)
    active = rule.active_capture(cap)  # [layer, token, neuron]
    mask = sequence_mask(method, cap, density=density, scale=scale, thresholds=thresholds,
                         down_norms=down_norms, static_scores=static_scores)
    norms = down_norms[cap.layers]
    mass = output_mass(cap.acts, norms)  # [layer, token, neuron]
    per_layer = mask_metrics(mask.keep, active, mass)
    n_tok = len(cap.tokens)
    per_token = mask_metrics(mask.keep[li].expand(n_tok, -1), active[li][:, None, :], mass[li][:, None, :])
    missed = active[li] & ~mask.keep[li]
    rows = []
    for t, tok in enumerate(cap.tokens):
        idx = torch.nonzero(missed[t]).flatten()
        order = torch.argsort(mass[li, t, idx], descending=True)[:MISSED_SHOWN]
        shown = ", ".join(str(int(i)) for i in idx[order])
        rows.append({
            "#": t, "token": tok, "active": int(active[li, t].sum()),
            "covered": int((active[li, t] & mask.keep[li]).sum()), "missed": int(missed[t].sum()),
            "recall": round(float(per_token["recall"][t]), 4),
            "mass recall": round(float(per_token["mass_recall"][t]), 4),
            "missed neurons": shown + (" …" if len(idx) > MISSED_SHOWN else ""),
        })
    table = inertia_table(active, cap.layers)
    return {
        "rows": rows,
        "token_recall": [float(x) for x in per_token["recall"]],
        "token_mass_recall": [float(x) for x in per_token["mass_recall"]],
        "layer_recall": float(per_layer["recall"][li]),
        "layer_mass_recall": float(per_layer["mass_recall"][li]),
        "mask_density": [float(x) for x in mask.density_per_layer()],
        "token_density": [float(r["density"]) for r in table],
        "mask": mask,
    }


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


# --------------------------------------------------------------------------- page 3: 13 samples
def layer_groups(n_layers: int) -> dict[str, list[int]]:
    from analysis.similarity import layer_groups as groups

    return groups(n_layers)


def samples_from_table(records: list[dict]) -> list[dict]:
    """Rows of the samples editor → samples for :func:`analysis.similarity.check_samples`.

    Blank rows are dropped; a new row without an id gets the next free one.
    """
    from analysis.similarity import check_samples

    def blank(v) -> bool:
        return v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip())

    rows = [r for r in records if not all(blank(r.get(k)) for k in ("id", "text", "treatment"))]
    used = [int(r["id"]) for r in rows if not blank(r.get("id"))]
    nxt = max(used, default=0) + 1
    out = []
    for r in rows:
        sid = r.get("id")
        if blank(sid):
            sid, nxt = nxt, nxt + 1
        out.append({"id": sid, "text": "" if blank(r.get("text")) else str(r["text"]),
                    "treatment": "" if blank(r.get("treatment")) else str(r["treatment"])})
    return check_samples(out)


def similarity_result(lm, samples: list[dict], cett_target: float) -> dict:
    """Study 2 end to end (:func:`analysis.similarity.similarity_study`) under a CETT rule."""
    from analysis.activation import make_rule
    from analysis.similarity import similarity_study

    return similarity_study(lm, samples, make_rule(lm, "cett", cett_target))


def similarity_view(result: dict, measure: str, group: str) -> dict:
    """Page 3: the heatmap of one measure × layer group and the verdict table."""
    import numpy as np

    from analysis.plots import similarity_heatmap, verdict_grid
    from analysis.similarity import verdict_rows
    from analysis.verdicts import OBSERVATIONS

    wording = {o.key: o.wording for o in OBSERVATIONS}
    rows = verdict_rows(result)
    verdicts = [
        {"obs.": r["observation"], "paper says": wording.get(r["observation"], ""), "holds": r["holds"],
         "margin": r["margin"], "comparisons holding": f"{r['n_hold']}/{r['n_comparisons']}"}
        for r in rows if r["measure"] == measure and r["group"] == group
    ]
    S = np.asarray(result["matrices"][measure][group], dtype=float)
    labels = [str(x["id"]) for x in result["samples"]]
    off = S[~np.eye(len(S), dtype=bool)]  # colour range of the off-diagonal entries (the diagonal is 1)
    figure = similarity_heatmap(
        S, labels, zmin=float(off.min()) if off.size else None, zmax=float(off.max()) if off.size else None,
        title=f"{result['model_id']}: {result['measures'][measure]['label']}, {group} layers "
              f"{result['groups'][group][0]}–{result['groups'][group][-1]}")
    figure.update_xaxes(type="category")  # every sample id as a tick
    figure.update_yaxes(type="category")
    grid = verdict_grid(result) if result.get("observations") else None
    return {"verdicts": verdicts, "matrix": S, "figure": figure, "grid": grid}


# ------------------------------------------------------------------------------- page 4: recall
def recall_result(lm, prompt: str, calibration, *, new_tokens: int, methods: tuple[str, ...], top_p: float,
                  densities: tuple[float, ...]) -> dict:
    """A short dense generation, then every method's mask scored against it (:mod:`tda.recall`)."""
    from tda.recall import study_prompt

    dc, rows = study_prompt(lm, prompt, calibration, new_tokens=new_tokens, methods=methods, top_p=top_p,
                            densities=densities)
    return {"rows": rows, "continuation": dc.text, "steps": dc.n_steps,
            "prompt_tokens": int(dc.prefill_acts.shape[1])}


def recall_view(res: dict, *, truth: str, methods) -> dict:
    """Page 4: the curves (:mod:`tda.recall_plots`) and the 50%-density summary (:mod:`tda.recall`)."""
    from tda.recall import summary_at
    from tda.recall_plots import recall_vs_density_figure, recall_vs_threshold_figure

    rows = res["rows"]
    methods = tuple(methods)
    summary = [
        {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
        for r in summary_at(rows, density=0.5) if r.get("truth") == truth
    ]
    figs = {
        "recall": recall_vs_density_figure(rows, truth=truth, metric="recall", methods=methods),
        "mass_recall": recall_vs_density_figure(rows, truth=truth, metric="mass_recall", methods=methods),
    }
    if "tda" in methods:
        figs["threshold"] = recall_vs_threshold_figure(rows, truth=truth)
    return {"figures": figs, "summary": summary}


# ----------------------------------------------------------------------------- page 5: generate
def generate_pair(lm, prompt: str, method: str, *, density, cett: float, max_new_tokens: int,
                  warmup: bool = True, progress=None) -> dict:
    """Dense and ``method`` greedy generations of the same prompt (:func:`tda.generate.generate`).

    Both produce exactly ``max_new_tokens`` tokens (``min_new_tokens``) so that timings compare.
    """
    from tda.generate import generate

    runs = (("dense", {}), (method, {"density": density, "cett": cett}))
    if warmup:  # first calls pay one-time costs (probes, allocation): keep them out of the timings
        if progress:
            progress("warm-up (2 tokens each, not timed)…")
        for name, kw in runs:
            generate(lm, prompt, "dense" if name == "dense" else method, max_new_tokens=2, **kw)
    out = {}
    for name, kw in runs:
        if progress:
            progress(f"{name}: generating {max_new_tokens} tokens…")
        r = generate(lm, prompt, "dense" if name == "dense" else method, max_new_tokens=max_new_tokens,
                     min_new_tokens=max_new_tokens, **kw)
        out["dense" if name == "dense" else "sparse"] = {
            "method": r.method, "text": r.texts[0], "density": r.density,
            "density_per_layer": r.density_per_layer[0], "timings": r.timings,
        }
    return out


def generate_view(pair: dict) -> dict:
    """Page 5: the side-by-side rows and the speedups (ratios of the measured timings)."""
    d, s = pair["dense"]["timings"], pair["sparse"]["timings"]

    def ratio(a, b):
        return a / b if b else float("nan")

    rows = [
        {"": name, "method": p["method"], "FFN density": round(p["density"], 3),
         "prefill ms": round(p["timings"]["prefill_s"] * 1000, 1),
         "decode ms/token": round(p["timings"]["decode_ms_per_token"], 2),
         "total s": round(p["timings"]["total_s"], 3), "new tokens": p["timings"]["new_tokens"]}
        for name, p in (("dense", pair["dense"]), ("sparse", pair["sparse"]))
    ]
    return {"rows": rows,
            "decode_speedup": ratio(d["decode_ms_per_token"], s["decode_ms_per_token"]),
            "total_speedup": ratio(d["total_s"], s["total_s"])}
