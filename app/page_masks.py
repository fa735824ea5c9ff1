"""Page 2 — token-wise (TT) active sets vs a sequence-wise mask (TDA, Griffin, ...) for the prompt."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import figures, state, widgets
from app.views import masks as views
from tda.common.errors import TDAError

METHODS = {
    "tda": "TDA (calibrated CETT thresholds × scale)",
    "tda_matched": "TDA at a target density",
    "griffin": "Griffin (top-k statistic)",
    "static": "static (weight magnitudes)",
    "random": "random",
}

st.title("Masks: token-wise active sets vs one sequence mask")
st.caption(
    "Each prompt token has its own active set under the sidebar's rule (with the CETT rule this "
    "is TT's token-wise mask). A sequence-wise method keeps one set of neurons per layer for the "
    "whole prompt. How much of each token's active set does it cover, and what does it miss?"
)
lm = state.model_or_stop()
s = state.settings()
text = widgets.prompt_box("masks")

c1, c2, c3 = st.columns([2, 1, 1])
method = c1.selectbox("Sequence-wise method", list(METHODS), format_func=METHODS.get, key="mask_method")
if method == "tda":
    scale = c2.select_slider("threshold scale (× t_L)", [0.25, 0.35, 0.5, 0.71, 1.0, 1.41, 2.0, 2.83, 4.0],
                             value=1.0, key="mask_scale")
    density = None
else:
    scale = 1.0
    density = c2.slider("density", 0.05, 0.95, 0.5, 0.05, key="mask_density")
layer = c3.number_input("layer", 0, lm.ffn.n_layers - 1, value=min(lm.ffn.n_layers // 2, lm.ffn.n_layers - 1),
                        key="mask_layer")

cap = widgets.try_or_error(state.capture, state.model_key(lm), text, "sequence", lm, prefix="Prompt: ")
if cap is None:
    st.stop()

try:
    rule = state.rule(lm, s)
    key = state.model_key(lm)
    res = views.mask_view(
        cap, rule, method, density=density, scale=scale, layer=int(layer),
        thresholds=state.calibration(key, s.cett_target if s.rule == "cett" else 0.2, lm).thresholds,
        down_norms=state.down_norms(key, lm),
        static_scores=state.static_scores(key, lm) if method == "static" else None,
    )
except TDAError as e:
    st.error(str(e))
    st.stop()

m1, m2, m3, m4 = st.columns(4)
m1.metric("tokens", len(cap.tokens))
m2.metric(f"mask density, layer {layer}", f"{res['mask_density'][int(layer)]:.3f}")
m3.metric("mean token coverage (recall)", f"{res['layer_recall']:.3f}")
m4.metric("mean mass coverage", f"{res['layer_mass_recall']:.3f}")

st.plotly_chart(
    figures.coverage_figure(cap.tokens, res["token_recall"], res["token_mass_recall"],
                            title=f"Layer {layer}: how much of each token's active set the {method} mask covers"),
    key="coverage_chart",
)
st.subheader("Per token")
st.dataframe(pd.DataFrame(res["rows"]), hide_index=True, key="mask_table",
             column_config={"missed neurons": st.column_config.TextColumn(width="large")})
st.plotly_chart(
    figures.density_per_layer_figure(
        cap.layers, {f"{method} mask": res["mask_density"], f"token-wise ({rule.short}), mean": res["token_density"]},
        title="Overall density per layer"),
    key="density_chart",
)
st.caption(f"Rule: {rule.label}. Mask: {METHODS[method]}"
           + (f", scale {scale:g}" if method == "tda" else f", density {density:g}") + ".")
