"""Plotly figures of the recall study — pure builders over the rows of :mod:`tda.evaluate.recall`.

Each function takes rows (dicts from :func:`tda.evaluate.recall.recall_rows`, one prompt or many, or the
aggregated rows of :func:`tda.evaluate.recall.aggregate`) and returns a ``go.Figure``; nothing is shown or
written here (the CLI writes HTML/PNG, the Streamlit app calls ``st.plotly_chart``).
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from tda.evaluate.recall import RECALL_METHODS, aggregate, curve

COLORS = {
    "tda": "#d62728", "tda_matched": "#ff7f0e", "griffin": "#1f77b4", "static": "#7f7f7f",
    "random": "#bcbd22", "oracle": "#2ca02c",
}
LABELS = {
    "recall": "recall (decode-active neurons inside the mask)",
    "mass_recall": "mass recall (output-norm mass covered)",
    "precision": "precision",
    "density": "mask density",
}
TRUTH_LABELS = {"tt": "TT active set (CETT thresholds)", "top": "top-p% by output norm"}


def _title(text: str, truth: str) -> str:
    return f"{text}<br><sup>ground truth: {TRUTH_LABELS.get(truth, truth)}; mean over layers and prompts</sup>"


def recall_vs_density_figure(rows: Sequence[dict], *, truth: str = "tt", metric: str = "recall",
                             methods: Sequence[str] = RECALL_METHODS) -> go.Figure:
    """``metric`` against mask density, one line per method (``tda`` at its realised densities)."""
    fig = go.Figure()
    for method, c in curve(rows, truth=truth, metric=metric).items():
        if method not in methods:
            continue
        hover = [f"{c['param']} {v:g}" for v in c["value"]]
        fig.add_trace(go.Scatter(
            x=c["density"], y=c[metric], mode="lines+markers", name=method, text=hover,
            line=dict(color=COLORS.get(method), dash="dot" if method == "oracle" else None),
            hovertemplate="%{text}<br>density %{x:.3f}<br>" + metric + " %{y:.3f}<extra>" + method + "</extra>",
        ))
    if metric in ("recall", "mass_recall"):
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance (y = density)",
                                 line=dict(color="black", width=1, dash="dash"), hoverinfo="skip"))
    fig.update_layout(
        title=_title(f"{metric.replace('_', ' ')} of prompt masks on decode tokens vs density", truth),
        xaxis_title=LABELS["density"], yaxis_title=LABELS.get(metric, metric), template="plotly_white",
        xaxis=dict(range=[0, 1]), yaxis=dict(range=[0, 1.02]), legend_title="mask",
    )
    return fig


def recall_vs_threshold_figure(rows: Sequence[dict], *, truth: str = "tt") -> go.Figure:
    """TDA: recall, mass recall, precision and density against the threshold scale ``t / t_L``."""
    agg = sorted(
        aggregate([r for r in rows if r["truth"] == truth and r["method"] == "tda"], by=("value",)),
        key=lambda r: r["value"],
    )
    xs = [r["value"] for r in agg]
    fig = go.Figure()
    for metric, dash in (("recall", None), ("mass_recall", "dot"), ("precision", "dashdot"), ("density", "dash")):
        fig.add_trace(go.Scatter(x=xs, y=[r[metric] for r in agg], mode="lines+markers",
                                 name=metric.replace("_", " "), line=dict(dash=dash)))
    fig.add_vline(x=1.0, line=dict(color="gray", width=1, dash="dash"))
    fig.update_layout(
        title=_title("TDA prompt mask: recall vs threshold (scale × calibrated t_L)", truth),
        xaxis_title="threshold scale (t / t_L, log)", yaxis_title="fraction", template="plotly_white",
        xaxis_type="log", yaxis=dict(range=[0, 1.02]),
    )
    return fig


def recall_by_layer_figure(rows: Sequence[dict], *, truth: str = "tt", metric: str = "recall",
                           density: float = 0.5, scale: float = 1.0,
                           methods: Sequence[str] = RECALL_METHODS) -> go.Figure:
    """``metric`` per layer, one line per method at the sweep point nearest ``density``/``scale``."""
    sel = [r for r in rows if r["truth"] == truth]
    fig = go.Figure()
    for method in methods:
        rs = [r for r in sel if r["method"] == method]
        if not rs:
            continue
        target = scale if rs[0]["param"] == "scale" else density
        best = min({r["value"] for r in rs}, key=lambda v: (abs(v - target), v))
        agg = sorted(aggregate([r for r in rs if r["value"] == best], by=("layer",)), key=lambda r: r["layer"])
        name = f"{method} ({rs[0]['param']} {best:g})"
        fig.add_trace(go.Scatter(x=[r["layer"] for r in agg], y=[r[metric] for r in agg], mode="lines+markers",
                                 name=name, line=dict(color=COLORS.get(method),
                                                      dash="dot" if method == "oracle" else None)))
    fig.update_layout(
        title=_title(f"{metric.replace('_', ' ')} per layer at density ≈ {density:g} (tda at scale {scale:g})", truth),
        xaxis_title="layer", yaxis_title=LABELS.get(metric, metric), template="plotly_white",
        yaxis=dict(range=[0, 1.02]),
    )
    return fig


def calibration_figure(thresholds: Sequence[float], densities: Sequence[float], title: str = "") -> go.Figure:
    """Per-layer CETT thresholds (left axis) and the densities they give (right axis)."""
    layers = list(range(len(thresholds)))
    fig = go.Figure()
    fig.add_trace(go.Bar(x=layers, y=list(thresholds), name="threshold t_L", marker_color="#1f77b4"))
    fig.add_trace(go.Scatter(x=layers, y=list(densities), name="density", yaxis="y2", mode="lines+markers",
                             line=dict(color="#d62728")))
    fig.update_layout(
        title=title or "CETT thresholds per layer", xaxis_title="layer", yaxis_title="t_L (output norm)",
        yaxis2=dict(title="density on calibration data", overlaying="y", side="right", range=[0, 1]),
        template="plotly_white",
    )
    return fig
