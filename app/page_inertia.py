"""Page 1 — the inertia explorer: isolated vs sequence activations of one prompt, and the numbers."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import state, widgets
from app.views import inertia as views
from tda.common.errors import TDAError

st.title("Inertia explorer: tokens alone vs in a sequence")
st.caption(
    "Paper §3.4 (Study 1): each token fed **alone** (isolated, with BOS only) vs the prompt fed as "
    "**one sequence**. Claim 4 says that in a sequence the active neurons line up in vertical "
    "stripes shared by many tokens (\"flocking\"): which neurons fire is decided more by the "
    "preceding tokens than by the current token."
)
lm = state.model_or_stop()
s = state.settings()

text = widgets.prompt_box("inertia", lm)
b1, b2, _ = st.columns([1.2, 1.5, 2])
b1.button("Random tokens (control)", key="random_tokens", on_click=widgets.random_prompt, args=(lm,),
          help="Replace the prompt with randomly chosen tokens (the paper's panels c/d).")
b2.button("Reset to the XSum sentence", key="reset_prompt", on_click=widgets.set_prompt,
          args=(state.default_prompt(),))

n_layers, d_ff = lm.ffn.n_layers, lm.ffn.d_ff
c1, c2, c3 = st.columns([1, 2.2, 2.2])
layer = widgets.layer_input(c1, "inertia_layer", n_layers, min(6, n_layers - 1))
show = c2.radio("draw", list(views.SHOW), format_func=views.SHOW.get, key="inertia_show", horizontal=False,
                help="The active sets under the sidebar's rule make Claim 4's vertical stripes visible; "
                     "raw |a| shows the magnitudes whatever the rule.")
order = c3.radio("neuron order", list(views.ORDER), format_func=views.ORDER.get, key="inertia_order",
                 help="Sorting by how often each neuron fires in the sequence gathers the shared active "
                      "neurons (stripes) at the left; every panel uses the same order.")
d1, d2, d3 = st.columns([2.2, 1.6, 1.4])
lo, hi = d1.slider("columns shown (zoom, in the chosen order)", 0, d_ff, (0, d_ff), key="inertia_zoom")
width = d2.select_slider("max columns (pooling beyond)", [128, 256, 512, 1024, 2048], value=1024,
                         key="inertia_cols")
control_panels = d3.toggle("random-token panels", value=False, key="inertia_control",
                           help="Add the random-token control's isolated and sequence panels (the paper's c/d).")

key = state.model_key(lm)
seq = widgets.try_or_error(state.capture, key, text, "sequence", lm, prefix="Prompt: ")
if seq is None:
    st.stop()
if hi <= lo:
    st.error("The neuron range is empty: move the zoom slider apart.")
    st.stop()

try:
    control = state.random_text(key, views.control_length(len(seq.tokens), state.MAX_TOKENS), 0, lm)
    captures = {(src, mode): state.capture(key, t, mode, lm)
                for src, t in (("real", text), ("random", control)) for mode in ("sequence", "isolated")}
    rule = state.rule(lm, s)
    view = views.inertia_view(captures, rule, model_id=lm.model_id, layer=int(layer), neurons=(lo, hi),
                              max_cols=width, tokens=widgets.token_labels(lm, seq),
                              control_panels=control_panels, show=show, order=order)
except TDAError as e:
    st.error(str(e))
    st.stop()

st.plotly_chart(view["figure"], key="inertia_heatmap")

st.subheader("Study 1 numbers for this prompt")
n_control = len(view["result"]["sources"]["random"]["tokens"])
st.caption(f"Rule: {rule.label}. Control: {n_control} random single-token words (seed 0; the prompt's "
           f"length rounded up to a multiple of 16): “{control.strip()[:120]}…”")
m = view["row"]
c = st.columns(5)
c[0].metric("tokens", len(seq.tokens))
c[1].metric(f"hist. Jaccard L{layer}, sequence", f"{m['hist. Jaccard seq']:.3f}",
            **widgets.delta(m["Δ Jaccard"], "{:+.3f} vs isolated"))
c[2].metric(f"hist. Jaccard L{layer}, isolated", f"{m['hist. Jaccard iso']:.3f}")
c[3].metric(f"n50 L{layer}, sequence", m["n50 seq"], **widgets.delta(m["Δ n50"], "{:+d} vs isolated", inverse=True))
c[4].metric(f"self Jaccard L{layer}", f"{m['self Jaccard']:.3f}",
            help="A token's active set in the sequence vs alone (Jaccard).")
v = view["verdict"]
(st.success if v["verdict"] == "holds" else st.warning if v["verdict"] == "partly holds" else st.info)(
    f"**Claim 4 {v['verdict']}** for this prompt: it holds when A and B pass for both token sources, partly "
    f"when one does; a criterion passes in ≥ {v['majority']:.0%} of the layers."
)
st.caption(views.verdict_sentence(v, lm.model_id, example=text.strip() == state.default_prompt()),
           help="A and B are defined under the table below.")
st.dataframe(pd.DataFrame(view["criteria"]), hide_index=True, key="inertia_verdict")
st.caption(
    "A: in a sequence a token's set overlaps its history more and fewer neurons hold half the events. "
    "B: its set is closer to the previous token's than to its own set when alone. "
    "History Jaccard: overlap of a token's active set with the union of the previous 4 tokens' sets "
    "(chance: the same sets placed at random). n50: fewest neurons holding half of all activation "
    "events (smaller = more concentrated). J(prev): overlap with the previous token's set. "
    "Self Jaccard: a token's set in the sequence vs alone."
)
st.plotly_chart(view["curves"], key="inertia_curves")
tab_real, tab_rand = st.tabs(["this prompt, per layer", "random-token control, per layer"])
tab_real.dataframe(pd.DataFrame(view["tables"]["real"]), hide_index=True, key="inertia_table")
tab_rand.dataframe(pd.DataFrame(view["tables"]["random"]), hide_index=True, key="inertia_table_random")
