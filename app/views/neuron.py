"""Page 6 (Neuron): one neuron's profile (:func:`analysis.neuron.neuron_profile`) as figures and rows.

Pure functions of the profile dict (and of one layer's prompt activations for the overview);
colours from the Okabe–Ito colour-blind-safe palette.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

# Okabe–Ito
BLUE, SKY, GREEN, ORANGE, VERMILLION, PURPLE, GREY = (
    "#0072B2", "#56B4E9", "#009E73", "#E69F00", "#D55E00", "#CC79A7", "#999999")
CUT_STYLE = {  # method -> (label, colour, dash)
    "cett": ("CETT/TT t_L/‖W_down[:, i]‖", VERMILLION, "dash"),
    "teal": ("TEAL τ", ORANGE, "dot"),
    "cats": ("CATS τ_L", PURPLE, "dashdot"),
}
PEAKS_SHOWN = 32
# legends sit between the title (at the top of the figure) and the plot, in rows of their own
LEGEND = dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0, font=dict(size=11))


def token_axis(tokens) -> list[str]:
    """Category labels ``"i: token"`` (unique even when a token repeats)."""
    return [f"{i}: {t}" for i, t in enumerate(tokens)]


def _layout(fig: go.Figure, title: str, height: int, legend_rows: int = 0, **kw) -> go.Figure:
    """Shared look: title top left; ``legend_rows`` rows of legend under it, above the plot."""
    top = 46 + 22 * legend_rows
    fig.update_layout(title=dict(text=title, x=0, xanchor="left", y=1, yref="container", yanchor="top",
                                 pad=dict(t=12), font=dict(size=15)),
                      height=height + top, template="simple_white", margin=dict(l=55, r=15, t=top, b=40),
                      legend=LEGEND, showlegend=legend_rows > 0, **kw)
    return fig


def prompt_figure(prof: dict) -> go.Figure:
    """(a) ``a`` of the neuron on each prompt token; bars coloured by the CETT/TT rule, with ±cut-offs."""
    p, cuts = prof["prompt"], prof["cutoffs"]
    x = token_axis(p["tokens"])
    cett = cuts["cett"]["value"]
    on = [abs(v) >= cett for v in p["activation"]]
    fig = go.Figure()
    for active, name, colour in ((True, "active (CETT/TT rule)", BLUE), (False, "inactive", GREY)):
        fig.add_bar(x=[t for t, o in zip(x, on) if o == active], y=[v for v, o in zip(p["activation"], on) if o == active],
                    name=name, marker_color=colour, hovertemplate="%{x}<br>a = %{y:.4g}<extra></extra>")
    for m in ("cett", "teal"):
        label, colour, dash = CUT_STYLE[m]
        c = cuts[m]["value"]
        for sign in (1, -1):
            fig.add_scatter(x=[x[0], x[-1]], y=[sign * c, sign * c], mode="lines", name=f"±{label}",
                            line=dict(color=colour, dash=dash, width=1.5), legendgroup=m, showlegend=sign == 1,
                            hovertemplate=f"{label}: {sign * c:.4g}<extra></extra>")
    fig.update_xaxes(title="prompt token", tickangle=-45, categoryorder="array", categoryarray=x)
    fig.update_yaxes(title="a = act(gate)·up" if prof["gated"] else "a = act(in)", zeroline=True)
    return _layout(fig, f"Neuron {prof['neuron']} of layer {prof['layer']} on the prompt", 340, legend_rows=2,
                   barmode="overlay", bargap=0.15)


def layer_peaks(acts: torch.Tensor, k: int = PEAKS_SHOWN) -> list[tuple[int, float]]:
    """The ``k`` neurons with the largest peak ``|a|`` over the prompt, ``acts[token, neuron]``."""
    peak = acts.abs().amax(dim=0)
    top = peak.topk(min(k, peak.numel()))
    return [(int(i), float(v)) for v, i in zip(top.values, top.indices)]


def peaks_figure(peaks: list[tuple[int, float]], layer: int, selected: int) -> go.Figure:
    """The layer's most active neurons on the prompt (click one to select it)."""
    x = [f"#{i}" for i, _ in peaks]
    colours = [VERMILLION if i == selected else SKY for i, _ in peaks]
    fig = go.Figure(go.Bar(x=x, y=[v for _, v in peaks], marker_color=colours, customdata=[i for i, _ in peaks],
                           hovertemplate="neuron %{customdata}<br>peak |a| %{y:.4g}<extra></extra>",
                           showlegend=False))
    fig.update_xaxes(title="neuron", categoryorder="array", categoryarray=x, tickangle=-45)
    fig.update_yaxes(title="peak |a| on the prompt")
    return _layout(fig, f"Layer {layer}: most active neurons on the prompt (click one)", 300)


def _hist_panel(fig, row: int, quantiles, levels, n_tokens: int, colour: str, name: str,
                cuts: list[tuple[str, float]]) -> float:
    """One histogram panel with ± each cut-off; returns its largest count."""
    from analysis.neuron import quantile_histogram

    edges, counts = quantile_histogram(quantiles, n_tokens, levels=levels)
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    width = edges[1] - edges[0]
    fig.add_bar(x=centres, y=counts, width=width, marker_color=colour, name=name, showlegend=False,
                hovertemplate="%{x:.4g}: %{y:.1f} tokens<extra></extra>", row=row, col=1)
    top = max(counts) * 2
    for m, c in cuts:
        label, col, dash = CUT_STYLE[m]
        for sign in (1, -1):
            fig.add_scatter(x=[sign * c, sign * c], y=[0.5, top], mode="lines", name=f"±{label}",
                            line=dict(color=col, dash=dash, width=2), legendgroup=m,
                            showlegend=sign == 1, hovertemplate=f"{label}: {sign * c:.4g}<extra></extra>",
                            row=row, col=1)
    return max(counts)


