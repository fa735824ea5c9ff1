"""Page 2 — token-wise (TT) active sets vs sequence-wise masks (TDA, Griffin, ...) for the prompt,
several methods side by side."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import figures, state, widgets
from app.views import masks as views
from app.views.captures import order_by_counts
from tda.common.errors import TDAError

METHODS = views.METHODS

st.title("Masks: token-wise active sets vs one sequence mask")
st.caption(
    "Each prompt token has its own active set under the sidebar's rule (with the CETT rule this "
    "is TT's token-wise mask). A sequence-wise method keeps one set of neurons per layer for the "
    "whole prompt. How much of each token's active set does it cover, and what does it miss?"
)
lm = state.model_or_stop()
s = state.settings()
text = widgets.prompt_box("masks", lm)

c1, c2, c3 = st.columns([2.4, 1.2, 1])
methods = c1.multiselect("Sequence-wise methods (side by side)", list(METHODS), default=["tda_matched", "griffin"],
                         key="mask_methods", max_selections=4, help="\n\n".join(map(views.method_label, METHODS)))
density = c2.slider("density (target)", 0.05, 0.95, 0.5, 0.05, key="mask_density",
                    help="Fraction of neurons kept: per layer for Griffin/static/random, the mean over layers "
                         "for TDA at a target density.")
scale = c2.select_slider("TDA threshold scale (× t_L)", [0.25, 0.35, 0.5, 0.71, 1.0, 1.41, 2.0, 2.83, 4.0],
                         value=1.0, key="mask_scale", disabled="tda" not in methods)
layer = widgets.layer_input(c3, "mask_layer", lm.ffn.n_layers, min(lm.ffn.n_layers // 2, lm.ffn.n_layers - 1))
if not methods:
    st.info("Pick at least one method.")
    st.stop()

cap = widgets.try_or_error(state.capture, state.model_key(lm), text, "sequence", lm, prefix="Prompt: ")
if cap is None:
    st.stop()

tokens = widgets.token_labels(lm, cap)
try:
    rule = state.rule(lm, s)
    key = state.model_key(lm)
    common = dict(
        density=density, scale=scale, layer=int(layer), tokens=tokens,
        thresholds=state.calibration(key, s.cett_target if s.rule == "cett" else 0.2, lm).thresholds,
        down_norms=state.down_norms(key, lm),
    )
    results = {m: views.mask_view(cap, rule, m, static_scores=state.static_scores(key, lm) if m == "static" else None,
                                  **common) for m in methods}
except TDAError as e:
    st.error(str(e))
    st.stop()

st.caption(f"Rule: {rule.label} · {len(cap.tokens)} tokens · layer {layer}. Image: one row per token, one "
           "column per neuron (most often active first, the same order in every panel); the colours in the "
           "legend above it.")
order = order_by_counts(next(iter(results.values()))["active_counts"])
cols = st.columns(len(methods))
for i, (m, res) in enumerate(results.items()):
    col = cols[i]
    name, _, desc = views.method_label(m).partition(" — ")
    col.markdown(f"**{name}** — {desc}")
    a, b = col.columns(2)
    a.metric(f"density, layer {layer}", f"{res['mask_density'][int(layer)]:.3f}")
    b.metric("mean recall", f"{res['layer_recall']:.3f}",
             help="Mean over tokens of the fraction of each token's active set the mask keeps.")
    col.caption(res["note"])
st.plotly_chart(
    figures.coverage_images_figure({m: res["image"] for m, res in results.items()}, tokens, order,
                                   title=f"Layer {layer}: coverage of each token's active set, per method"),
    key="mask_images")

pick = st.selectbox("Per-token details for", methods, format_func=views.method_label, key="mask_method")
res = results[pick]
st.plotly_chart(
    figures.coverage_figure(tokens, res["token_recall"], res["token_mass_recall"],
                            title=f"Layer {layer}: how much of each token's active set the {pick} mask covers"),
    key="coverage_chart",
)
st.dataframe(pd.DataFrame(res["rows"]), hide_index=True, key="mask_table",
             column_config={"missed neurons": st.column_config.TextColumn(width="large")})
series = {f"{m} mask": r["mask_density"] for m, r in results.items()}
series[f"token-wise ({rule.short}), mean"] = res["token_density"]
st.plotly_chart(figures.density_per_layer_figure(cap.layers, series, title="Density per layer"), key="density_chart")
