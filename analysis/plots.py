"""Pure Plotly figure builders (no I/O): inertia heatmaps, all-layer view, metric curves,
samples × neurons maps, similarity heatmaps and the verdict grid.

Conventions: tokens (or samples) on y, neurons on x; when a layer is wider than
``max_cols`` neurons the neuron axis is pooled into bins keeping the value of largest
magnitude (max-|a| pooling keeps sparse spikes visible). Panels that are compared share one
colour scale (a fixed ``zmax``). Every figure's title names the model and the rule it shows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

MAX_COLS = 1024
PANEL_ORDER = (("real", "isolated"), ("real", "sequence"), ("random", "isolated"), ("random", "sequence"))
SOURCE_LABEL = {"real": "XSum prompt", "random": "random tokens"}
SCALE_LABEL = {"real": "real text", "random": "random words"}


def pool_columns(M, max_cols: int = MAX_COLS) -> tuple[np.ndarray, np.ndarray]:
    """``(pooled, starts)``: ``M[rows, cols]`` with columns pooled into ≤ ``max_cols`` bins by
    max-|value| (the sign of the kept entry is preserved); ``starts`` = first neuron of each bin."""
    M = np.asarray(M, dtype=np.float32)
    n = M.shape[1]
    if n <= max_cols:
        return M, np.arange(n)
    width = int(np.ceil(n / max_cols))
    pad = (-n) % width
    P = np.pad(M, ((0, 0), (0, pad)))
    B = P.reshape(M.shape[0], -1, width)
    idx = np.abs(B).argmax(axis=2)
    pooled = np.take_along_axis(B, idx[..., None], axis=2)[..., 0]
    return pooled, np.arange(0, n, width)


def shared_zmax(arrays: Sequence[np.ndarray], q: float = 99.5) -> float:
    """One colour ceiling for panels that are compared: the q-th percentile of all |values|."""
    vals = np.concatenate([np.abs(np.asarray(a, dtype=np.float32)).ravel() for a in arrays])
    z = float(np.percentile(vals, q)) if vals.size else 1.0
    return z if z > 0 else 1.0


def _labels(tokens: Sequence[str]) -> list[str]:
    """Unique y labels (Plotly merges identical categories): ``index:token``."""
    return [f"{i}:{t.replace(chr(9601), '␣').replace(chr(10), '⏎')}" for i, t in enumerate(tokens)]


def quantize(M, zmax: float) -> np.ndarray:
    """``M / zmax`` clipped to [0, 1] as 256 levels (uint8): a quarter of float32's bytes in HTML."""
    return np.round(np.clip(np.asarray(M, dtype=np.float32) / zmax, 0, 1) * 255).astype(np.uint8)


def heatmap_panels(panels: dict[str, tuple[np.ndarray, list[str]]], *, title: str, zmax: float | None = None,
                   max_cols: int = MAX_COLS, colorscale: str = "Viridis", colorbar_title: str = "|a|",
                   rows: int = 2, cols: int = 2, x_title: str = "neuron", y_title: str = "token",
                   height: int = 760, levels: bool = False) -> go.Figure:
    """A grid of heatmaps ``{panel title: (values[rows, neurons], y labels)}`` on one colour scale.

    ``levels``: store values as 256 levels of ``[0, zmax]`` (uint8) with the colour bar labelled in
    the original units — for large non-negative maps whose exact values matter less than size.
    """
    pooled = {t: (pool_columns(v, max_cols), labels) for t, (v, labels) in panels.items()}
    zmax = zmax if zmax is not None else shared_zmax([p[0][0] for p in pooled.values()])
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(panels), horizontal_spacing=0.1,
                        vertical_spacing=0.12)
    for n, (t, ((vals, starts), labels)) in enumerate(pooled.items()):
        r, c = n // cols + 1, n % cols + 1
        z = quantize(vals, zmax) if levels else vals
        hover = (f"neuron %{{x}}<br>%{{y}}<br>level %{{z}}/255 of {zmax:.3g}<extra></extra>" if levels
                 else "neuron %{x}<br>%{y}<br>value %{z:.3f}<extra></extra>")
        fig.add_trace(go.Heatmap(z=z, x=starts, y=labels, coloraxis="coloraxis", name=t, hovertemplate=hover), r, c)
        fig.update_yaxes(autorange="reversed", title_text=y_title if c == 1 else None, row=r, col=c,
                         tickfont={"size": 8})
        fig.update_xaxes(title_text=x_title if r == rows else None, row=r, col=c)
    colorbar = {"title": {"text": colorbar_title}}
    if levels:
        ticks = np.linspace(0, 1, 5)
        colorbar |= {"tickvals": (ticks * 255).tolist(), "ticktext": [f"{t * zmax:.3g}" for t in ticks]}
    fig.update_layout(title={"text": title, "font": {"size": 14}}, height=height, width=1300,
                      coloraxis={"colorscale": colorscale, "cmin": 0, "cmax": 255 if levels else zmax,
                                 "colorbar": colorbar},
                      margin={"l": 110, "r": 40, "t": 90, "b": 50})
    return fig


