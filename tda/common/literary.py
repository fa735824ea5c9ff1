"""A second human-written evaluation set of another genre: literary prose from a public-domain book.

Source: *The Devil's Dictionary* by Ambrose Bierce (1911; written 1881–1906), a satirical
dictionary of prose definitions, anecdotes and verse, in the text of the Debian package
``dict-devil`` (1.0-13.1, file ``/usr/share/dictd/devil.dict.dz``: the Internet Wiretap edition
of 1993, public domain, copyright expired — see the package's ``copyright`` file). The file is
shipped byte for byte as ``data/devil.dict.dz`` (dictzip: gzip-readable), checked against
:data:`SOURCE_SHA256`, so the set does not depend on what is installed; an installed Debian copy
gives the same bytes (``tests/test_evalsets.py``).

Extraction (deterministic, no randomness): the entries after the preface, in book order; in each
entry the prose paragraphs (underscores of the italics removed) and the verse blocks (indented
lines, kept line by line); attribution lines (deeply indented) dropped. Consecutive paragraphs of
one initial letter are joined into passages of 80–200 words by
:func:`tda.common.passages.passages_of`; cloze items come from the same passages
(:func:`tda.common.passages.cloze_items`).
"""

from __future__ import annotations

import gzip
import hashlib
from functools import lru_cache
from pathlib import Path

from tda.common.errors import BadInput
from tda.common.passages import cloze_items, passages_of
from tda.common.paths import DATA_DIR

SOURCE_FILE = DATA_DIR / "devil.dict.dz"
SOURCE_SHA256 = "995ca92760d677965cb2780e78b808e982f9d49e8c12d795c1854476bbf13819"
DEBIAN_FILE = Path("/usr/share/dictd/devil.dict.dz")
FIRST_ENTRY = "ABASEMENT, n."
ATTRIBUTION_INDENT = 16  # a line indented this deep is an attribution ("Father Gassalasca Jape")

BIERCE_SOURCE = ("Ambrose Bierce, The Devil's Dictionary (1911): the Debian package dict-devil 1.0-13.1 "
                 "(/usr/share/dictd/devil.dict.dz, from the Internet Wiretap edition of 1993), shipped "
                 "unchanged as data/devil.dict.dz (sha256 " + SOURCE_SHA256[:12] + "…)")
BIERCE_LICENSE = "public domain (copyright expired; per the Debian dict-devil copyright file)"


def source_text(path: Path | str | None = None) -> str:
    """The dictionary's text (``path``: a ``devil.dict.dz``; default the shipped copy, hash checked)."""
    p = Path(path) if path is not None else SOURCE_FILE
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise BadInput(f"cannot read the Devil's Dictionary source {p}: {e.strerror}") from None
    if path is None and hashlib.sha256(raw).hexdigest() != SOURCE_SHA256:
        raise BadInput(f"{p} is not the shipped dict-devil file (its SHA-256 differs)")
    return gzip.decompress(raw).decode("latin-1")


def paragraphs(text: str) -> list[tuple[str, str]]:
    """``(initial letter, paragraph)`` of the entries after the preface, in order: prose paragraphs on
    one line, verse blocks line by line (newline-joined), attributions dropped."""
    body = text[text.index(FIRST_ENTRY):]
    blocks: list[list[str]] = []
    cur: list[str] = []
    for ln in body.split("\n"):
        if not ln.strip() or ln.startswith(" "):  # a blank or an indented line starts a new block
            if cur:
                blocks.append(cur)
            cur = []
            if not ln.strip():
                continue
        cur.append(ln)
    if cur:
        blocks.append(cur)
    out: list[tuple[str, str]] = []
    letter = "A"
    verse: list[str] = []

    def flush_verse():
        if verse:
            out.append((letter, "\n".join(verse)))
            verse.clear()

    for b in blocks:
        first = b[0]
        indent = len(first) - len(first.lstrip())
        if indent >= ATTRIBUTION_INDENT:
            flush_verse()
            continue
        if indent and len(b) == 1:  # one indented line: a line of verse
            verse.append(first.strip().replace("_", ""))
            continue
        flush_verse()
        para = " ".join(ln.strip() for ln in b).replace("_", "")
        if not indent and first[:1].isalpha() and first[:1].isupper() and ", " in first[:40]:
            head = first.split(",", 1)[0]
            if head.replace(" ", "").replace("-", "").replace("'", "").isupper():
                letter = head[0]
        if len(para.split()) >= 3 and para.rstrip()[-1:] not in ("", "*"):
            out.append((letter, para))
    flush_verse()
    return [(k, p) for k, p in out if not set(p.replace(" ", "")) <= set("abcdefghijklmnopqrstuvwxyz")]


def bierce_passages_from(text: str) -> list[dict]:
    """Passages ``{"id", "source", "text"}`` of the dictionary text (see the module doc)."""
    by_letter: dict[str, list[str]] = {}
    for letter, p in paragraphs(text):
        by_letter.setdefault(letter, []).append(p)
    return passages_of([(f"devil/{k}", ps) for k, ps in by_letter.items()], split=None, sep="\n")


@lru_cache(maxsize=1)
def bierce_passages() -> tuple[dict, ...]:
    """Every passage of the ``bierce-text`` set (from the shipped file)."""
    return tuple(bierce_passages_from(source_text()))


# a clause or sentence end, or the end of a line of verse
CLOZE_ENDS = r"[.!?;:,]?(?=\n)|[.!?;:,](?=[\s\"']|$)"
CLOZE_MIN_CONTEXT_WORDS = 20
CLOZE_MIN_LETTERS = 3


def bierce_cloze(passages: list[dict] | None = None) -> list[dict]:
    """The ``bierce-cloze`` items: the last word of a clause, sentence or verse line (>= 3 letters,
    used earlier in the passage, >= 20 words of context) — Bierce's entries are short, so the
    pydoc rule (sentence ends, >= 4 letters, 30 words) would give too few items."""
    return cloze_items(list(passages if passages is not None else bierce_passages()),
                       min_context_words=CLOZE_MIN_CONTEXT_WORDS, min_letters=CLOZE_MIN_LETTERS, ends=CLOZE_ENDS)
