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
    ran = False
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
                ran = True
            except TDAError as e:
                st.error(str(e))
    choices = views.run_choices(here[1] if here is not None and here[0] == fkey else None, runs)
    if not choices:
        st.info(f"No frontier result for {lm.model_id} in {views.results_dir()}: run `tda frontier --model "
                f"{lm.spec}` or a small one above.")
        return
    if not mine and not (here is not None and here[0] == fkey):
        st.info(f"No frontier result for {lm.model_id} in {views.results_dir()}; showing other models' runs "
                f"(run `tda frontier --model {lm.spec}` or a small one above).")
    ids = [c[0] for c in choices]
    if ran or st.session_state.get("fr_run_choice") not in ids:
        st.session_state["fr_run_choice"] = ids[0]  # a new run on the page is what is shown, and named
    labels = {c[0]: c[1] for c in choices}
    c1, c2 = st.columns([3, 3])
    source = c1.selectbox("frontier run shown", ids, key="fr_run_choice", format_func=labels.get)
    result = next(c[2] for c in choices if c[0] == source)
    all_methods = views.result_methods(result)
    default = views.pareto_methods(result) or all_methods
    shown = c2.multiselect("methods to plot (default: those on the Pareto set)", all_methods, default=default,
                           format_func=method_label, key=f"fr_plot_methods_{source}")
    c3, c4, c5 = st.columns([2, 2, 2])
    deltas = c3.radio("y axes", ["values", "paired Δ vs dense"], key="fr_deltas", horizontal=True) != "values"
    dens = views.result_densities(result)
    per_density = c4.toggle("one chart per density", value=len(dens) > 1, key=f"fr_per_density_{source}",
                            disabled=len(dens) < 2)
    corpora = views.result_corpora(result)
    corpus = c5.radio("corpus", corpora, key=f"fr_corpus_{source}", horizontal=True) if corpora else None
    cross = views.cross_verdict_rows(result, shown)
    if cross:
        n_hold = sum(v["status"] == "holds" for v in cross)
        st.subheader("Verdicts across corpora")
        st.caption(f"{n_hold} of {len(cross)} verdicts hold on every corpus (the same decided verdict on each); "
                   "the others are corpus-dependent (each corpus's paired Δ listed) or not separated anywhere.")
        st.dataframe(pd.DataFrame(cross), hide_index=True, key="gen_frontier_cross")
    parts = [None] if not per_density or len(dens) < 2 else dens
    fv = None
    for j, d in enumerate(parts):
        fv = views.frontier_view(result, shown, deltas=deltas, density=d, corpus=corpus)
        if j == 0:
            st.caption(f"Shown: {labels[source]} — {fv['caption']}")
        st.plotly_chart(fv["figure"], key=f"gen_frontier_chart_{j}")
    fv = views.frontier_view(result, shown, deltas=deltas, corpus=corpus)
    st.dataframe(pd.DataFrame(fv["rows"]), hide_index=True, key="gen_frontier_table")
    if fv["verdicts"]:
        st.subheader("Verdicts" + (f" ({corpus})" if corpus else ""))
        st.caption("Per pair of methods at each density: A beats B when A is separated-better on one axis (paired "
                   "quality interval excludes 0, or speed intervals apart) and not separated-worse on the other; "
                   "speed intervals from fewer than 3 rounds are n/a and separate nothing.")
        st.dataframe(pd.DataFrame(fv["verdicts"]), hide_index=True, key="gen_frontier_verdicts")