def inertia_heatmaps(captures: dict, layer: int, *, result: dict | None = None, model_id: str = "",
                     max_cols: int = MAX_COLS) -> go.Figure:
    """Paper figures 3–6 for one layer: |a| maps, real/random × isolated/sequence, shared scale.

    ``captures``: ``{(source, mode): Capture}``; ``result`` (from Study 1) adds each panel's
    density and history Jaccard under its rule to the panel titles.
    """
    panels = {}
    for src, mode in PANEL_ORDER:
        if (src, mode) not in captures:
            continue
        cap = captures[(src, mode)]
        title = f"{SOURCE_LABEL.get(src, src)} — {mode}"
        if result is not None:
            row = next(r for r in result["sources"][src][mode] if r["layer"] == layer)
            title += (f"<br><sup>density {row['density']:.3f}, J{result['k']} {row['jaccard']:.3f}, "
                      f"n50 {row['n50']}, n90 {row['n90']}</sup>")
        panels[title] = (cap.layer(layer).abs().numpy(), _labels(cap.tokens))
    rule = f"; active rule {result['rule']['label']}" if result else ""
    return heatmap_panels(panels, title=f"{model_id} layer {layer}: |a| per token and neuron{rule}",
                          max_cols=max_cols)


def all_layer_view(captures: dict, *, model_id: str = "", max_cols: int = 256, q: float = 99.5) -> go.Figure:
    """All layers at once: each panel stacks the layers' token rows (layer-major), neurons pooled.

    Magnitudes differ by layer, so each layer is divided by its own ceiling (the q-th
    percentile of |a| over the four panels): colour = |a| / layer ceiling, clipped to 1.
    """
    any_cap = next(iter(captures.values()))
    layers = any_cap.layers
    scale = {L: shared_zmax([c.layer(L).abs().numpy() for c in captures.values()], q) for L in layers}
    panels = {}
    for src, mode in PANEL_ORDER:
        if (src, mode) not in captures:
            continue
        cap = captures[(src, mode)]
        blocks = [np.clip(pool_columns(cap.layer(L).abs().numpy(), max_cols)[0] / scale[L], 0, 1) for L in layers]
        labels = [f"L{L}:{i}" for L in layers for i in range(cap.n_tokens)]
        panels[f"{SOURCE_LABEL.get(src, src)} — {mode}"] = (np.concatenate(blocks), labels)
    fig = heatmap_panels(panels, title=f"{model_id}: all layers (rows = layer × token), |a| / per-layer ceiling",
                         zmax=1.0, max_cols=max_cols, colorbar_title="|a| / ceil", height=1100,
                         y_title="layer : token", levels=True)
    fig.update_yaxes(tickmode="array", tickvals=[f"L{L}:0" for L in layers], ticktext=[f"L{L}" for L in layers])
    return fig


