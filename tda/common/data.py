"""Shipped inputs (``data/``) and local JSON/JSONL files, and hub datasets (``datasets``) when a network exists."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tda.common import hub
from tda.common.errors import BadInput
from tda.common.paths import DATA_DIR

CORPUS = DATA_DIR / "corpus.jsonl"
HELDOUT = DATA_DIR / "heldout.jsonl"
SAMPLES13 = DATA_DIR / "samples13.json"
SUMMARIZATION = DATA_DIR / "summarization.jsonl"
WORDS = DATA_DIR / "words.txt"
XSUM_DEMO = DATA_DIR / "xsum_demo.json"
XSUM_TEMPLATE = DATA_DIR / "xsum_prompt_template.txt"
MC_TASK = DATA_DIR / "mc_task.jsonl"


def data_hash(texts: list[str]) -> str:
    """A short hash of a list of texts (the key of the caches computed from them)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _json_records(p: Path) -> list[dict]:
    """Records of a local JSON file: a list of objects, an object of equal-length columns, or
    JSON lines (one object a line). A malformed file is one BadInput naming it (and the line)."""
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"cannot read {p} as JSON records (not UTF-8 text)") from None
    except OSError as e:
        raise BadInput(f"cannot read {p}: {e.strerror}") from None
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
    if isinstance(whole, list):
        rows = whole
    elif isinstance(whole, dict) and whole and all(isinstance(v, list) for v in whole.values()):
        n = {len(v) for v in whole.values()}
        if len(n) != 1:
            raise BadInput(f"cannot read {p} as JSON records (columns of different lengths)")
        rows = [dict(zip(whole, vals)) for vals in zip(*whole.values())]
    else:
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                raise BadInput(f"cannot read {p} as JSON records (line {i}: {e.msg})") from None
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise BadInput(f"cannot read {p} as JSON records (record {i} is not an object)")
    return rows


def load_records(source: str | Path, *, required: tuple[str, ...] = ("text",), split: str = "train") -> list[dict]:
    """Rows of a local JSON/JSONL file (read directly) or a hub dataset (``datasets``).

    Every row must have the ``required`` fields. A hub name (``owner/name``) is loaded with
    ``datasets.load_dataset`` when a network exists; offline it fails with one clear line.
    """
    p = Path(source).expanduser()
    if p.exists():
        if p.is_dir():
            raise BadInput(f"{p} is a folder; give a .json or .jsonl file")
        ds = _json_records(p)  # read here: no Arrow copy under ~/.cache/huggingface, one line on errors
    elif "/" in str(source) and not str(source).startswith((".", "/", "~")):
        import datasets

        datasets.disable_progress_bars()
        if not hub.hub_resolvable():
            raise BadInput(f"'{source}' is not a local file and the dataset hub cannot be reached (offline)")
        try:
            ds = datasets.load_dataset(str(source), split=split)
        except Exception as e:
            raise BadInput(f"could not load hub dataset '{source}': {str(e).splitlines()[0][:160]}") from None
    else:
        raise BadInput(f"data file {source} does not exist")
    rows = [dict(r) for r in ds]
    for i, row in enumerate(rows):
        missing = [f for f in required if not isinstance(row.get(f), str) or not row.get(f).strip()]
        if missing:
            raise BadInput(f"{source}: record {i} lacks field(s) {', '.join(missing)}")
    return rows


def load_texts(source: str | Path | None = None, *, field: str = "text", limit: int | None = None) -> list[str]:
    """The ``field`` of every record (default: the shipped corpus); fails on an empty result."""
    rows = load_records(source or CORPUS, required=(field,))
    texts = [r[field] for r in rows][:limit]
    if not texts:
        raise BadInput(f"{source or CORPUS} holds no texts")
    return texts


def load_samples(source: str | Path | None = None) -> list[dict]:
    """The 13 samples (or another sample file): ``[{"id", "text", "treatment"}]``, at least 2."""
    src = Path(source) if source else SAMPLES13
    if not src.is_file():
        raise BadInput(f"sample file {src} does not exist")
    try:
        rows = json.loads(src.read_text())
    except ValueError:
        rows = load_records(src)
    if not isinstance(rows, list) or len(rows) < 2:
        raise BadInput(f"{src}: need a list of at least 2 samples")
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not isinstance(r.get("text"), str) or not r["text"].strip():
            raise BadInput(f"{src}: sample {i} lacks a non-empty 'text'")
        r.setdefault("id", i + 1)
        r.setdefault("treatment", "")
    return rows


def load_words(path: str | Path | None = None) -> list[str]:
    words = [w.strip() for w in Path(path or WORDS).read_text().splitlines() if w.strip()]
    if not words:
        raise BadInput("the word list is empty")
    return words


def xsum_demo() -> dict:
    return json.loads(XSUM_DEMO.read_text())


def xsum_prompt(article: str, demo: dict | None = None) -> str:
    """GRIFFIN's 1-shot XSum prompt for ``article`` with the shipped demonstration."""
    demo = demo or xsum_demo()
    return XSUM_TEMPLATE.read_text().format(
        demo_article=demo["article"], demo_summary=demo["summary"], article=article
    )


def xsum_first_prompt() -> str:
    """The prompt whose first tokens Study 1 uses: it begins ``###\\nArticle: Almost one million...``."""
    demo = xsum_demo()
    return xsum_prompt(demo["article"], demo)
