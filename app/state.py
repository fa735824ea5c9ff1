"""App state: cached model loading, bounded per-prompt capture cache, sidebar settings.

No maths here: everything numeric comes from :mod:`tda` and :mod:`analysis`. What is cached:

- models: one per (spec, dtype) for the whole server (``st.cache_resource``, at most 2). Loading
  runs in a worker thread so that the page can show the one-time conversion's progress lines
  (``load_model(progress=...)``) while it waits; the worker never calls Streamlit.
- captures: per (model, prompt, mode), all layers, bounded (``st.cache_data``: ``max_entries``
  and ``max_size``); ``st.cache_data`` returns a fresh copy to every caller, so two sessions
  never share a mutable result. The shared model is never mutated (hooks are context-local).
- CETT calibrations: per (model, target) (``st.cache_resource``; the disk cache of
  :func:`tda.masks.calibrate.load_or_calibrate` makes repeats instant).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import streamlit as st

from tda.common.errors import TDAError

MODEL_ENV = "TDA_APP_MODEL"  # default model spec (tests use tiny-llama)
THREADS_ENV = "TDA_APP_THREADS"  # torch intra-op threads for the server (default 1; 0 = torch's own)
MAX_TOKENS = 256  # the token limit of every prompt in the app
DTYPES = ("fp32", "bf16", "fp16", "gguf")  # gguf: the GGUF's own quantized blocks (tda.models.quant)
LOCAL = "local folder…"
RULES = {"cett": "CETT threshold", "topp": "top-p% per token"}


def apply_threads() -> None:
    """Set torch's intra-op threads from ``TDA_APP_THREADS`` (default 1; process-wide).

    The server runs every session's work in its own thread; with several sessions (or other
    programs) on a 2-core machine, two OpenMP threads per computation contend and spin: measured
    here under load, a 64-token capture took 10–50× longer with 2 threads than with 1
    (``benchmarks/app_update.py --threads``). ``TDA_APP_THREADS=0`` keeps torch's default.
    """
    n = os.environ.get(THREADS_ENV, "1").strip() or "1"
    if n.isdigit() and int(n) > 0:
        import torch

        if torch.get_num_threads() != int(n):
            torch.set_num_threads(int(n))


def release_free_memory() -> None:
    """After every page run (``main.py``): the heap's free memory back to the system
    (:func:`tda.common.memory.release_free_memory`; the one-time jobs otherwise leave the server's RSS
    high: 3.1 GB → 1.8 GB after the Neuron page's corpus pass on Gemma 3 270M)."""
    from tda.common.memory import release_free_memory as release

    release()


def default_model() -> str:
    from tda.models.load import DEFAULT_MODEL

    return os.environ.get(MODEL_ENV, "").strip() or DEFAULT_MODEL


def default_prompt() -> str:
    """The XSum demonstration article's first sentence (Study 1's input)."""
    from tda.common.data import xsum_demo

    article = xsum_demo()["article"]
    return article.split(". ")[0].strip().rstrip(".") + "."


@dataclass(frozen=True)
class Settings:
    """What the sidebar chose."""

    spec: str
    dtype: str
    rule: str  # "cett" or "topp" (analysis.activation kinds)
    cett_target: float
    top_p: float  # percent of neurons kept per token under the top-p rule


# --------------------------------------------------------------------------------------- models
class _ModelSlot:
    """One model load in a worker thread; ``messages`` collects the progress lines."""

    def __init__(self, spec: str, dtype: str):
        self.spec, self.dtype = spec, dtype
        self.messages: list[str] = []
        self.stamped: list[tuple[float, str]] = []  # (time.monotonic(), line) of each message
        self.started = time.monotonic()
        self.model = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        threading.Thread(target=self._run, name=f"load-{spec}", daemon=True).start()

    def _run(self) -> None:
        from tda.models.load import load_model

        try:
            self.model = load_model(self.spec, dtype=self.dtype, progress=self._note)
        except BaseException as e:  # re-raised in the script thread by result()
            self.error = e
        finally:
            self._done.set()

    def _note(self, msg: str) -> None:  # any thread; list appends are atomic
        self.stamped.append((time.monotonic(), msg))
        self.messages.append(msg)

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def result(self):
        self._done.wait()
        if self.error is not None:
            raise self.error
        return self.model


@st.cache_resource(max_entries=2, show_spinner=False)
def _model_slot(spec: str, dtype: str) -> _ModelSlot:
    return _ModelSlot(spec, dtype)


def load(spec: str, dtype: str):
    """The shared model for (spec, dtype), showing the load's progress; raises TDAError."""
    slot = _model_slot(spec, dtype)
    if not slot.wait(0.05):
        from app.views.loading import condensed, job_progress

        # one display: the overall fraction with an estimate, and the newest line (replaced, never a growing list)
        with st.status(f"Loading model `{spec}` ({dtype})…", expanded=True) as status:
            bar, newest = status.empty(), status.empty()
            while not slot.wait(0.25):
                frac, left = job_progress(list(slot.stamped), time.monotonic(), slot.started)
                if frac is not None:
                    bar.progress(frac, text=f"{frac:.0%} · {left}" if left else f"{frac:.0%}")
                if slot.messages:
                    newest.caption(slot.messages[-1])
            bar.empty()
            newest.empty()
            for line in condensed(list(slot.messages)):  # what each step took, for the record (collapsed)
                status.write(line)
            status.update(label=f"Model `{spec}` loaded", state="complete", expanded=False)
    try:
        return slot.result()
    except TDAError:
        _model_slot.clear(spec, dtype)  # a fixed folder can be retried
        raise
    except Exception as e:  # an unexpected library failure: still one line, no traceback
        _model_slot.clear(spec, dtype)
        first = (str(e).splitlines() or [""])[0]
        raise TDAError(f"could not load model '{spec}': {type(e).__name__}: {first}") from None


BACKGROUND_ENV = "TDA_APP_BACKGROUND"  # 0: no background jobs (the pages then run them when needed)


class _Background:
    """The embedded model's next one-time jobs, run in a daemon thread once its first page has shown:
    the sparse-FFN kernels (Generate) and the neuron corpus statistics (Neuron). A page that needs one
    of them while it runs shows its progress (:func:`wait_background`) instead of starting it again."""

    def __init__(self, lm):
        self.stamped: list[tuple[float, str]] = []
        self.started = time.monotonic()
        self.corpus_done = threading.Event()
        self.error: BaseException | None = None
        threading.Thread(target=self._run, args=(lm,), name="tda-background", daemon=True).start()

    def _note(self, msg: str) -> None:
        self.stamped.append((time.monotonic(), msg))

    def _run(self, lm) -> None:
        from tda.activations.neuron_corpus import cached_corpus_stats, load_or_compute_corpus_stats
        from tda.common.progress import format_seconds, use_sink

        try:
            with use_sink(self._note):
                try:
                    from tda.engine.kernel_build import build

                    build()
                except Exception:  # noqa: BLE001 - the Generate page reports a kernel failure itself
                    pass
                if cached_corpus_stats(lm) is None:
                    t0 = time.monotonic()

                    def progress(done: int, total: int) -> None:
                        el = time.monotonic() - t0
                        left = f" · ~{format_seconds(el / done * (total - done))} left" if done else ""
                        self._note(f"corpus activations (one time per model) · {done}/{total} "
                                   f"({done / total:.0%}){left}")

                    load_or_compute_corpus_stats(lm, progress=progress)
        except BaseException as e:  # noqa: BLE001 - the Neuron page computes (and reports) it itself
            self.error = e
        finally:
            self.corpus_done.set()
            release_free_memory()


_JOBS: dict[str, _Background] = {}  # per model key, for the server's life
_JOBS_LOCK = threading.Lock()


def start_background_jobs() -> None:
    """After a page run: once the sidebar's model is loaded, and it is the embedded one, start its next
    one-time jobs in the background (once per server), so that no later page waits for them from scratch."""
    if os.environ.get(BACKGROUND_ENV, "1").strip() == "0" or "last_load_s" not in st.session_state:
        return
    s = st.session_state.get("settings")
    if s is None or not s.spec:
        return
    slot = _model_slot(s.spec, s.dtype)
    if not slot.wait(0) or slot.model is None or slot.model.kind != "embedded":
        return
    with _JOBS_LOCK:
        if model_key(slot.model) not in _JOBS:
            _JOBS[model_key(slot.model)] = _Background(slot.model)


def wait_background(lm) -> None:
    """When the background jobs of ``lm`` are running: show their progress (one bar with the fraction,
    an estimate and the newest line) until the corpus statistics are done."""
    job = _JOBS.get(model_key(lm))
    if job is None or job.corpus_done.is_set():
        return
    from app.views.loading import job_progress

    with st.status("One-time preparation, already running in the background…", expanded=True) as status:
        bar, newest = status.empty(), status.empty()
        while not job.corpus_done.wait(0.5):
            frac, left = job_progress(list(job.stamped), time.monotonic(), job.started)
            if frac is not None:
                bar.progress(frac, text=f"{frac:.0%} · {left}" if left else f"{frac:.0%}")
            if job.stamped:
                newest.caption(job.stamped[-1][1])
        status.update(label="One-time preparation done", state="complete", expanded=False)


def model_key(lm) -> str:
    """A string that identifies a loaded model (cache keys)."""
    return f"{lm.spec}|{lm.model_id}|{lm.format_name}"


# ------------------------------------------------------------------------------------ captures
@st.cache_data(max_entries=24, max_size="768MB", show_spinner=False)
def capture(key: str, text: str, mode: str, _lm):
    """All layers of ``text`` in ``mode`` (sequence/isolated), cached per (model, text, mode)."""
    from tda.activations.capture import capture as _capture

    return _capture(_lm, text, None, mode, max_tokens=MAX_TOKENS)


@st.cache_resource(max_entries=8, show_spinner="Calibrating CETT thresholds (one time per model)…")
def calibration(key: str, target: float, _lm):
    from tda.common.progress import use_sink
    from tda.masks.calibrate import load_or_calibrate

    with use_sink(None):  # never into a page's status box from inside a cached function: stderr
        return load_or_calibrate(_lm, target=target)


@st.cache_resource(max_entries=8, show_spinner="Calibrating CETT thresholds (one time per model)…")
def _rule(key: str, kind: str, value: float, _lm):
    from analysis.activation import make_rule
    from tda.common.progress import use_sink

    with use_sink(None):  # as in calibration(): progress of a cached function goes to stderr
        return make_rule(_lm, kind, value)


def rule(lm, s: Settings | None = None):
    """The sidebar's activation rule (:class:`analysis.activation.ActivationRule`) for ``lm``."""
    s = s or settings()
    value = s.cett_target if s.rule == "cett" else s.top_p / 100.0
    return _rule(model_key(lm), s.rule, value, lm)


@st.cache_data(max_entries=16, show_spinner=False)
def similarity(key: str, samples: tuple, cett_target: float, _lm) -> dict:
    """Study 2 for ``samples`` (tuples ``(id, text, treatment)``), cached per model and samples."""
    from app.views.samples import similarity_result

    return similarity_result(_lm, [{"id": i, "text": t, "treatment": tr} for i, t, tr in samples], cett_target)


@st.cache_data(max_entries=8, show_spinner=False)
def recall(params: tuple, _calibration, _lm, densities: tuple) -> dict:
    """The recall study for ``params`` = (model key, prompt, new tokens, methods, CETT target, top-p %)."""
    from app.views.recall import recall_result

    _, text, new_tokens, methods, _, top_p = params
    return recall_result(_lm, text, _calibration, new_tokens=new_tokens, methods=methods,
                         top_p=top_p / 100.0, densities=densities)


def check_prompt(lm, text: str) -> list[int]:
    """Token ids of ``text``; raises BadInput when empty or beyond :data:`MAX_TOKENS`."""
    from tda.activations.capture import tokenize

    return tokenize(lm, text, max_tokens=MAX_TOKENS)


@st.cache_data(max_entries=64, show_spinner=False)
def random_text(key: str, n_tokens: int, seed: int, _lm) -> str:
    """``n_tokens`` seeded random single-token words (:func:`analysis.studies.random_word_text`)."""
    from analysis.studies import random_word_text

    return random_word_text(_lm, n_tokens, seed)[0]


@st.cache_resource(max_entries=4, show_spinner=False)
def static_scores(key: str, _lm):
    from tda.masks.build import model_static_scores

    return model_static_scores(_lm)


@st.cache_resource(max_entries=4, show_spinner=False)
def down_norms(key: str, _lm):
    from tda.masks.build import model_down_norms

    return model_down_norms(_lm)


# ------------------------------------------------------------------------------------- sidebar
def sidebar() -> Settings:
    """Draw the sidebar's settings (model, dtype, activation rule) and return them."""
    from tda.models.load import DEFAULT_MODEL, TINY_SPECS

    sb = st.sidebar
    sb.header("Settings")
    default = default_model()
    choices = [DEFAULT_MODEL, *TINY_SPECS, LOCAL]
    if default not in choices:  # a local path given through TDA_APP_MODEL
        choices.insert(0, default)
    pick = sb.selectbox(
        "Model", choices, index=choices.index(default), key="model_choice",
        help=f"{DEFAULT_MODEL} is embedded (works offline); tiny-* are random-weight test models.",
    )
    if pick == LOCAL:
        path = sb.text_input("Local model folder", key="model_path",
                             placeholder="/path/to/hf-model-folder",
                             help="a Hugging Face model folder under the cache, the working directory "
                                  "or a root listed in TDA_MODEL_ROOTS").strip()
        spec = ""
        if path:
            from tda.common.roots import check_model_folder

            try:
                spec = check_model_folder(path)
            except TDAError as e:
                sb.error(str(e))
    else:
        spec = pick
    dtype = sb.selectbox("dtype", DTYPES, key="dtype")
    rule = sb.radio("Activation rule", list(RULES), format_func=RULES.get, key="rule",
                    help="When a neuron counts as active for a token.")
    target = 0.2
    top_p = 10.0
    if rule == "cett":
        target = sb.slider("CETT target", 0.05, 0.5, 0.2, 0.05, key="cett_target",
                           help="Per-layer thresholds t_L with mean CETT(t_L) = target (paper: 0.2).")
    else:
        top_p = sb.slider("top-p (% of neurons per token)", 1.0, 100.0, 10.0, 1.0, key="top_p")
    return Settings(spec=spec, dtype=dtype, rule=rule, cett_target=float(target), top_p=float(top_p))


def settings() -> Settings:
    return st.session_state["settings"]


def model_or_stop():
    """The selected model, or an ``st.error`` and a stopped page when it cannot be loaded."""
    s = settings()
    if not s.spec:
        st.error("Enter a local model folder in the sidebar (or pick another model).")
        st.stop()
    try:
        t0 = time.perf_counter()
        lm = load(s.spec, s.dtype)
        st.session_state["last_load_s"] = time.perf_counter() - t0
        return lm
    except TDAError as e:
        st.error(f"Model: {e}")
        st.stop()
