"""Small shared UI pieces (no maths): the shared prompt box, error display, token labels."""

from __future__ import annotations

import streamlit as st

from app import state
from app.views.captures import token_label
from tda.common.errors import TDAError

PROMPT = "prompt"  # the prompt shared by pages 1, 2, 4 and 5 (a plain session key, not a widget's)


def _keep_prompt(widget_key: str) -> None:
    st.session_state[PROMPT] = st.session_state[widget_key]


def prompt_box(page: str, lm=None, label: str = "Prompt", height: int = 100) -> str:
    """An editable prompt shared across pages (each page has its own widget).

    With ``lm``: its token count under the box after every edit, and over the limit a button that
    truncates the prompt to :data:`app.state.MAX_TOKENS` tokens.
    """
    st.session_state.setdefault(PROMPT, state.default_prompt())
    key = f"prompt_{page}"
    st.session_state[key] = st.session_state[PROMPT]
    text = st.text_area(
        f"{label} (at most {state.MAX_TOKENS} tokens)", key=key, height=height,
        on_change=_keep_prompt, args=(key,),
    )
    if lm is not None and text.strip():
        n = len(lm.tokenizer(text, add_special_tokens=True).input_ids)
        if n <= state.MAX_TOKENS:
            st.caption(token_count_note(lm, text, n))
        else:
            a, b = st.columns([3, 1.2])
            a.caption(f"**{n} tokens: {n - state.MAX_TOKENS} over the limit of {state.MAX_TOKENS}.**")
            b.button(f"Truncate to {state.MAX_TOKENS} tokens", key=f"truncate_{page}", on_click=truncate_prompt,
                     args=(lm, text))
    return text


def token_count_note(lm, text: str, n_with_special: int) -> str:
    """The prompt's token count as every page shows it (the tokens studied, special tokens such as BOS
    left out), and how much of the limit it uses (which counts the special tokens too)."""
    k = len(lm.tokenizer(text, add_special_tokens=False).input_ids)
    extra = n_with_special - k
    used = f"{n_with_special} of the {state.MAX_TOKENS}-token limit"
    return f"{k} tokens" + (f" (+ {extra} special: {used})" if extra else f" ({used})")


def truncate_prompt(lm, text: str) -> None:
    """Button callback: keep the prompt's first tokens, as many as fit the limit once re-tokenised
    (special tokens included; decoding can merge or split pieces, so the cut is checked)."""
    tok = lm.tokenizer
    special = set(tok.all_special_ids)
    ids = [i for i in tok(text, add_special_tokens=True).input_ids if i not in special]
    k = state.MAX_TOKENS
    while k > 0:
        head = tok.decode(ids[:k])
        over = len(tok(head, add_special_tokens=True).input_ids) - state.MAX_TOKENS
        if over <= 0:
            break
        k -= over
    set_prompt(head if k > 0 else "")


def layer_input(col, key: str, n_layers: int, default: int) -> int:
    """A layer number box; a number outside ``0..n_layers-1`` is refused with an error (page stops)."""
    layer = int(col.number_input(f"layer (0..{n_layers - 1})", value=int(default), step=1, key=key))
    if not 0 <= layer < n_layers:
        st.error(f"layer {layer} out of range: this model has layers 0..{n_layers - 1}.")
        st.stop()
    return layer


def delta(value, fmt: str, *, inverse: bool = False, tol: float = 5e-4) -> dict:
    """``st.metric`` keyword arguments for a change: no arrow and grey when it rounds to zero."""
    if abs(value) < tol:
        return {"delta": "no change" + fmt.split("}", 1)[1], "delta_color": "off", "delta_arrow": "off"}
    return {"delta": fmt.format(value), "delta_color": "inverse" if inverse else "normal"}


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
    """Readable token strings (:func:`token_label`) of a capture, for axes and tables."""
    return [token_label(lm.tokenizer, i) for i in cap.token_ids]


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


def status_sink(box):
    """A progress sink (:func:`tda.common.progress.use_sink`) writing into an ``st.status`` box.

    A line that cannot be written (Streamlit refuses writes to an outer container from inside a
    cached function) is dropped: progress must never break the computation it reports on.
    """
    def write(msg: str) -> None:
        try:
            box.write(msg)
        except Exception:  # noqa: BLE001
            pass

    return write
