"""Frontier figures (pure Plotly builders over :func:`tda.evaluate.frontier.join_rows` rows).

Each panel: decode speedup vs our dense (x) against one quality figure (y) with its 95%
bootstrap interval as error bars; one trace per method through its densities (labelled at the
points), dense as a star at (1, dense's value), and per point a dashed segment to a tick at the
method's bytes ceiling (the speedup its bytes read per step would allow): the gap is what the
implementation leaves on the table. Perplexity is on a log axis.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

METRICS = {
    "ppl": "perplexity, held-out (lower is better)",
    "agreement": "top-1 agreement with dense",
    "mc_acc": "multiple-choice accuracy",
}
X_TITLE = "decode speedup vs our dense (×)"


def method_colors(rows: list[dict]) -> dict[str, str]:
    """A stable colour per method (dense black), in order of first appearance."""
    palette = qualitative.Plotly + qualitative.D3
    out, i = {"dense": "#222222"}, 0
    for r in rows:
        if r["method"] not in out:
            out[r["method"]] = palette[i % len(palette)]
            i += 1
    return out


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x


def _errors(pts: list[dict], metric: str) -> dict | None:
    lo, hi = f"{metric}_lo", f"{metric}_hi"
    if not all(_num(p.get(lo)) and _num(p.get(hi)) for p in pts):
        return None
    return dict(type="data", symmetric=False, array=[max(p[hi] - p[metric], 0.0) for p in pts],
                arrayminus=[max(p[metric] - p[lo], 0.0) for p in pts], thickness=1.2, width=4)


def _hover(p: dict, metric: str) -> str:
    parts = [f"{p['method']}" + ("" if p["method"] == "dense" else f" @ {p.get('density_target')}")]
    if _num(p.get("density_run")):
        parts.append(f"density run {p['density_run']:.3f}")
    if _num(p.get("decode_speedup")):
        parts.append(f"speedup {p['decode_speedup']:.3f}×")
    if _num(p.get("ceiling")):
        parts.append(f"bytes ceiling {p['ceiling']:.3f}×")
    if _num(p.get("roofline_pct")):
        parts.append(f"{p['roofline_pct']:.0f}% of roofline")
    v = f"{metric} {p[metric]:.4g}"
    if _num(p.get(f"{metric}_lo")) and _num(p.get(f"{metric}_hi")):
        v += f" [{p[f'{metric}_lo']:.4g}, {p[f'{metric}_hi']:.4g}]"
    return "<br>".join(parts + [v])


def metric_traces(rows: list[dict], metric: str, *, colors: dict[str, str] | None = None,
                  showlegend: bool = True) -> list[go.Scatter]:
    """The traces of one panel: per method its points and its ceiling segments, then dense."""
    colors = colors or method_colors(rows)
    usable = [r for r in rows if _num(r.get(metric)) and _num(r.get("decode_speedup"))]
    traces = []
    for m in dict.fromkeys(r["method"] for r in usable if r["method"] != "dense"):
        pts = sorted((r for r in usable if r["method"] == m), key=lambda r: r.get("density_target") or 0)
        c = colors.get(m, "#888")
        traces.append(go.Scatter(
            x=[p["decode_speedup"] for p in pts], y=[p[metric] for p in pts], mode="lines+markers+text",
            name=m, legendgroup=m, showlegend=showlegend, line=dict(color=c), marker=dict(color=c, size=8),
            text=[f"{p.get('density_target'):g}" if _num(p.get("density_target")) else "" for p in pts],
            textposition="top center", textfont=dict(size=9, color=c), error_y=_errors(pts, metric),
            hovertext=[_hover(p, metric) for p in pts], hoverinfo="text"))
        xs, ys, sizes = [], [], []
        for p in pts:
            if _num(p.get("ceiling")):
                xs += [p["decode_speedup"], p["ceiling"], None]
                ys += [p[metric], p[metric], None]
                sizes += [0, 12, 0]
        if xs:
            traces.append(go.Scatter(
                x=xs, y=ys, mode="lines+markers", name=f"{m} bytes ceiling", legendgroup=m, showlegend=False,
                line=dict(color=c, dash="dash", width=1),
                marker=dict(symbol="line-ns-open", size=sizes, color=c, line=dict(width=2, color=c)),
                hoverinfo="skip"))
    if showlegend and any(t.name.endswith("bytes ceiling") for t in traces):  # explain the ticks once
        traces.append(go.Scatter(x=[None], y=[None], mode="lines+markers", name="→ bytes ceiling",
                                 line=dict(color="#888", dash="dash", width=1),
                                 marker=dict(symbol="line-ns-open", size=12, color="#888", line=dict(width=2)),
                                 legendgroup="ceiling", hoverinfo="skip"))
    dense = [r for r in usable if r["method"] == "dense"]
    if dense:
        d = dict(dense[0], decode_speedup=1.0)
        traces.append(go.Scatter(
            x=[1.0], y=[d[metric]], mode="markers", name="dense", legendgroup="dense", showlegend=showlegend,
            marker=dict(symbol="star", size=14, color=colors["dense"]), error_y=_errors([d], metric),
            hovertext=[_hover(d, metric)], hoverinfo="text"))
    return traces


def frontier_metrics(rows: list[dict]) -> list[str]:
    """The metrics of :data:`METRICS` that some row has."""
    return [m for m in METRICS if any(_num(r.get(m)) for r in rows)]


def frontier_figure(rows: list[dict], metrics: list[str] | None = None, *, title: str | None = None) -> go.Figure:
    """One panel per metric (default: every one the rows have) side by side, shared legend."""
    metrics = metrics or frontier_metrics(rows) or ["ppl"]
    colors = method_colors(rows)
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[METRICS.get(m, m) for m in metrics],
                        horizontal_spacing=0.07)
    for i, metric in enumerate(metrics, start=1):
        for t in metric_traces(rows, metric, colors=colors, showlegend=i == 1):
            fig.add_trace(t, row=1, col=i)
        fig.add_vline(x=1.0, line_dash="dot", line_color="#999", row=1, col=i)
        fig.update_xaxes(title_text=X_TITLE, row=1, col=i)
        if metric == "ppl":
            fig.update_yaxes(type="log", row=1, col=i)
    fig.update_layout(
        template="plotly_white", height=480, width=max(520, 480 * len(metrics)),
        title=title or "Quality × speed frontier (error bars: 95% bootstrap; dashed: to the bytes ceiling)",
        legend=dict(orientation="h", y=-0.2), margin=dict(t=80, b=110))
    return fig


def frontier_title(meta: dict) -> str:
    m = meta.get("model", {})
    return (f"Quality × speed frontier — {m.get('model_id', '?')} ({m.get('dtype', '')}); "
            f"{meta.get('rounds')} round(s), {meta.get('heldout_texts')} texts, {meta.get('mc_items')} MC items "
            "(bars: 95% bootstrap; dashed: to the bytes ceiling)")


def figure_html(fig: go.Figure) -> str:
    """A self-contained HTML page (plotly.js inlined: works offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


def figure_png(fig: go.Figure, *, scale: float = 2.0) -> bytes:
    """PNG bytes through kaleido (needs a Chromium; raises without one)."""
    return fig.to_image(format="png", width=fig.layout.width or 1400, height=fig.layout.height or 480, scale=scale)
