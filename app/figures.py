"""Small generic Plotly figures the app needs and :mod:`analysis`/:mod:`tda` do not provide.

Pure functions of plain lists (no Streamlit, no maths beyond laying out the numbers given).
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go


def coverage_figure(tokens: Sequence[str], recall: Sequence[float], mass_recall: Sequence[float],
                    title: str = "") -> go.Figure:
    """Per token: the fraction of its active set (and of its output mass) inside a mask."""
    labels = [f"{i}: {t}" for i, t in enumerate(tokens)]
    fig = go.Figure([
        go.Bar(name="active-set coverage (recall)", x=labels, y=list(recall),
               hovertemplate="%{x}<br>recall %{y:.3f}<extra></extra>"),
        go.Bar(name="output-mass coverage (mass recall)", x=labels, y=list(mass_recall),
               hovertemplate="%{x}<br>mass recall %{y:.3f}<extra></extra>"),
    ])
    fig.update_layout(barmode="group", title=title, yaxis=dict(range=[0, 1.02], title="fraction"),
                      xaxis=dict(title="token", tickangle=-45), height=360,
                      margin=dict(l=40, r=10, t=40, b=80), legend=dict(orientation="h", y=1.12))
    return fig


def density_per_layer_figure(layers: Sequence[int], series: dict[str, Sequence[float]],
                             title: str = "") -> go.Figure:
    """One line per named series of per-layer densities."""
    fig = go.Figure([
        go.Scatter(name=name, x=list(layers), y=list(values), mode="lines+markers",
                   hovertemplate=f"{name}<br>layer %{{x}}<br>density %{{y:.3f}}<extra></extra>")
        for name, values in series.items()
    ])
    fig.update_layout(title=title, xaxis=dict(title="layer", dtick=1),
                      yaxis=dict(title="density", range=[0, 1.02]), height=320,
                      margin=dict(l=40, r=10, t=40, b=40), legend=dict(orientation="h", y=1.15))
    return fig
