"""Evaluation sets read from the Python installation: sizes, determinism, cloze items, and
disjointness from every calibration text."""

from __future__ import annotations

import json
import re

import pytest

from tda.common import evalsets as es
from tda.common.errors import BadInput


def _shingles(text: str, n: int = 8) -> set[tuple[str, ...]]:
    w = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def test_prose_paragraphs_drop_code_and_headings():
    text = ("Assignment statements\n*********************\n\nAn assignment statement evaluates the expression "
            "list and assigns the single resulting object to each of\nthe target lists, from left to right.\n\n"
            "   x = [f(a) for a in range(3)]\n\nToo short.\n\n"
            "* A bullet item that is long enough to count as a prose paragraph of the text here.")
    got = es.prose_paragraphs(text)
    assert got == ["An assignment statement evaluates the expression list and assigns the single resulting "
                   "object to each of the target lists, from left to right.",
                   "A bullet item that is long enough to count as a prose paragraph of the text here."]


def test_passages_and_cloze_by_hand():
    para = ("The archive keeps every record in order. " * 6).strip()  # 42 words a paragraph
    ps = es.passages_of([("s1", para + "\n\n" + para + "\n\n" + para)], min_words=80, max_words=100)
    assert len(ps) == 1 and len(ps[0]["text"].split()) == 84 and ps[0]["id"] == "p00000"
    items = es.cloze_items(ps, min_context_words=30)
    assert items and all(it["target"] == "order" and it["context"].split()[-1] == "in" for it in items)
    assert all(len(it["context"].split()) >= 30 for it in items)


def test_default_sets_sizes_and_determinism():
    """The issue's floor: >= 200 passages, >= 50,000 tokens (words × 1.2 is a safe lower bound of the
    Gemma count; the exact count is tested below when the tokenizer is present), >= 500 cloze items."""
    cat = es.catalogue()
    text, cloze = cat[es.DEFAULT_TEXT_SET], cat[es.DEFAULT_CLOZE_SET]
    assert text.default and not cloze.default and sum(s.default for s in cat.values()) == 1
    passages = text.load()
    assert len(passages) >= 200 and sum(len(p.split()) for p in passages) >= 50_000 / 1.2
    items = cloze.load()
    assert len(items) >= 500 and all(re.fullmatch(r"[A-Za-z]{4,}", it["target"]) for it in items)
    es.pydoc_passages.cache_clear()  # a fresh extraction gives the same texts in the same order
    assert es.digest(text.load()) == es.digest(passages)
    assert [it["id"] for it in cloze.load()] == [it["id"] for it in items]
    assert len({p for p in passages}) == len(passages)  # no duplicates
    for s in (text, cloze):
        assert "PSF" in s.license and "pydoc_data" in s.source


def test_calibration_texts_disjoint_from_evaluation():
    """No 8-word run of any calibration text (the shipped corpus used by `tda calibrate`, the
    thresholds and the bench prompt) appears in the evaluation passages or cloze contexts."""
    from tda.common.data import CORPUS, HELDOUT, load_texts

    cal = set().union(*(_shingles(t) for t in load_texts(CORPUS)))
    ev = set().union(*(_shingles(t) for t in es.get_set("pydoc-text").load()))
    assert cal and ev and not cal & ev
    assert not cal & set().union(*(_shingles(t) for t in load_texts(HELDOUT)))
    assert not (set().union(*(_shingles(it["context"]) for it in es.get_set("pydoc-cloze").load()[:200])) & cal)


def test_get_set_errors():
    assert es.get_set("heldout-small", "text").kind == "text"
    with pytest.raises(BadInput, match="unknown text set 'pydoc-cloze'"):
        es.get_set("pydoc-cloze", "text")
    with pytest.raises(BadInput, match="choose from"):
        es.get_set("nope")


def test_tda_data_json(run_cli):
    """`tda data --json`: a list of objects with the issue's fields; the default text set holds
    >= 200 passages and >= 50,000 Gemma tokens; the cloze set >= 500 items."""
    code, out, err = run_cli("data", "--json")
    assert code == 0, err
    sets = {s["name"]: s for s in json.loads(out)}
    for s in sets.values():
        assert {"name", "kind", "items", "tokens", "source", "license", "default"} <= set(s)
    d = [s for s in sets.values() if s["default"]]
    assert len(d) == 1 and d[0]["kind"] == "text" and d[0]["items"] >= 200 and d[0]["tokens"] >= 50_000
    assert sets["pydoc-cloze"]["kind"] == "cloze" and sets["pydoc-cloze"]["items"] >= 500
    assert sets["mc-small"]["items"] == 40 and sets["heldout-small"]["items"] == 24
    b = sets["bierce-text"]
    assert b["items"] >= 200 and b["tokens"] >= 50_000 and sets["bierce-cloze"]["items"] >= 500
    assert "dict-devil" in b["source"] and "public domain" in b["license"]


