"""Passages and cloze items from prose: the text machinery the evaluation sets share
(:mod:`tda.common.evalsets` builds the sets, :mod:`tda.common.literary` the literary one)."""

from __future__ import annotations

import re
from collections.abc import Callable

MIN_WORDS, MAX_WORDS = 80, 200
MIN_PARAGRAPH_WORDS = 12
CODE_CHARS = set("()[]{}=<>|_")
MAX_CODE_SHARE = 0.03
CLOZE_MIN_CONTEXT_WORDS = 30


def prose_paragraphs(text: str) -> list[str]:
    """The paragraphs of ``text`` that read as prose, each on one line: blank-line separated, not
    indented (code and grammar blocks are), no heading underline, >= 12 words, ending like a
    sentence, and at most 3% code characters. A leading bullet is dropped."""
    out = []
    for para in re.split(r"\n[ \t]*\n", text):
        lines = [ln for ln in para.split("\n") if ln.strip()]
        if not lines or lines[0].startswith((" ", "\t", ">>>")):
            continue
        if any(set(ln.strip()) <= set("*=-~^") for ln in lines):  # a heading or table rule
            continue
        t = re.sub(r"^[*-] ", "", " ".join(ln.strip() for ln in lines))
        if len(t.split()) < MIN_PARAGRAPH_WORDS or not re.search(r"[.:;]$", t):
            continue
        if sum(c in CODE_CHARS for c in t) / len(t) > MAX_CODE_SHARE:
            continue
        out.append(t)
    return out


def passages_of(sources: list[tuple[str, str | list[str]]], *, min_words: int = MIN_WORDS,
                max_words: int = MAX_WORDS, split: Callable[[str], list[str]] | None = prose_paragraphs,
                sep: str = " ") -> list[dict]:
    """Consecutive prose paragraphs of each source joined (with ``sep``) into ``{"id", "source",
    "text"}`` passages of ``min_words``–``max_words`` words (a longer paragraph stands alone, cut at
    ``max_words`` on a sentence end when one exists; a shorter remainder is dropped); repeats
    dropped. ``split``: how a source's text becomes paragraphs (None: each source already is a list
    of paragraphs)."""
    out = []
    for src, text in sources:
        buf: list[str] = []
        for p in (split(text) if split is not None else text):
            if buf and len(sep.join(buf + [p]).split()) > max_words:
                if len(sep.join(buf).split()) >= min_words:
                    out.append({"source": src, "text": sep.join(buf)})
                buf = []
            buf.append(p)
            joined = sep.join(buf)
            if len(joined.split()) >= max_words:
                out.append({"source": src, "text": _cut(joined, max_words)})
                buf = []
        if buf and len(sep.join(buf).split()) >= min_words:
            out.append({"source": src, "text": sep.join(buf)})
    seen: set[str] = set()
    out = [r for r in out if not (r["text"] in seen or seen.add(r["text"]))]  # first copy of a repeated text
    for i, r in enumerate(out):
        r["id"] = f"p{i:05d}"
    return out


def _cut(text: str, max_words: int) -> str:
    words = text.split()[:max_words]
    t = " ".join(words)
    end = max(t.rfind(". "), t.rfind(".\n"))
    return t[: end + 1] if end > len(t) // 2 else t


SENTENCE_END = r"\.(?=\s|$)"


def cloze_items(passages: list[dict], *, min_context_words: int = CLOZE_MIN_CONTEXT_WORDS, min_letters: int = 4,
                ends: str = SENTENCE_END) -> list[dict]:
    """LAMBADA-style items ``{"id", "passage", "context", "target"}`` from ``passages``: for every
    ``<word><end>`` (``ends``: a regex after the word, by default a sentence's full stop) with >=
    ``min_context_words`` words before it, where ``word`` is alphabetic, >= ``min_letters`` letters
    and occurs earlier in the context (case-insensitive)."""
    out = []
    for p in passages:
        t = p["text"]
        for m in re.finditer(rf"(?<=\s)([A-Za-z]{{{min_letters},}})(?:{ends})", t):
            ctx, word = t[: m.start()].rstrip(), m.group(1)
            if len(ctx.split()) < min_context_words:
                continue
            if not re.search(rf"\b{re.escape(word)}\b", ctx, flags=re.IGNORECASE):
                continue
            out.append({"id": f"{p['id']}-{m.start()}", "passage": p["id"], "context": ctx, "target": word})
    return out
