"""Page 3 — the 13-sample similarity study (paper appendix D) with editable samples and verdicts."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import state
from app.views import samples as views
from tda.common.errors import TDAError

st.title("13 samples: which inputs activate similar neurons?")
st.caption(
    "Paper appendix D: 13 short inputs, their activation patterns compared pairwise. The paper "
    "reads five observations (a)–(e) off its heatmap; here each is a set of strict inequalities "
    "checked automatically (see `analysis.verdicts`). Edit the samples: everything recomputes."
)
lm = state.model_or_stop()
s = state.settings()
key = state.model_key(lm)

if "samples_df" not in st.session_state:
    from tda.common.data import load_samples

    st.session_state["samples_df"] = pd.DataFrame(load_samples())[["id", "text", "treatment"]]
version = st.session_state.setdefault("samples_version", 0)  # a new editor (no pending edits) after a reset


def _set_samples(df) -> None:
    st.session_state["samples_df"] = df.reset_index(drop=True)
    st.session_state["samples_version"] = st.session_state.get("samples_version", 0) + 1


base = st.session_state["samples_df"]
edited = st.data_editor(
    base, num_rows="dynamic", hide_index=True, key=f"samples_editor_{version}",
    column_config={"id": st.column_config.NumberColumn("id", step=1, required=True),
                   "text": st.column_config.TextColumn("text", width="large", required=True),
                   "treatment": st.column_config.TextColumn("treatment")},
)
cleared = views.cleared_cells(base, edited)
if cleared:  # never silently: a Ctrl+A, Delete in the grid empties every selected cell
    cols = sorted({c for _, c in cleared}, key=views.COLUMNS.index)
    w1, w2 = st.columns([3, 1])
    w1.warning(f"**{len(cleared)} cell(s) emptied** in the samples ({', '.join(cols)}), e.g. by Ctrl+A then "
               "Delete: rows without a text are an error, empty treatments lose their labels.")
    w2.button("Restore the emptied cells", key="samples_restore", on_click=_set_samples,
              args=(views.restore_cells(base, edited, cleared),))
c1, c2, c3 = st.columns(3)
MEASURES = {"cosine": "cosine of mean |a|", "spearman": "Spearman of mean |a|",
            "jaccard_tda": "Jaccard of TDA masks", "jaccard_griffin": "Jaccard of Griffin masks"}
measure = c1.selectbox("similarity measure", list(MEASURES), format_func=MEASURES.get, key="sim_measure")
groups = views.layer_groups(lm.ffn.n_layers)
group = c2.selectbox("layers", list(groups), index=list(groups).index("all"), key="sim_group",
                     format_func=lambda g: f"{g} ({groups[g][0]}–{groups[g][-1]})")
if c3.button("Reset to the paper's 13 samples", key="samples_reset"):
    from tda.common.data import load_samples

    _set_samples(pd.DataFrame(load_samples())[["id", "text", "treatment"]])
    st.rerun()

try:
    samples = views.samples_from_table(edited.to_dict("records"))
    with st.spinner("Capturing the samples and computing similarities…"):
        result = state.similarity(key, tuple((d["id"], d["text"], d["treatment"]) for d in samples),
                                  s.cett_target, lm)
except TDAError as e:
    st.error(f"Samples: {e}")
    st.stop()

view = views.similarity_view(result, measure, group)
st.plotly_chart(view["figure"], key="similarity_heatmap")

st.subheader("Observations (a)–(e)")
if result["observations"] is None:
    st.info("The verdicts need samples with ids 1..13 (the paper's numbering); edit the ids to compare.")
else:
    n_hold = sum(r["holds"] for r in view["verdicts"])
    st.markdown(f"**{n_hold} of 5** observations hold for *{MEASURES[measure]}* over the *{group}* layers.")
    st.dataframe(pd.DataFrame(view["verdicts"]), hide_index=True, key="verdict_table")
    with st.expander("All measures × layer groups (blue: holds, vermillion: fails; text: margin)"):
        st.plotly_chart(view["grid"], key="verdict_grid")
st.caption(f"Settings: {result['settings']['vector']}; TDA masks {result['settings']['tda_mask']}; "
           f"Griffin density {result['settings']['griffin_density']}; BOS {result['settings']['bos']}.")
