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


def coverage_image_figure(cat, tokens: Sequence[str], order, title: str = "", *, height: int | None = None,
                          show_scale: bool = True) -> go.Figure:
    """A token × neuron image of categories (0 neither, 1 covered, 2 missed, 3 kept but idle), columns
    in ``order`` (neuron ids); colour-blind-safe colours, hover names the neuron and the category."""
    names = ["not active, not kept", "covered (active and kept)", "missed (active, not kept)",
             "kept but idle"]
    colors = ["#FFFFFF", BLUE, VERMILLION, GREY]
    scale = []
    for i, c in enumerate(colors):
        scale += [[i / 4, c], [(i + 1) / 4, c]]
    z = np.asarray(cat)[:, np.asarray(order)]
    labels = [f"{i}:{t}" for i, t in enumerate(tokens)]
    fig = go.Figure(go.Heatmap(
        z=z, y=labels, customdata=np.broadcast_to(np.asarray(order), z.shape), zmin=-0.5, zmax=3.5,
        colorscale=scale, showscale=show_scale,
        colorbar={"tickvals": [0, 1, 2, 3], "ticktext": names, "len": 0.9, "thickness": 12},
        hovertemplate="%{y}<br>neuron %{customdata}<br>category %{z}<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed", tickfont={"size": 8}, title="token")
    fig.update_xaxes(title="neurons, most often active first", showticklabels=False)
    return tidy(fig, title, height=height or int(min(900, max(300, 12 * len(tokens) + 120))), legend=False)


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
