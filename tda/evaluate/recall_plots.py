"""Plotly figures of the recall study — pure builders over the rows of :mod:`tda.evaluate.recall`.

Each function takes rows (dicts from :func:`tda.evaluate.recall.recall_rows`, one prompt or many, or the
aggregated rows of :func:`tda.evaluate.recall.aggregate`) and returns a ``go.Figure``; nothing is shown or
written here (the CLI writes HTML/PNG, the Streamlit app calls ``st.plotly_chart``).
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from tda.evaluate.recall import RECALL_METHODS, aggregate, curve

COLORS = {  # Okabe–Ito (colour-blind safe)
    "tda": "#D55E00", "tda_matched": "#E69F00", "griffin": "#0072B2", "static": "#999999",
    "random": "#CC79A7", "oracle": "#009E73",
}
LABELS = {
    "recall": "recall (decode-active neurons inside the mask)",
    "mass_recall": "mass recall (output-norm mass covered)",
    "precision": "precision",
    "density": "mask density",
}
TRUTH_LABELS = {"tt": "TT active set (CETT thresholds)", "top": "top-p% by output norm"}


def _n_prompts(rows: Sequence[dict]) -> int:
    """Prompts the rows average over (aggregated rows carry ``n_prompts``; raw rows a ``prompt`` key)."""
    if rows and "n_prompts" in rows[0]:
        return max(int(r["n_prompts"]) for r in rows)
    return len({r.get("prompt", 0) for r in rows}) or 1


def _title(text: str, truth: str, rows: Sequence[dict] = (), *, per_layer: bool = False) -> dict:
    """Title with a subtitle naming the ground truth and what each point averages over: layers and
    prompts, or (``per_layer``: one point per layer) prompts only."""
    n = _n_prompts(rows)
    if per_layer:
        over = f"each layer's value, mean over {n} prompts" if n > 1 else "each layer's value (one prompt)"
    else:
        over = "mean over layers" + (f" and {n} prompts" if n > 1 else " (one prompt)")
    return {"text": f"{text}<br><sup>ground truth: {TRUTH_LABELS.get(truth, truth)}; {over}</sup>",
            "x": 0.01, "xanchor": "left", "font": {"size": 14}}


LEGEND = dict(orientation="h", x=0, xanchor="left", y=-0.18, yanchor="top")  # under the plot, clear of the title


def _log_ticks(xs: Sequence[float]) -> dict:
    """Ticks of a log axis at the values themselves ("0.25 0.5 1 2 4"), not Plotly's minor digits."""
    vals = sorted({float(x) for x in xs if x > 0})
    return dict(type="log", tickvals=vals, ticktext=[f"{v:.3g}" for v in vals], minor=dict(showgrid=False))


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
        title=_title(f"{metric.replace('_', ' ')} of prompt masks on decode tokens vs density", truth, rows),
        xaxis_title=LABELS["density"], yaxis_title=LABELS.get(metric, metric), template="plotly_white",
        xaxis=dict(range=[0, 1]), yaxis=dict(range=[0, 1.02]), legend=LEGEND, margin=dict(t=80, b=120),
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
    for metric, dash, color in (("recall", None, "#0072B2"), ("mass_recall", "dot", "#E69F00"),
                                ("precision", "dashdot", "#009E73"), ("density", "dash", "#999999")):
        fig.add_trace(go.Scatter(x=xs, y=[r[metric] for r in agg], mode="lines+markers",
                                 name=metric.replace("_", " "), line=dict(dash=dash, color=color)))
    fig.add_vline(x=1.0, line=dict(color="gray", width=1, dash="dash"))
    fig.update_layout(
        title=_title("TDA prompt mask: recall vs threshold (scale × calibrated t_L)", truth, rows),
        xaxis_title="threshold scale (t / t_L, log)", yaxis_title="fraction", template="plotly_white",
        xaxis=_log_ticks(xs), yaxis=dict(range=[0, 1.02]), legend=LEGEND, margin=dict(t=80, b=120),
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
        title=_title(f"{metric.replace('_', ' ')} per layer at density ≈ {density:g} (tda at scale {scale:g})",
                     truth, sel, per_layer=True),
        xaxis_title="layer", yaxis_title=LABELS.get(metric, metric), template="plotly_white",
        yaxis=dict(range=[0, 1.02]), legend=LEGEND, margin=dict(t=80, b=120),
    )
    return fig


def calibration_figure(thresholds: Sequence[float], densities: Sequence[float], title: str = "") -> go.Figure:
    """Per-layer CETT thresholds (left axis) and the densities they give (right axis)."""
    layers = list(range(len(thresholds)))
    fig = go.Figure()
    fig.add_trace(go.Bar(x=layers, y=list(thresholds), name="threshold t_L", marker_color="#0072B2"))
    fig.add_trace(go.Scatter(x=layers, y=list(densities), name="density", yaxis="y2", mode="lines+markers",
                             line=dict(color="#D55E00")))
    fig.update_layout(
        title=title or "CETT thresholds per layer", xaxis_title="layer", yaxis_title="t_L (output norm)",
        yaxis2=dict(title="density on calibration data", overlaying="y", side="right", range=[0, 1]),
        template="plotly_white",
    )
    return fig
