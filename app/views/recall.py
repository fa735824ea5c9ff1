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


def recall_view(res: dict, *, truth: str, methods) -> dict:
    """Page 4: the curves (:mod:`tda.evaluate.recall_plots`) and the 50%-density summary (:mod:`tda.evaluate.recall`)."""
    from tda.evaluate.recall import summary_at
    from tda.evaluate.recall_plots import recall_vs_density_figure, recall_vs_threshold_figure

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
