"""Page 5 — dense vs sparse generation side by side (texts, densities, timings, speedup), and the
quality × speed frontier (a stored `tda frontier` result for this model, or a small one run here)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import figures, frontier_tab, state, widgets
from app.views import generate as views
from tda.common.errors import TDAError

st.title("Generate: dense vs sparse FFN")
lm = state.model_or_stop()
s = state.settings()
methods = views.sparse_methods()
tab_gen, tab_frontier = st.tabs(["Dense vs sparse", "Quality × speed frontier"])

# ----- the frontier tab (first in code: the generation tab below may stop the page) ---------------------
with tab_frontier:
    frontier_tab.render(lm)

# ----- the generation tab ----------------------------------------------------------------------------
with tab_gen:
    st.caption(
        "Dense prefill; the sparse method builds its neuron masks from the prompt (or thresholds each "
        "token) and decodes with the engine's sparse FFNs. "
        "Timings are one run each on this machine: noisy — `tda bench` gives paired medians."
    )
    text = widgets.prompt_box("generate")
    c1, c2, c3 = st.columns(3)
    method = c1.selectbox("sparse method", methods, format_func=views.method_label, key="gen_method")
    use_cett = method in ("tda", "tt") and c2.checkbox(
        "calibrated CETT thresholds (no target density)", value=False, key="gen_cett",
        help=f"Use the CETT {s.cett_target:g} thresholds as calibrated instead of matching a density.")
    density = None if use_cett else c2.slider("FFN density (fraction of neurons kept)", 0.1, 0.9, 0.5, 0.05,
                                              key="gen_density")
    new_tokens = c3.slider("new tokens", 4, 128, 32, 4, key="gen_tokens")

    params = (state.model_key(lm), text, method, density, s.cett_target, new_tokens)
    if st.button("Generate", type="primary", key="gen_run"):
        ids = widgets.try_or_error(state.check_prompt, lm, text, prefix="Prompt: ")
        if ids is not None:
            try:
                with st.status("Generating: dense, then sparse…", expanded=True) as status:
                    pair = views.generate_pair(lm, text, method, density=density, cett=s.cett_target,
                                                 max_new_tokens=new_tokens, progress=status.write)
                    status.update(label="Done", state="complete", expanded=False)
                st.session_state["gen_result"] = (params, pair)
            except TDAError as e:
                st.error(str(e))

    stored_params, pair = widgets.stored_result(
        "gen_result", params, "Press **Generate** to run the dense model and the sparse method on the prompt.", "Generate"
    )
    view = views.generate_view(pair)
    m1, m2, m3 = st.columns(3)
    m1.metric("decode speedup (dense ms/token ÷ sparse)", f"{view['decode_speedup']:.2f}×")
    m2.metric("end-to-end speedup", f"{view['total_speedup']:.2f}×")
    m3.metric(f"{pair['sparse']['method']} FFN density", f"{pair['sparse']['density']:.3f}")
    left, right = st.columns(2)
    for col, name in ((left, "dense"), (right, "sparse")):
        p = pair[name]
        col.subheader(f"{name}: {p['method']}")
        col.code(p["text"], language=None, wrap_lines=True, height=180)
    st.dataframe(pd.DataFrame(view["rows"]), hide_index=True, key="gen_table")
    st.plotly_chart(
        figures.density_per_layer_figure(list(range(len(pair["sparse"]["density_per_layer"]))),
                                         {f"{pair['sparse']['method']} mask": pair["sparse"]["density_per_layer"]},
                                         title="Sparse FFN density per layer"),
        key="gen_density_chart",
    )
