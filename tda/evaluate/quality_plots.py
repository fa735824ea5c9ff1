"""Quality-vs-density figures (pure Plotly builders) and writing them (HTML always, PNG if possible)."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go

METRIC_TITLES = {
    "ppl": "perplexity of the held-out continuation (lower is better)",
    "agreement": "teacher-forced top-1 agreement with dense",
    "rouge1": "ROUGE-1 vs reference",
    "rougeL": "ROUGE-L vs reference",
    "rouge1_vs_dense": "ROUGE-1 vs dense output",
    "mc_acc": "multiple-choice accuracy",
}


def quality_figure(rows: list[dict], metric: str) -> go.Figure:
    """One line per method over density (x); dense as a dashed horizontal line. Pure."""
    fig = go.Figure()
    dense = [r[metric] for r in rows if r["method"] == "dense" and metric in r]
    methods = sorted({r["method"] for r in rows if r["method"] != "dense"})
    for m in methods:
        pts = sorted((r["density"], r[metric]) for r in rows if r["method"] == m and metric in r)
        if pts:
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=m))
    if dense:
        fig.add_hline(y=dense[0], line_dash="dash", annotation_text="dense")
        fig.add_trace(go.Scatter(x=[1.0], y=[dense[0]], mode="markers", name="dense", marker_symbol="star"))
    fig.update_layout(title=METRIC_TITLES.get(metric, metric), xaxis_title="FFN density (fraction of neurons kept)",
                      yaxis_title=metric, template="plotly_white")
    if metric == "ppl":
        fig.update_yaxes(type="log")
    return fig


PLOTLY_JS = "plotly.min.js"


def write_figure(fig: go.Figure, base: str | Path) -> list[Path]:
    """Write ``base.html`` and, when kaleido + Chromium work, ``base.png``. The HTML loads plotly.js from
    ``plotly.min.js`` beside it, written once per folder (not 4.8 MB inside every figure)."""
    from tda.common.atomic import atomic_path, write_text_atomic

    base = Path(base)
    written = []
    js = base.parent / PLOTLY_JS
    if not js.exists():
        from plotly.offline import get_plotlyjs

        write_text_atomic(js, get_plotlyjs())
    write_text_atomic(base.with_suffix(".html"), fig.to_html(include_plotlyjs=PLOTLY_JS, full_html=True))
    written.append(base.with_suffix(".html"))
    try:
        with atomic_path(base.with_suffix(".png")) as tmp:
            fig.write_image(str(tmp), format="png")
        written.append(base.with_suffix(".png"))
    except Exception:  # no browser for kaleido: HTML only
        pass
    return written
