"""Small generic Plotly figures the app needs and :mod:`analysis`/:mod:`tda` do not provide.

Pure functions of plain lists (no Streamlit, no maths beyond laying out the numbers given).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

# Okabe–Ito colours (colour-blind safe): one meaning per colour across the app
BLUE, VERMILLION, ORANGE, SKY, GREEN, GREY = "#0072B2", "#D55E00", "#E69F00", "#56B4E9", "#009E73", "#BBBBBB"
PALETTE = (BLUE, VERMILLION, GREEN, ORANGE, SKY, "#CC79A7", "#F0E442", "#000000")


def tidy(fig: go.Figure, title: str, *, height: int, legend: bool = True, bottom: int = 50) -> go.Figure:
    """Title at the top left, the legend in a row under it (never over it), a colour-blind palette."""
    fig.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left", "y": 0.98, "yanchor": "top", "yref": "container",
               "font": {"size": 14}},
        height=height, colorway=list(PALETTE),
        margin={"l": 50, "r": 10, "t": 80 if legend else 50, "b": bottom},
        legend={"orientation": "h", "x": 0, "xanchor": "left", "y": 1.02, "yanchor": "bottom"},
    )
    return fig


def coverage_figure(tokens: Sequence[str], recall: Sequence[float], mass_recall: Sequence[float],
                    title: str = "") -> go.Figure:
    """Per token: the fraction of its active set (and of its output mass) inside a mask."""
    labels = [f"{i}:{t}" for i, t in enumerate(tokens)]
    fig = go.Figure([
        go.Bar(name="active-set coverage (recall)", x=labels, y=list(recall), marker_color=BLUE,
               hovertemplate="%{x}<br>recall %{y:.3f}<extra></extra>"),
        go.Bar(name="output-mass coverage (mass recall)", x=labels, y=list(mass_recall), marker_color=ORANGE,
               hovertemplate="%{x}<br>mass recall %{y:.3f}<extra></extra>"),
    ])
    fig.update_layout(barmode="group", yaxis=dict(range=[0, 1.02], title="fraction"),
                      xaxis=dict(title="token", tickangle=-60, tickfont={"size": 9}))
    return tidy(fig, title, height=380, bottom=110)


COVERAGE_NAMES = ("not active, not kept", "covered (active and kept)", "missed (active, not kept)", "kept but idle")
COVERAGE_COLORS = ("#FFFFFF", BLUE, VERMILLION, GREY)


def coverage_images_figure(panels: dict, tokens: Sequence[str], order, title: str = "") -> go.Figure:
    """One token × neuron image of categories per named panel (0 neither, 1 covered, 2 missed, 3 kept but
    idle), side by side in one figure: the same height and token rows for every panel (labelled once, on
    the left), columns in ``order`` (neuron ids), each panel's name above it, the colours in a legend;
    hover names the panel, token, neuron and category."""
    from plotly.subplots import make_subplots

    names = list(panels)
    order = np.asarray(order)
    labels = [f"{i}:{t}" for i, t in enumerate(tokens)]
    scale = []
    for i, c in enumerate(COVERAGE_COLORS):
        scale += [[i / 4, c], [(i + 1) / 4, c]]
    fig = make_subplots(rows=1, cols=len(names), shared_yaxes=True, subplot_titles=names,
                        horizontal_spacing=min(0.03, 0.2 / max(1, len(names))))
    category = np.asarray(COVERAGE_NAMES, dtype=object)
    for j, name in enumerate(names):
        z = np.asarray(panels[name])[:, order]
        fig.add_trace(go.Heatmap(
            z=z, y=labels, customdata=np.stack([np.broadcast_to(order, z.shape), category[z]], axis=-1),
            zmin=-0.5, zmax=3.5, colorscale=scale, showscale=False, name=name,
            hovertemplate=f"{name}<br>%{{y}}<br>neuron %{{customdata[0]}}: %{{customdata[1]}}<extra></extra>",
        ), row=1, col=j + 1)
        fig.update_xaxes(title={"text": "neurons, most often active first", "font": {"size": 11}},
                         showticklabels=False, ticks="", row=1, col=j + 1)
    for name, color in zip(COVERAGE_NAMES, COVERAGE_COLORS, strict=True):  # the colours, in a legend
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name, showlegend=True,
                                 marker={"symbol": "square", "size": 12, "color": color,
                                         "line": {"color": "#888888", "width": 1}}), row=1, col=1)
    fig.update_yaxes(autorange="reversed", tickfont={"size": 8})
    fig.update_yaxes(title="token", row=1, col=1)
    fig.update_annotations(font={"size": 12})
    tidy(fig, title, height=int(min(900, max(320, 12 * len(tokens) + 170))), bottom=90)
    # the colours' legend under the panels (above them it would cover the panel names)
    fig.update_layout(margin={"t": 60}, legend={"y": -0.04, "yanchor": "top", "x": 0, "xanchor": "left"})
    fig.update_xaxes(title_standoff=4)
    return fig


def density_per_layer_figure(layers: Sequence[int], series: dict[str, Sequence[float]],
                             title: str = "") -> go.Figure:
    """One line per named series of per-layer densities."""
    fig = go.Figure([
        go.Scatter(name=name, x=list(layers), y=list(values), mode="lines+markers",
                   hovertemplate=f"{name}<br>layer %{{x}}<br>density %{{y:.3f}}<extra></extra>")
        for name, values in series.items()
    ])
    fig.update_layout(xaxis=dict(title="layer", dtick=1), yaxis=dict(title="density", range=[0, 1.02]))
    return tidy(fig, title, height=340)
