"""Page 4 — do prompt masks predict the activations of generated tokens? Recall vs density/threshold."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import state, widgets
from app.views import masks as mask_views
from app.views import recall as views
from tda.common import progress
from tda.common.errors import TDAError

METHODS = ("tda", "tda_matched", "griffin", "static", "random", "oracle")
DENSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

st.title("Recall: does the prompt's mask cover what decoding needs?")
st.caption(
    "A short dense greedy generation records each generated token's activations. Every method "
    "builds one mask from the prompt only; recall is the fraction of the generated tokens' active "
    "neurons inside it, mass recall the fraction of their output norm |a_i|·‖W_down[:, i]‖. "
    "`oracle` (the generated tokens' own top neurons) is an upper reference, not a method."
)
lm = state.model_or_stop()
s = state.settings()
text = widgets.prompt_box("recall", lm)
c1, c2, c3 = st.columns([1, 3, 1])
new_tokens = c1.slider("tokens to generate", 4, 64, 16, 4, key="recall_tokens")
methods = c2.multiselect(
    "methods", METHODS, default=list(METHODS), key="recall_methods",
    help="\n\n".join([*map(mask_views.method_label, METHODS[:-1]),
                       "oracle — the generated tokens' own top neurons (an upper reference, not a method)"]))
truth = "tt" if s.rule == "cett" else "top"
c3.markdown(f"ground truth: **{'TT (CETT)' if truth == 'tt' else f'top {s.top_p:g}%'}**  \n(sidebar rule)")

params = (state.model_key(lm), text, new_tokens, tuple(methods), s.cett_target, s.top_p)
run = st.button("Run recall study", type="primary", key="recall_run", disabled=not methods)
if not methods:
    st.warning("Pick at least one method.")
if run and methods:
    ids = widgets.try_or_error(state.check_prompt, lm, text, prefix="Prompt: ")
    if ids is None:
        st.stop()  # the error replaces any stale hint or result below
    try:
        with st.status(f"Recall study: {new_tokens} dense tokens, then {len(methods)} methods × "
                       f"{len(DENSITIES)} points", expanded=True) as status, progress.use_sink(widgets.status_sink(status)):
            status.write("CETT calibration (shipped for the embedded model; otherwise one time per model)…")
            cal = state.calibration(state.model_key(lm), s.cett_target, lm)
            status.write(f"Generating {new_tokens} tokens densely with activation capture, scoring masks…")
            res = state.recall(params, cal, lm, densities=DENSITIES)
            status.update(label=f"Recall study done ({res['steps']} decode steps)", state="complete",
                          expanded=False)
        st.session_state["recall_result"] = (params, res)
    except TDAError as e:
        st.error(str(e))
        st.stop()

stored_params, res = widgets.stored_result(
    "recall_result", params, "Press **Run recall study** (a short generation; a few seconds on the embedded model).", "Run recall study"
)
view = views.recall_view(res, truth=truth, methods=stored_params[3])
st.markdown(f"**Prompt tokens:** {res['prompt_tokens']} · **generated:** {res['steps']} · "
            f"**continuation:** “{res['continuation'].strip()[:300]}”")
a, b = st.columns(2)
a.plotly_chart(view["figures"]["recall"], key="recall_chart")
b.plotly_chart(view["figures"]["mass_recall"], key="mass_recall_chart")
if "threshold" in view["figures"]:
    st.plotly_chart(view["figures"]["threshold"], key="threshold_chart")
st.subheader("At 50% density (TDA at its calibrated thresholds), mean over layers (one prompt)")
st.dataframe(pd.DataFrame(view["summary"]), hide_index=True, key="recall_summary")
