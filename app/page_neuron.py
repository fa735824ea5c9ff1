"""Page 6 — why one neuron fires: its activations on the prompt and over the corpus, each method's
cut-off, what it writes to the vocabulary and which masks keep it. Linkable: ``/neuron?layer=L&neuron=N``."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import state, widgets
from app.views import neuron as views
from tda.common.errors import BadInput, TDAError

LAYER, NEURON, PEAKS = "neuron_layer", "neuron_index", "neuron_peaks"


@st.cache_data(max_entries=24, show_spinner=False)
def trace(key: str, text: str, layer: int, _lm):
    """``(capture of layer, act(gate) or None)`` of the prompt (:func:`analysis.neuron.prompt_trace`)."""
    from analysis.neuron import prompt_trace

    return prompt_trace(_lm, text, layer, max_tokens=state.MAX_TOKENS)


@st.cache_resource(max_entries=4, show_spinner="Calibrating TEAL/CATS input thresholds (one time per model)…")
def input_thresholds(key: str, _lm):
    from tda.masks.input_thresholds import load_or_calibrate_inputs

    return load_or_calibrate_inputs(_lm)


def corpus_stats(lm):
    """The corpus statistics, computed here with a progress bar the first time (then cached)."""
    from tda.activations.neuron_corpus import cached_corpus_stats, load_or_compute_corpus_stats

    stats = cached_corpus_stats(lm)
    if stats is None:
        state.wait_background(lm)  # the embedded model's pass started in the background: its progress
        stats = cached_corpus_stats(lm)
    if stats is None:
        import time

        from app.views.loading import format_left

        bar = st.progress(0.0, text="Activations over the shipped corpus (one time per model)…")
        t0 = time.monotonic()

        def progress(done: int, total: int) -> None:
            left = format_left((time.monotonic() - t0) / done * (total - done)) if done else ""
            bar.progress(done / total, text=f"Corpus activations (one time per model): {done}/{total} "
                                            f"({done / total:.0%}) · {left}")

        stats = load_or_compute_corpus_stats(lm, progress=progress)
        bar.empty()
    return stats


def _query_int(name: str, default: int) -> int:
    raw = st.query_params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        st.warning(f"Query parameter {name}={raw!r} is not an integer; using {default}.")
        return default


def _select_clicked() -> None:
    """Chart callback: a click on a neuron's bar selects that neuron."""
    picked = views.selected_point(st.session_state.get(PEAKS))
    if picked is not None:
        st.session_state[NEURON] = picked


st.title("Neuron: why it fires")
st.caption(
    "One FFN neuron i of layer L: its activation a = act(gate)·up (the down projection's input, "
    "TransformerLens `hook_post`) on the prompt's tokens, the corpus contexts that excite it most, where "
    "each method's cut-off falls in its corpus distribution, the tokens it writes towards, and which "
    "masks keep it. Link to it as `/neuron?layer=L&neuron=N`."
)
lm = state.model_or_stop()
s = state.settings()
key = state.model_key(lm)
n_layers, d_ff = lm.ffn.n_layers, lm.ffn.d_ff
text = widgets.prompt_box("neuron", height=80)

