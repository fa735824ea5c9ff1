"""Page 5 — dense vs sparse generation side by side (texts, densities, timings, speedup), and the
quality × speed frontier (a stored `tda frontier` result for this model, or a small one run here)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import figures, frontier_tab, state, widgets
from app.views import generate as views
from tda.common import progress
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
        "token) and decodes with the engine's sparse FFNs. Timings: medians of a few paired repeats "
        "(dense and sparse alternate) on this machine — still noisy; `tda bench` runs more rounds."
    )
    text = widgets.prompt_box("generate", lm)
    c1, c2 = st.columns([2.2, 1])
    method = c1.selectbox("sparse method", methods, format_func=views.method_label, key="gen_method")
    new_tokens = c2.slider("new tokens", 4, 128, 32, 4, key="gen_tokens")
    c3, c4 = st.columns([2.2, 1])
    use_cett = method in ("tda", "tt") and c3.checkbox(
        "calibrated CETT thresholds (no target density)", value=False, key="gen_cett",
        help=f"Use the CETT {s.cett_target:g} thresholds as calibrated instead of matching a density.")
    density = None if use_cett else c3.slider("FFN density (fraction of neurons kept)", 0.1, 0.9, 0.5, 0.05,
                                              key="gen_density")
    repeats = c4.slider("timed repeats (paired)", 1, 5, views.REPEATS, key="gen_repeats")
    speculate = 4 if views.speculative_available(lm) and c4.checkbox(
        "speculative lm_head", value=False, key="gen_spec",
        help="Draft up to 4 tokens over a small vocabulary, then check them with one pass of the full "
             "lm_head: the method's own greedy tokens, fewer head reads (gguf, head on integer tiles).") else 0

    params = (state.model_key(lm), text, method, density, s.cett_target, new_tokens, repeats, speculate)
    if st.button("Generate", type="primary", key="gen_run"):
        ids = widgets.try_or_error(state.check_prompt, lm, text, prefix="Prompt: ")
        if ids is None:
            st.stop()  # the error above replaces any stale hint or result below
        try:
            with st.status("Generating: dense and sparse, alternating…", expanded=True) as status, \
                    progress.use_sink(widgets.status_sink(status)):
                pair = views.generate_pair(lm, text, method, density=density, cett=s.cett_target,
                                           max_new_tokens=new_tokens, repeats=repeats, progress=status.write,
                                           speculate=speculate)
                status.update(label="Done", state="complete", expanded=False)
            st.session_state["gen_result"] = (params, pair)
        except TDAError as e:
            st.error(str(e))
            st.stop()

    stored_params, pair = widgets.stored_result(
        "gen_result", params, "Press **Generate** to run the dense model and the sparse method on the prompt.", "Generate"
    )
    view = views.generate_view(pair)
    sp_method = pair["sparse"]["method"]
    dv = view["divergence"]
    m1, m2, m3, m4 = st.columns(4)
    lo, hi = view["decode_spread"]
    m1.metric("decode speedup", f"{view['decode_speedup']:.2f}×",
              help=f"Dense ÷ sparse decode ms/token: median of {view['repeats']} paired repeats; "
                   f"range {lo:.2f}–{hi:.2f}×.")
    m1.caption(f"median of {view['repeats']} paired repeats, range {lo:.2f}–{hi:.2f}×")
    tlo, thi = view["total_spread"]
    m2.metric("end-to-end speedup", f"{view['total_speedup']:.2f}×")
    m2.caption(f"range {tlo:.2f}–{thi:.2f}×")
    m3.metric(f"{sp_method} FFN density", f"{pair['sparse']['density']:.3f}")
    if pair["sparse"].get("speculative"):
        sv = pair["sparse"]["speculative"]
        m3.caption(f"speculative lm_head: {sv['accepted']} of {sv['drafted']} drafts confirmed in {sv['cycles']} "
                   f"full-head passes ({sv['vocab']} draft rows)")
    m4.metric("aligned token agreement", f"{dv['aligned']:.0%}",
              help="Tokens of a longest common subsequence of the dense and sparse generations ÷ tokens "
                   "generated: the two sequences aligned, so a continuation that only shifted by a token "
                   "still agrees. Positional agreement (same token at the same position) is in the caption.")
    m4.caption(("identical to dense" if dv["first"] is None else
                f"identical up to token {dv['first']} (first divergence at token {dv['first']}); "
                f"positional agreement {dv['positional']:.0%}") + f"; {dv['common']} of {dv['longest']} tokens aligned")
    st.caption(views.density_note(stored_params[2], stored_params[3], pair["sparse"]["density"], stored_params[4]))
    st.plotly_chart(views.agreement_figure(pair, title="Generated tokens: blue is in the aligned common subsequence, vermillion is not; dashed: first divergence"),
                    key="gen_agreement_chart")
    left, right = st.columns(2)
    left.subheader("Dense (every neuron)")
    left.code(pair["dense"]["text"], language=None, wrap_lines=True, height=180)
    right.subheader(f"Sparse: {stored_params[2]}")
    right.caption(views.method_label(stored_params[2]))
    right.markdown(views.marked_text(pair), unsafe_allow_html=True)
    st.dataframe(pd.DataFrame(view["rows"]), hide_index=True, key="gen_table")
    st.plotly_chart(
        figures.density_per_layer_figure(list(range(len(pair["sparse"]["density_per_layer"]))),
                                         {f"{sp_method}": pair["sparse"]["density_per_layer"]},
                                         title="Sparse FFN density per layer (prompt and decode tokens)"),
        key="gen_density_chart",
    )
