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
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tda.common.errors import BadInput
from tda.common.passages import (  # noqa: F401 (re-exported: the sets' text machinery)
    CLOZE_MIN_CONTEXT_WORDS,
    MAX_WORDS,
    MIN_WORDS,
    SENTENCE_END,
    cloze_items,
    passages_of,
    prose_paragraphs,
)

SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "ensurepip"}

PYDOC_SOURCE = ("CPython {py} documentation shipped with the interpreter: the Language Reference sections "
                "of pydoc_data.topics and the docstrings of the standard library's public modules, classes "
                "and functions (read from {lib})")
PYDOC_LICENSE = "PSF-2.0 (Python Software Foundation License Version 2; the Python documentation)"
SHIPPED_LICENSE = "written for this project; redistributed with it (see data/README.md)"


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