if LAYER not in st.session_state:  # first run: the URL's choice, else the middle layer's busiest neuron
    st.session_state[LAYER] = _query_int("layer", n_layers // 2)
    default = None
    if "neuron" not in st.query_params and 0 <= st.session_state[LAYER] < n_layers:
        with st.spinner("Finding an active neuron…"):
            cap0 = widgets.try_or_error(trace, key, text, st.session_state[LAYER], lm, prefix="Prompt: ")
        if cap0 is not None:
            default = views.layer_peaks(cap0[0].acts[0], 1)[0][0]
    st.session_state[NEURON] = _query_int("neuron", default or 0)

c1, c2, c3 = st.columns([1, 1, 2])
layer = int(c1.number_input(f"layer (0..{n_layers - 1})", step=1, key=LAYER))
neuron = int(c2.number_input(f"neuron (0..{d_ff - 1})", step=1, key=NEURON))
density = c3.slider("density of GRIFFIN, static, TEAL and CATS", 0.05, 0.95, 0.5, 0.05, key="neuron_density")
try:
    from analysis.neuron import check_neuron

    check_neuron(layer, neuron, n_layers, d_ff)
except BadInput as e:
    st.error(f"{e}. Pick a layer in 0..{n_layers - 1} and a neuron in 0..{d_ff - 1}.")
    st.stop()
st.query_params.update({"layer": str(layer), "neuron": str(neuron)})

tr = widgets.try_or_error(trace, key, text, layer, lm, prefix="Prompt: ")
if tr is None:
    st.stop()
try:
    from analysis.neuron import neuron_profile

    cett_target = s.cett_target if s.rule == "cett" else 0.2
    prof = neuron_profile(lm, layer, neuron, text, cett_target=cett_target, density=density, trace=tr,
                          calibration=state.calibration(key, cett_target, lm), inputs=input_thresholds(key, lm),
                          corpus=corpus_stats(lm), max_tokens=state.MAX_TOKENS)
except TDAError as e:
    st.error(str(e))
    st.stop()

acts = prof["prompt"]["activation"]
cuts, beyond = prof["cutoffs"], prof["corpus"]["fraction_beyond"]
m = st.columns(4)
m[0].metric("peak |a| on the prompt", f"{max(abs(v) for v in acts):.4g}")
m[1].metric("CETT/TT cut-off on |a|", f"{cuts['cett']['value']:.4g}",
            help=f"t_L / ‖W_down[:, i]‖ = {cuts['cett']['t_layer']:.4g} / {cuts['cett']['down_norm']:.4g} "
                 f"(CETT target {prof['cett_target']:g})")
m[2].metric("corpus tokens beyond it", f"{beyond['cett']:.1%}")
m[3].metric("prompt tokens beyond it", f"{prof['masks']['tt']['fraction']:.0%}")

left, right = st.columns(2, gap="medium")
left.plotly_chart(views.prompt_figure(prof), key="neuron_prompt_chart")
right.plotly_chart(views.histogram_figure(prof), key="neuron_hist")
st.caption(
    "CETT/TT and TEAL threshold the same quantity, |a|; CATS thresholds |act(gate)| before the product "
    "with up, so its cut-off is drawn on the gate's own distribution (dashed lines at ± each cut-off). "
    "Histograms are rebuilt from each neuron's corpus quantiles (log scale)."
)

st.subheader("Top-activating contexts in the corpus")
tab_top, tab_bottom = st.tabs(["highest a", "lowest a (most negative)"])
for tab, which in ((tab_top, "top"), (tab_bottom, "bottom")):
    tab.dataframe(pd.DataFrame(views.context_rows(prof, which)), hide_index=True, key=f"neuron_ctx_{which}",
                  column_config={"before": st.column_config.TextColumn(width="large"),
                                 "token": st.column_config.TextColumn(width="small"),
                                 "after": st.column_config.TextColumn(width="large")})

left, right = st.columns(2, gap="medium")
left.subheader("Which masks keep it for this prompt")
left.dataframe(pd.DataFrame(views.mask_rows(prof)), hide_index=True, key="neuron_masks",
               column_config={"why": st.column_config.TextColumn(width="large")})
right.plotly_chart(views.vocab_figure(prof), key="neuron_vocab")
right.caption("The unembedding applied to W_down[:, i] scaled by the final norm's weight γ (Gemma's RMSNorm: "
              "1 + w), per unit of a; the norm's division by the residual's size is left out.")
st.plotly_chart(views.peaks_figure(views.layer_peaks(tr[0].acts[0]), layer, neuron), key=PEAKS,
                on_select=_select_clicked, selection_mode="points")