CURVE_TITLES = {"jaccard": "Jaccard with previous k tokens", "n50": "n50 (neurons for 50% of events)",
                "n50_pooled": "n50 pooled over samples", "density": "density (fraction active)"}


def inertia_curves(results: dict[str, dict], *, title: str, keys: Sequence[str] = ("jaccard", "n50", "density")) -> go.Figure:
    """Per-layer metrics (``keys``), one line per (model, source, mode).

    ``results``: ``{legend prefix: inertia result}`` (e.g. trained and random-weights control);
    scale results (Appendix C) work too, with ``keys=("jaccard", "n50_pooled", "density")``.
    """
    fig = make_subplots(rows=1, cols=len(keys), subplot_titles=[CURVE_TITLES.get(k, k) for k in keys])
    dashes = ["solid", "dot", "dash", "dashdot"]
    colors = {("real", "isolated"): "#9ecae1", ("real", "sequence"): "#08519c",
              ("random", "isolated"): "#fdae6b", ("random", "sequence"): "#a63603"}
    for n, (prefix, res) in enumerate(results.items()):
        for src, mode in PANEL_ORDER:
            if src not in res["sources"]:
                continue
            rows = res["sources"][src][mode]
            x = [r["layer"] for r in rows]
            name = f"{prefix} {src} {mode}"
            for c, key in enumerate(keys, start=1):
                fig.add_trace(go.Scatter(x=x, y=[r[key] for r in rows], name=name, legendgroup=name,
                                         showlegend=c == 1, mode="lines+markers",
                                         line={"dash": dashes[n % len(dashes)], "color": colors[(src, mode)]}),
                              1, c)
    fig.update_xaxes(title_text="layer")
    fig.update_layout(title={"text": title, "font": {"size": 14}}, height=520, width=1400,
                      legend={"font": {"size": 9}})
    return fig


def samples_heatmaps(rates: dict, layer_pos: int, layer: int, *, model_id: str = "", rule_label: str = "",
                     summary: dict | None = None, max_cols: int = MAX_COLS) -> go.Figure:
    """Appendix C: samples × neurons firing rate (fraction of a sample's tokens active) for one layer.

    ``rates[source][mode]`` is ``[kept layer, sample, neuron]``; ``summary`` (one rule's scale
    result) adds pooled n50 to the titles.
    """
    panels = {}
    for src, mode in PANEL_ORDER:
        R = rates[src][mode][layer_pos].numpy()
        title = f"{SCALE_LABEL.get(src, src)} — {mode}"
        if summary is not None:
            row = next(r for r in summary["sources"][src][mode] if r["layer"] == layer)
            title += f"<br><sup>pooled n50 {row['n50_pooled']}, n90 {row['n90_pooled']}</sup>"
        panels[title] = (R, [f"s{i}" for i in range(R.shape[0])])
    return heatmap_panels(panels, title=f"{model_id} layer {layer}: firing rate per sample and neuron; rule {rule_label}",
                          zmax=1.0, max_cols=max_cols, colorscale="Magma", colorbar_title="rate",
                          y_title="sample", height=900, levels=True)


def _off_diagonal(S: np.ndarray) -> np.ndarray:
    """``S`` with its diagonal (self-similarity, always 1) blanked so it does not stretch the colours."""
    S = np.array(S, dtype=float)
    np.fill_diagonal(S, np.nan)
    return S


def _cell_text(S: np.ndarray) -> list[list[str]]:
    """Cell labels with enough digits to tell close values apart (3 decimals; blank on NaN)."""
    return [["" if v != v else f"{v:.3f}" for v in row] for row in S]


