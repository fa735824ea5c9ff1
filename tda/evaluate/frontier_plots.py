"""Frontier figures (pure Plotly builders over :func:`tda.evaluate.frontier.join_rows` rows).

Each panel: decode speedup vs our dense (x) against one quality figure (y) with its 95%
bootstrap interval as error bars; one trace per method through its densities (labelled at the
points), dense as a star at (1, dense's value), and per point a dashed segment to a tick at the
method's bytes ceiling (the speedup its bytes read per step would allow): the gap is what the
implementation leaves on the table; rings mark the Pareto set. Perplexities are on log axes. With
``deltas=True`` every panel shows the paired difference from dense instead (dense at 0).
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

METRICS = {
    "ppl": "perplexity, held-out (lower is better)",
    "agreement": "top-1 agreement with dense",
    "mc_acc": "multiple-choice accuracy",
    "cloze_acc": "cloze (last-word) accuracy",
    "gen_rougeL": "generation: ROUGE-L vs dense's",
    "gen_ppl": "generation: perplexity under dense (lower is better)",
}
# the paired difference from dense of each metric (its column in the frontier rows) and its title
DELTA_KEYS = {"ppl": "ppl_delta_pct", "agreement": "agreement_delta", "mc_acc": "mc_acc_delta",
              "cloze_acc": "cloze_acc_delta", "gen_rougeL": "gen_rougeL_delta", "gen_ppl": "gen_ppl_delta_pct"}
DELTA_TITLES = {"ppl_delta_pct": "Δ perplexity vs dense, % (paired)", "agreement_delta": "Δ agreement vs dense (paired)",
                "mc_acc_delta": "Δ MC accuracy vs dense (paired)", "cloze_acc_delta": "Δ cloze accuracy vs dense (paired)",
                "gen_rougeL_delta": "Δ generation ROUGE-L vs dense (paired)",
                "gen_ppl_delta_pct": "Δ generation perplexity under dense, % (paired)"}
LOG_METRICS = ("ppl", "gen_ppl")
COLS = 3  # panels per figure row
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
    on = [r for r in usable if r.get("pareto") is True]
    if on:  # rings around the Pareto set
        traces.append(go.Scatter(
            x=[1.0 if r["method"] == "dense" else r["decode_speedup"] for r in on], y=[r[metric] for r in on],
            mode="markers", name="Pareto set", legendgroup="pareto", showlegend=showlegend, hoverinfo="skip",
            marker=dict(symbol="circle-open", size=20, color="#d62728", line=dict(width=2))))
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


def delta_rows(rows: list[dict]) -> list[dict]:
    """The rows with each metric replaced by its paired difference from dense (dense: 0, no interval),
    for :func:`frontier_figure` with ``deltas=True``."""
    out = []
    for r in rows:
        d = dict(r)
        for m, k in DELTA_KEYS.items():
            if r["method"] == "dense":
                d[m] = 0.0 if _num(r.get(m)) else None
                d.pop(f"{m}_lo", None), d.pop(f"{m}_hi", None)
            else:
                d[m], d[f"{m}_lo"], d[f"{m}_hi"] = r.get(k), r.get(f"{k}_lo"), r.get(f"{k}_hi")
        out.append(d)
    return out


def frontier_figure(rows: list[dict], metrics: list[str] | None = None, *, title: str | None = None,
                    deltas: bool = False) -> go.Figure:
    """One panel per metric (default: every one the rows have), :data:`COLS` a row, shared legend;
    ``deltas``: each panel shows the paired difference from dense instead of the value."""
    metrics = metrics or frontier_metrics(rows) or ["ppl"]
    colors = method_colors(rows)
    data = delta_rows(rows) if deltas else rows
    n_rows, n_cols = (len(metrics) + COLS - 1) // COLS, min(len(metrics), COLS)
    titles = [DELTA_TITLES[DELTA_KEYS[m]] if deltas and m in DELTA_KEYS else METRICS.get(m, m) for m in metrics]
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=titles, horizontal_spacing=0.07,
                        vertical_spacing=0.18 if n_rows > 1 else 0.1)
    for i, metric in enumerate(metrics):
        row, col = i // COLS + 1, i % COLS + 1
        for t in metric_traces(data, metric, colors=colors, showlegend=i == 0):
            fig.add_trace(t, row=row, col=col)
        fig.add_vline(x=1.0, line_dash="dot", line_color="#999", row=row, col=col)
        fig.update_xaxes(title_text=X_TITLE, row=row, col=col)
        if deltas:
            fig.add_hline(y=0.0, line_dash="dot", line_color="#999", row=row, col=col)
        elif metric in LOG_METRICS:  # log axis with plain numbers (no 2×10¹ ticks)
            fig.update_yaxes(type="log", tickformat=".3~g", minor=dict(showgrid=False), row=row, col=col)
    fig.update_layout(
        template="plotly_white", height=max(480, 420 * n_rows + 60), width=max(520, 480 * n_cols),
        title=dict(text=title or "Quality × speed frontier<br><sup>bars: 95% bootstrap; dashed: to the bytes ceiling; "
                   "rings: the Pareto set</sup>", x=0.01, xanchor="left"),
        legend=dict(orientation="h", y=-0.12 if n_rows > 1 else -0.2), margin=dict(t=100, b=110))
    return fig


def frontier_title(meta: dict) -> str:
    """A short title line (model, dtype) and a smaller second line with the run's sizes."""
    m = meta.get("model", {})
    sizes = [f"{meta.get('rounds_run', meta.get('rounds'))} round(s)", f"{meta.get('heldout_texts')} texts"]
    if meta.get("cloze_items"):
        sizes.append(f"{meta['cloze_items']} cloze items")
    if meta.get("mc_items"):
        sizes.append(f"{meta['mc_items']} MC items")
    if meta.get("gen_prompts"):
        sizes.append(f"{meta['gen_prompts']} generations")
    return (f"Quality × speed frontier — {m.get('model_id', '?')} ({m.get('dtype', '')})<br><sup>"
            + ", ".join(sizes) + "; bars: 95% bootstrap; dashed: to the bytes ceiling; rings: the Pareto set</sup>")


def figure_html(fig: go.Figure) -> str:
    """A self-contained HTML page (plotly.js inlined: works offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


def figure_png(fig: go.Figure, *, scale: float = 2.0) -> bytes:
    """PNG bytes through kaleido (needs a Chromium; raises without one)."""
    return fig.to_image(format="png", width=fig.layout.width or 1400, height=fig.layout.height or 480, scale=scale)
