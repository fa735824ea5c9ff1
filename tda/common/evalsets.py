"""Evaluation sets: human-written English read at run time from the Python installation, plus the
small shipped sets (for tests and quick runs).

The large sets come from the documentation that ships with every CPython (PSF License): the
Language Reference sections in :mod:`pydoc_data.topics` (what ``help("assignment")`` shows) and
the docstrings of the standard library's public modules, classes and functions (read with
:mod:`ast`, nothing is imported). Extraction is deterministic: sources in sorted order, prose
paragraphs only (code blocks, grammar, tables and short lines dropped), consecutive paragraphs of
one source joined into passages of :data:`MIN_WORDS`–:data:`MAX_WORDS` words, and a SHA-256 over
the result. The exact text depends on the Python version (it is recorded with the hash).

- ``pydoc-text``: the passages (perplexity, agreement, free-running generation) — the default.
- ``bierce-text`` / ``bierce-cloze``: literary prose of another genre (:mod:`tda.common.literary`:
  Ambrose Bierce's *The Devil's Dictionary*, public domain, from the Debian package dict-devil).
- ``pydoc-cloze``: LAMBADA-style last-word prediction derived from the same passages: the context
  is a passage up to the last word of one of its sentences, the target that word (alphabetic,
  >= 4 letters, and used earlier in the context, so the broad context predicts it).
"""

from __future__ import annotations

import ast
import hashlib
import re
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tda.common.errors import BadInput

MIN_WORDS, MAX_WORDS = 80, 200
MIN_PARAGRAPH_WORDS = 12
CODE_CHARS = set("()[]{}=<>|_")
MAX_CODE_SHARE = 0.03
CLOZE_MIN_CONTEXT_WORDS = 30
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "ensurepip"}

PYDOC_SOURCE = ("CPython {py} documentation shipped with the interpreter: the Language Reference sections "
                "of pydoc_data.topics and the docstrings of the standard library's public modules, classes "
                "and functions (read from {lib})")
PYDOC_LICENSE = "PSF-2.0 (Python Software Foundation License Version 2; the Python documentation)"
SHIPPED_LICENSE = "written for this project; redistributed with it (see data/README.md)"


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


def _topic_sources() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics

    return [(f"topics/{k}", topics[k]) for k in sorted(topics)]


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _docstring_sources() -> list[tuple[str, str]]:
    """``(path:qualname, docstring)`` of the stdlib's public modules, classes and functions."""
    lib = stdlib_dir()
    out = []
    for f in sorted(lib.rglob("*.py")):
        rel = f.relative_to(lib)
        if SKIP_DIRS & set(rel.parts) or any(p.startswith("_") and p != "__init__.py" for p in rel.parts):
            continue
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        nodes = [(0, "", tree)]
        for node in ast.walk(tree):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                nodes.append((node.lineno, node.name, node))
        for line, name, node in sorted(nodes, key=lambda x: (x[0], x[1])):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                out.append((f"{rel.as_posix()}:{name or '<module>'}:{line}", doc))
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


@lru_cache(maxsize=1)
def pydoc_passages() -> tuple[dict, ...]:
    """Every passage of the ``pydoc-text`` set (cached: the first call parses the stdlib, seconds)."""
    return tuple(passages_of(_topic_sources() + _docstring_sources()))


def digest(texts: list[str]) -> str:
    """SHA-256 of the texts in order (one newline-free record a line)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.replace("\n", " ").encode("utf-8") + b"\n")
    return h.hexdigest()


# ----- the catalogue ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalSet:
    """One evaluation set: ``load()`` gives texts (kind text), cloze items or MC records."""

    name: str
    kind: str  # text, cloze, mc
    description: str
    source: str
    license: str
    default: bool
    load: Callable[[], list]

    def texts(self) -> list[str]:
        """The strings whose tokens are counted: passages, cloze contexts + targets, MC questions."""
        rows = self.load()
        if self.kind == "text":
            return list(rows)
        if self.kind == "cloze":
            return [f"{r['context']} {r['target']}" for r in rows]
        return [r["question"] for r in rows]


def _heldout() -> list[str]:
    from tda.common.data import HELDOUT, load_texts

    return load_texts(HELDOUT)


def _mc_small() -> list[dict]:
    import json

    from tda.common.data import MC_TASK

    return [json.loads(ln) for ln in MC_TASK.read_text().splitlines() if ln.strip()]


def _pydoc_source() -> str:
    return PYDOC_SOURCE.format(py=sys.version.split()[0], lib=stdlib_dir())


def catalogue() -> dict[str, EvalSet]:
    """Every evaluation set by name (nothing is read until a set's ``load`` is called)."""
    from tda.common.literary import BIERCE_LICENSE, BIERCE_SOURCE, bierce_cloze, bierce_passages

    sets = [
        EvalSet("pydoc-text", "text", "prose passages of the Python documentation (80-200 words each)",
                _pydoc_source(), PYDOC_LICENSE, True, lambda: [p["text"] for p in pydoc_passages()]),
        EvalSet("pydoc-cloze", "cloze", "last-word prediction (LAMBADA style) on the pydoc-text passages",
                _pydoc_source(), PYDOC_LICENSE, False, lambda: cloze_items(list(pydoc_passages()))),
        EvalSet("bierce-text", "text", "literary prose: passages of Ambrose Bierce's The Devil's Dictionary "
                "(1911; definitions, anecdotes and verse, 80-200 words each)", BIERCE_SOURCE, BIERCE_LICENSE, False,
                lambda: [p["text"] for p in bierce_passages()]),
        EvalSet("bierce-cloze", "cloze", "last-word prediction (clause, sentence and verse-line ends) on the "
                "bierce-text passages", BIERCE_SOURCE, BIERCE_LICENSE, False, bierce_cloze),
        EvalSet("heldout-small", "text", "24 short hand-written texts (data/heldout.jsonl): tests and quick runs",
                "data/heldout.jsonl", SHIPPED_LICENSE, False, _heldout),
        EvalSet("mc-small", "mc", "40 hand-written commonsense multiple-choice items (data/mc_task.jsonl, via lm-eval)",
                "data/mc_task.jsonl", SHIPPED_LICENSE, False, _mc_small),
    ]
    return {s.name: s for s in sets}


DEFAULT_TEXT_SET = "pydoc-text"
DEFAULT_CLOZE_SET = "pydoc-cloze"


def cloze_set_for(text_set: str) -> str | None:
    """The cloze set derived from the text set ``text_set`` (``pydoc-text`` → ``pydoc-cloze``), or None."""
    if not text_set.endswith("-text"):
        return None
    name = text_set[: -len("-text")] + "-cloze"
    return name if name in catalogue() else None


def get_set(name: str, kind: str | None = None) -> EvalSet:
    """The set called ``name`` (of ``kind`` when given); :class:`BadInput` naming the choices."""
    cat = catalogue()
    s = cat.get(name)
    if s is None or (kind is not None and s.kind != kind):
        names = [n for n, x in cat.items() if kind is None or x.kind == kind]
        raise BadInput(f"unknown {kind + ' ' if kind else ''}set '{name}' (choose from {', '.join(names)})")
    return s
