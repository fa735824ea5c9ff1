"""Plain-text output shared by commands (no torch, no rich)."""

from __future__ import annotations

PROMPT_SHOWN = 400  # characters of a prompt echoed before the continuation


def generation_block(prompt: str, continuation: str, *, index: int | None = None, n_tokens: int | None = None) -> str:
    """The prompt and its continuation, clearly apart::

        === prompt 0
        The city
        === continuation (12 tokens)
         was founded in ...
    """
    tag = "" if index is None else f" {index}"
    shown = prompt if len(prompt) <= PROMPT_SHOWN else (
        prompt[: PROMPT_SHOWN // 2] + f" [... {len(prompt) - PROMPT_SHOWN} characters ...] " + prompt[-PROMPT_SHOWN // 2:])
    count = "" if n_tokens is None else f" ({n_tokens} tokens)"
    return f"=== prompt{tag}\n{shown}\n=== continuation{tag}{count}\n{continuation}"