def histogram_figure(prof: dict) -> go.Figure:
    """(c) the corpus distribution of ``a`` (and of ``act(gate)``) with each method's cut-off."""
    corpus, cuts, beyond = prof["corpus"], prof["cutoffs"], prof["corpus"]["fraction_beyond"]
    gated = corpus["gate_quantiles"] is not None and cuts["cats"] is not None
    titles = [f"a: |a| vs CETT/TT and TEAL — beyond: {beyond['cett']:.1%} and {beyond['teal']:.1%}"]
    if gated:
        titles.append(f"act(gate): |act(gate)| vs CATS — beyond: {beyond['cats']:.1%}")
    fig = make_subplots(rows=len(titles), cols=1, subplot_titles=titles, vertical_spacing=0.16)
    top = _hist_panel(fig, 1, corpus["quantiles"], corpus["levels"], corpus["n_tokens"], BLUE, "a over the corpus",
                      [("cett", cuts["cett"]["value"]), ("teal", cuts["teal"]["value"])])
    if gated:
        top = max(top, _hist_panel(fig, 2, corpus["gate_quantiles"], corpus["levels"], corpus["n_tokens"], SKY,
                                   "act(gate) over the corpus", [("cats", cuts["cats"]["value"])]))
    # log counts from half a token up (bins holding less than that stay empty), powers of ten only
    fig.update_yaxes(type="log", title="tokens", dtick=1, range=[math.log10(0.5), math.log10(top * 2)])
    fig.update_annotations(font_size=12, x=0, xanchor="left")
    fig = _layout(fig, f"Corpus distribution ({corpus['n_tokens']} tokens, {corpus['n_texts']} texts)",
                  190 * len(titles) + 60, legend_rows=2, bargap=0)
    return fig.update_layout(legend_y=1 + 26 / (190 * len(titles) + 20))  # 26 px up: above the first panel's title


def vocab_figure(prof: dict) -> go.Figure:
    """(d) the tokens the neuron promotes and suppresses (direct logit effect of ``W_down[:, i]``)."""
    v = prof["vocab"]
    rows = sorted(v["promoted"] + v["suppressed"], key=lambda r: r["logit"])
    labels = [f"{r['token']!r} ({r['id']})" for r in rows]  # ascending: the largest at the top
    fig = go.Figure(go.Bar(x=[r["logit"] for r in rows], y=labels, orientation="h", showlegend=False,
                           marker_color=[GREEN if r["logit"] >= 0 else VERMILLION for r in rows],
                           hovertemplate="%{y}<br>logit %{x:.4g}<extra></extra>"))
    fig.update_yaxes(categoryorder="array", categoryarray=labels, title=None)
    fig.update_xaxes(title="logit per unit a: W_U · (γ ⊙ W_down[:, i])", zeroline=True)
    return _layout(fig, "Tokens it promotes (green) and suppresses (vermillion)", 18 * len(rows) + 60)


def context_rows(prof: dict, which: str) -> list[dict]:
    """(b) one row per corpus context: activation, where, and the context with the token marked."""
    return [{"a": round(r["activation"], 5), "before": r["before"], "token": r["token"], "after": r["after"],
             "text": r["text"], "position": r["position"]} for r in prof["corpus"][which]]


def mask_rows(prof: dict) -> list[dict]:
    """(e) which masks keep the neuron for this prompt."""
    m, d_ff, dens = prof["masks"], prof["d_ff"], prof["density"]
    rows = [
        {"method": "TDA (sequence)", "keeps it?": "yes" if m["tda"]["keeps"] else "no",
         "why": f"RMS ‖n_i‖ {m['tda']['score']:.3g} vs t_L {m['tda']['threshold']:.3g}; rank {m['tda']['rank']}"},
        {"method": "GRIFFIN (sequence)", "keeps it?": "yes" if m["griffin"]["keeps"] else "no",
         "why": f"rank {m['griffin']['rank']} of {d_ff}; keeps the top {m['griffin']['k']}"},
        {"method": "static (sequence)", "keeps it?": "yes" if m["static"]["keeps"] else "no",
         "why": f"rank {m['static']['rank']} of {d_ff}; keeps the top {m['static']['k']}"},
        {"method": "TT (per token)", "keeps it?": f"{m['tt']['fraction']:.0%} of tokens",
         "why": "|a|·‖W_down[:, i]‖ ≥ t_L"},
        {"method": "TEAL (per token)", "keeps it?": f"{m['teal']['fraction']:.0%} of tokens",
         "why": f"|a| ≥ τ at density {dens:g}"},
    ]
    if m.get("cats"):
        rows.append({"method": "CATS (per token)", "keeps it?": f"{m['cats']['fraction']:.0%} of tokens",
                     "why": f"|act(gate)| ≥ τ_L at density {dens:g}"})
    return rows


def selected_point(event) -> int | None:
    """The neuron of the bar clicked in :func:`peaks_figure` (a Streamlit selection event), or None."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for pt in points or []:
        cd = pt.get("customdata")
        if isinstance(cd, list):
            cd = cd[0] if cd else None
        if cd is not None:
            return int(cd)
    return None