# ----- the literary set (tda.common.literary) --------------------------------------------------------
def test_bierce_set_sizes_determinism_and_licence():
    """>= 200 passages, >= 50,000 tokens (words × 1.2 a safe lower bound), >= 500 cloze items; a
    fresh extraction gives the same digest; the source names the Debian package and the licence
    says public domain; the shipped file is the package's (hash checked on load)."""
    from tda.common import literary as lit

    text, cloze = es.get_set("bierce-text", "text"), es.get_set("bierce-cloze", "cloze")
    passages = text.load()
    assert len(passages) >= 200 and sum(len(p.split()) for p in passages) >= 50_000 / 1.2
    assert len(set(passages)) == len(passages) and not text.default
    items = cloze.load()
    assert len(items) >= 500 and all(re.fullmatch(r"[A-Za-z]{3,}", it["target"]) for it in items)
    assert all(re.search(rf"\b{it['target']}\b", it["context"], flags=re.IGNORECASE) for it in items)
    before = es.digest(passages)
    lit.bierce_passages.cache_clear()
    assert es.digest(text.load()) == before and [it["id"] for it in cloze.load()] == [it["id"] for it in items]
    for s in (text, cloze):
        assert "dict-devil" in s.source and "Bierce" in s.source and "public domain" in s.license
    assert passages[0].startswith("ABASEMENT, n.")


def test_bierce_source_checked(tmp_path, monkeypatch):
    """A changed source file is refused by its hash; the installed Debian file (when there) has the
    same bytes as the shipped one."""
    from tda.common import literary as lit

    bad = tmp_path / "devil.dict.dz"
    raw = lit.SOURCE_FILE.read_bytes()
    bad.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    with monkeypatch.context() as m:
        m.setattr(lit, "SOURCE_FILE", bad)
        with pytest.raises(BadInput, match="SHA-256"):
            lit.source_text()
    if lit.DEBIAN_FILE.exists():
        import hashlib

        assert hashlib.sha256(lit.DEBIAN_FILE.read_bytes()).hexdigest() == lit.SOURCE_SHA256
        assert lit.bierce_passages_from(lit.source_text(lit.DEBIAN_FILE)) == list(lit.bierce_passages())


def test_bierce_disjoint_from_calibration():
    from tda.common.data import CORPUS, HELDOUT, load_texts

    cal = set().union(*(_shingles(t) for t in load_texts(CORPUS) + load_texts(HELDOUT)))
    ev = set().union(*(_shingles(t) for t in es.get_set("bierce-text").load()))
    assert cal and ev and not cal & ev


def test_tda_data_never_loads_the_model(run_cli, monkeypatch, tmp_path):
    """`tda data` on an empty cache: shipped counts (by set hash) and, for a set without one, the
    tokenizer alone (never the model); the new count is cached for the next run."""
    import tda.cli.data_cmd as cmd
    import tda.models.embedded as embedded

    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(embedded, "ensure_embedded_cache", lambda *a, **k: pytest.fail("converted the model"))
    monkeypatch.setattr(cmd, "gemma_tokenizer", lambda: pytest.fail("loaded a tokenizer"))
    from tda.common.paths import DATA_DIR

    shipped = json.loads((DATA_DIR / cmd.TOKEN_COUNTS).read_text())
    sets = cmd.describe_sets(count_tokens=True)  # on this CPython every set's hash is shipped
    assert all(s["tokens"] == shipped[s["sha256"]] for s in sets)
    # a set the shipped file does not know: counted with the tokenizer alone, then remembered
    calls = []

    class Tok:
        def __call__(self, texts, add_special_tokens=False):
            calls.append(len(texts))
            return type("R", (), {"input_ids": [[0, 0]] * len(texts)})()

    monkeypatch.setattr(cmd, "_known_counts", lambda: {})
    monkeypatch.setattr(cmd, "gemma_tokenizer", lambda: Tok())
    sets = cmd.describe_sets(count_tokens=True)
    assert len(calls) == len(sets) and all(isinstance(s["tokens"], int) and s["tokens"] > 0 for s in sets)
    cached = json.loads((tmp_path / cmd.TOKEN_COUNTS).read_text())
    assert {s["sha256"] for s in sets} <= set(cached)
