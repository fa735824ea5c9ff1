"""Page 4 (Recall): prompt masks scored against a short dense generation."""

from __future__ import annotations


def recall_result(lm, prompt: str, calibration, *, new_tokens: int, methods: tuple[str, ...], top_p: float,
                  densities: tuple[float, ...]) -> dict:
    """A short dense generation, then every method's mask scored against it (:mod:`tda.evaluate.recall`)."""
    from tda.evaluate.recall import study_prompt

    dc, rows = study_prompt(lm, prompt, calibration, new_tokens=new_tokens, methods=methods, top_p=top_p,
                            densities=densities)
    return {"rows": rows, "continuation": dc.text, "steps": dc.n_steps,
            "prompt_tokens": int(dc.prefill_acts.shape[1])}


SUMMARY_COLUMNS = {  # the summary's keys (tda.evaluate.recall.summary_at) as the page names them
    "method": "method",
    "mask": "mask at",
    "density": "mask density",
    "recall": "recall",
    "mass_recall": "mass recall",
    "precision": "precision",
    "truth_density": "ground-truth density (decode tokens)",
}


def summary_row(r: dict) -> dict:
    """One summary row with readable column names: the ground truth is the page's (not a column), the
    sweep point as ``density 0.5`` / ``threshold scale 1``."""
    param = "threshold scale" if r["param"] == "scale" else r["param"]
    row = {**r, "mask": f"{param} {r['value']:g}"}
    return {label: (round(row[k], 4) if isinstance(row[k], float) else row[k]) for k, label in SUMMARY_COLUMNS.items()}


def recall_view(res: dict, *, truth: str, methods) -> dict:
    """Page 4: the curves (:mod:`tda.evaluate.recall_plots`) and the 50%-density summary (:mod:`tda.evaluate.recall`)."""
    from tda.evaluate.recall import summary_at
    from tda.evaluate.recall_plots import recall_vs_density_figure, recall_vs_threshold_figure

    rows = res["rows"]
    methods = tuple(methods)
    summary = [summary_row(r) for r in summary_at(rows, density=0.5) if r.get("truth") == truth]
    figs = {
        "recall": recall_vs_density_figure(rows, truth=truth, metric="recall", methods=methods),
        "mass_recall": recall_vs_density_figure(rows, truth=truth, metric="mass_recall", methods=methods),
    }
    if "tda" in methods:
        figs["threshold"] = recall_vs_threshold_figure(rows, truth=truth)
    return {"figures": figs, "summary": summary}