def similarity_heatmap(S, labels: Sequence[str], *, title: str, zmin: float | None = None,
                       zmax: float | None = None, names: Sequence[str] | None = None) -> go.Figure:
    """One annotated ``n × n`` similarity heatmap (sample ids on both axes, diagonal left blank).

    ``names``: hover text per sample (e.g. the sample's text)."""
    S = _off_diagonal(S)
    hover = list(names) if names is not None else list(labels)
    custom = [[f"{hover[i]} ↔ {hover[j]}" for j in range(len(labels))] for i in range(len(labels))]
    fig = go.Figure(go.Heatmap(z=S, x=list(labels), y=list(labels), zmin=zmin, zmax=zmax, colorscale="Cividis",
                               text=_cell_text(S), texttemplate="%{text}", textfont={"size": 9},
                               customdata=custom, colorbar={"title": {"text": "similarity"}},
                               hovertemplate="sample %{y} vs %{x}: %{z:.4f}<br>%{customdata}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title_text="sample id", type="category")
    fig.update_xaxes(title_text="sample id", tickangle=0, type="category", side="bottom")
    fig.update_layout(title={"text": title, "font": {"size": 13}, "x": 0.01, "xanchor": "left"},
                      height=600, width=700, margin={"l": 70, "r": 20, "t": 60, "b": 60})
    return fig


def similarity_grid(result: dict, measure: str) -> go.Figure:
    """Study 2: the 13×13 matrices of one measure for each layer group, one shared colour range."""
    mats = result["matrices"][measure]
    groups = list(mats)
    labels = [str(s["id"]) for s in result["samples"]]
    vals = np.concatenate([np.asarray(m, dtype=float)[~np.eye(len(labels), dtype=bool)] for m in mats.values()])
    zmin, zmax = float(vals.min()), float(vals.max())
    cols = min(4, len(groups))
    fig = make_subplots(rows=(len(groups) + cols - 1) // cols, cols=cols,
                        subplot_titles=[f"{g} (layers {result['groups'][g][0]}–{result['groups'][g][-1]})" for g in groups],
                        horizontal_spacing=0.04)
    for n, g in enumerate(groups):
        S = _off_diagonal(mats[g])
        fig.add_trace(go.Heatmap(z=S, x=labels, y=labels, coloraxis="coloraxis", text=_cell_text(S),
                                 texttemplate="%{text}", textfont={"size": 6},
                                 hovertemplate="sample %{y} vs %{x}: %{z:.4f}<extra></extra>"),
                      n // cols + 1, n % cols + 1)
    fig.update_yaxes(autorange="reversed", tickfont={"size": 9})
    fig.update_xaxes(tickfont={"size": 9}, tickangle=0)
    fig.update_layout(
        title={"text": f"{result['model_id']}: sample similarity — {result['measures'][measure]['label']} "
                       f"(group = mean of its layers' matrices; diagonal excluded from the colour range)",
               "font": {"size": 13}},
        coloraxis={"colorscale": "Cividis", "cmin": zmin, "cmax": zmax}, height=470, width=1700,
    )
    return fig


def verdict_grid(result: dict) -> go.Figure:
    """Observations (a)–(e) × (measure, group): green = holds, red = fails; text = margin."""
    obs = result["observations"]
    keys = list(obs)
    cols = [(m, g) for m in result["measures"] for g in result["groups"]]
    z = [[1.0 if obs[k][m][g]["holds"] else 0.0 for m, g in cols] for k in keys]
    text = [[f"{obs[k][m][g]['margin']:+.3f}<br>{obs[k][m][g]['n_hold']}/{obs[k][m][g]['n_comparisons']}"
             for m, g in cols] for k in keys]
    fig = go.Figure(go.Heatmap(z=z, x=[f"{m}<br>{g}" for m, g in cols], y=[f"({k})" for k in keys], zmin=0, zmax=1,
                               colorscale=[[0, "#D55E00"], [0.5, "#D55E00"], [0.5, "#0072B2"], [1, "#0072B2"]],
                               showscale=False, text=text, texttemplate="%{text}", textfont={"size": 8, "color": "white"}))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickangle=0, tickfont={"size": 9})
    fig.update_layout(title={"text": f"{result['model_id']}: observations (a)–(e) — blue holds, vermillion fails "
                                     f"(text: smallest margin, inequalities holding)", "font": {"size": 13}},
                      height=440, width=1600, margin={"t": 60, "b": 80})
    return fig
