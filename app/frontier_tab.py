"""The quality × speed frontier tab of the Generate page: choose a stored `tda frontier` run (or
run a small one here), the methods to plot, values or paired differences from dense; the figure
marks the Pareto set, the table and the verdicts give the numbers."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import state
from app.views import frontier as views
from app.views.generate import method_label, sparse_methods
from tda.common.errors import TDAError


def render(lm) -> None:
    st.caption(
        "Decode speedup vs our dense (each variant timed right beside dense; median over rounds with a 95% "
        "interval) against held-out perplexity, agreement, cloze and multiple-choice accuracy and free-running "
        "generation quality, with 95% bootstrap intervals and paired differences from dense (the same texts for "
        "both arms); rings mark the Pareto set, the dashed segment runs to each point's bytes ceiling. "
        "Full runs: `tda frontier`."
    )
    fkey = ("frontier", state.model_key(lm))
    here = st.session_state.get("fr_result")
    runs = views.stored_runs(lm.model_id, lm.format_name)
    mine = [r for r in runs if r[1]["meta"]["model"].get("model_id") == lm.model_id]
    methods = sparse_methods()
    with st.expander("Run a small frontier here (4 texts, 8 cloze and 8 multiple-choice items, 1 timed round)",
                     expanded=not mine and here is None):
        f1, f2 = st.columns(2)
        fr_methods = f1.multiselect("methods", methods, default=[m for m in ("tt", "griffin") if m in methods][:2],
                                    format_func=method_label, key="fr_methods")
        fr_dens = f2.multiselect("densities", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], default=[0.3, 0.5, 0.7],
                                 key="fr_densities")
        if st.button("Run frontier", key="fr_run"):
            try:
                with st.status("Timing and scoring every method at every density…", expanded=True) as status:
                    res = views.small_frontier(lm, fr_methods, sorted(fr_dens), progress=status.write)
                    status.update(label="Done", state="complete", expanded=False)
                st.session_state["fr_result"] = here = (fkey, res)
            except TDAError as e:
                st.error(str(e))
    choices = ([("run on this page", here[1])] if here is not None and here[0] == fkey else []) + runs
    if not choices:
        st.info(f"No frontier result for {lm.model_id} in {views.results_dir()}: run `tda frontier --model "
                f"{lm.spec}` or a small one above.")
        return
    if not mine and len(choices) == len(runs):
        st.info(f"No frontier result for {lm.model_id} in {views.results_dir()}; showing other models' runs "
                f"(run `tda frontier --model {lm.spec}` or a small one above).")
    c1, c2, c3 = st.columns([3, 3, 2])
    i = c1.selectbox("stored run", range(len(choices)), key="fr_run_choice",
                     format_func=lambda k: choices[k][0] if k == 0 and choices[0][0] == "run on this page"
                     else views.run_label(*choices[k]))
    source, result = choices[i]
    all_methods = views.result_methods(result)
    shown = c2.multiselect("methods to plot", all_methods, default=all_methods, format_func=method_label,
                           key=f"fr_plot_methods_{source}")
    deltas = c3.radio("y axes", ["values", "paired Δ vs dense"], key="fr_deltas", horizontal=True) != "values"
    fv = views.frontier_view(result, shown, deltas=deltas)
    st.caption(f"From {source}: {fv['caption']}")
    st.plotly_chart(fv["figure"], key="gen_frontier_chart")
    st.dataframe(pd.DataFrame(fv["rows"]), hide_index=True, key="gen_frontier_table")
    if fv["verdicts"]:
        st.subheader("Verdicts")
        st.caption("Per pair of methods at each density: A beats B when A is separated-better on one axis (paired "
                   "quality interval excludes 0, or speed intervals apart) and not separated-worse on the other.")
        st.dataframe(pd.DataFrame(fv["verdicts"]), hide_index=True, key="gen_frontier_verdicts")
