"""Small shared UI pieces (no maths): the shared prompt box, error display, token labels."""

from __future__ import annotations

import streamlit as st

from app import state
from tda.common.errors import TDAError

PROMPT = "prompt"  # the prompt shared by pages 1, 2, 4 and 5 (a plain session key, not a widget's)


def _keep_prompt(widget_key: str) -> None:
    st.session_state[PROMPT] = st.session_state[widget_key]


def prompt_box(page: str, label: str = "Prompt", height: int = 100) -> str:
    """An editable prompt shared across pages (each page has its own widget)."""
    st.session_state.setdefault(PROMPT, state.default_prompt())
    key = f"prompt_{page}"
    st.session_state[key] = st.session_state[PROMPT]
    return st.text_area(
        f"{label} (at most {state.MAX_TOKENS} tokens)", key=key, height=height,
        on_change=_keep_prompt, args=(key,),
    )


def set_prompt(text: str) -> None:
    """Replace the shared prompt (call from a button's on_click)."""
    st.session_state[PROMPT] = text


def try_or_error(fn, *args, prefix: str = "", **kw):
    """``fn(*args, **kw)``, or ``None`` after an ``st.error`` with the TDAError's one line."""
    try:
        return fn(*args, **kw)
    except TDAError as e:
        st.error(f"{prefix}{e}")
        return None


def token_labels(lm, cap) -> list[str]:
    """Readable token strings (each id decoded on its own) for axes and tables."""
    return [lm.tokenizer.decode([i]) for i in cap.token_ids]


def random_prompt(lm) -> None:
    """Button callback: swap in random single-token words (the paper's control), as many tokens
    as the current prompt has (16 when it has none), a new seed at every press."""
    from tda.activations.capture import tokenize

    try:
        n = len(tokenize(lm, st.session_state.get(PROMPT, ""), max_tokens=state.MAX_TOKENS))
        n = max(1, n - (1 if lm.tokenizer.bos_token_id is not None else 0))
    except TDAError:
        n = 16
    seed = st.session_state.get("random_seed", 0) + 1
    st.session_state["random_seed"] = seed
    set_prompt(state.random_text(state.model_key(lm), n, seed, lm))


def stored_result(key: str, params, hint: str, run_label: str):
    """``(params, result)`` last stored under ``st.session_state[key]`` by a run button.

    With nothing stored yet, shows ``hint`` and stops the page; when the stored run was made with
    other ``params`` than the page's current ones, warns that pressing ``run_label`` updates it.
    """
    stored = st.session_state.get(key)
    if stored is None:
        st.info(hint)
        st.stop()
    stored_params, result = stored
    if stored_params != params:
        st.warning(f"The prompt or settings changed since the last run: press **{run_label}** to update.")
    return stored_params, result
