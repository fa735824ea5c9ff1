"""Verdicts across corpora (holds / corpus-dependent, on hand-made rows), speed intervals from
fewer than 3 rounds shown as n/a, and `tda frontier --set A,B` end to end on a tiny model."""

from __future__ import annotations

import csv
import io
import json

import pytest

from tda.evaluate.frontier import pool_quality, to_csv, to_markdown
from tda.evaluate.verdicts import cross_verdicts, cross_verdicts_markdown, speed_interval, verdicts


def _rows(rounds: int = 3, spread: float = 0.05) -> list[dict]:
    """dense and three methods at 0.5, all about equally fast (overlapping intervals)."""
    rows = [{"method": "dense", "density_target": None, "decode_speedup": 1.0, "speedup_rounds": [1.0] * rounds}]
    for m in ("x", "y", "z"):
        rows.append({"method": m, "density_target": 0.5, "decode_speedup": 1.2, "speedup_lo": 1.2 - spread,
                     "speedup_hi": 1.2 + spread, "speedup_rounds": [1.2] * rounds})
    return rows


def _quality(nll_per_token: dict[str, float], n: int = 30) -> dict:
    """Per-text units: every text has 20 tokens; a small deterministic wobble per text."""
    per_text = {}
    for label, base in nll_per_token.items():
        per_text[label] = {"nll": [20 * (base + 0.01 * ((i * 7) % 5)) for i in range(n)], "tokens": [20] * n}
    return {"per_text": per_text}


# x is clearly better than y on A and B, worse on C; z equals y everywhere (not separated)
A = _quality({"dense": 2.0, "x@0.5": 2.1, "y@0.5": 2.5, "z@0.5": 2.5})
B = _quality({"dense": 3.0, "x@0.5": 3.05, "y@0.5": 3.4, "z@0.5": 3.4})
C = _quality({"dense": 2.0, "x@0.5": 2.6, "y@0.5": 2.2, "z@0.5": 2.2})


def _cross(*qs):
    rows = _rows()
    per = {f"c{i}": verdicts(rows, q, iters=300) for i, q in enumerate(qs)}
    return {(v["a"], v["b"]): v for v in cross_verdicts(per)}


def test_verdict_holds_when_every_corpus_agrees():
    cv = _cross(A, B)
    assert cv[("x", "y")]["status"] == "holds" and cv[("x", "y")]["verdict"] == "x beats y"
    assert cv[("y", "z")]["status"] == "not separated"
    assert set(cv[("x", "y")]["per_corpus"]) == {"c0", "c1"}


def test_verdict_corpus_dependent_with_both_deltas():
    cv = _cross(A, C)
    v = cv[("x", "y")]
    assert v["status"] == "corpus-dependent" and v["verdict"] == "corpus-dependent"
    assert v["per_corpus"]["c0"]["verdict"] == "x beats y" and v["per_corpus"]["c1"]["verdict"] == "y beats x"
    assert v["per_corpus"]["c0"]["delta"] > 0 > v["per_corpus"]["c1"]["delta"]  # Δppl% of y vs x, each corpus
    assert "c0: x beats y (Δppl y vs x +" in v["text"] and "c1: y beats x (Δppl y vs x -" in v["text"]
    md = cross_verdicts_markdown(list(cv.values()))
    assert "## Verdicts across corpora" in md and "**corpus-dependent**" in md
    # decided on one corpus, not separated on the other: not holding either
    flat = _quality({"dense": 2.0, "x@0.5": 2.3, "y@0.5": 2.3, "z@0.5": 2.3})
    assert _cross(A, flat)[("x", "y")]["status"] == "corpus-dependent"


def test_pooled_quality_concatenates_units():
    from tda.evaluate.paired import units

    p = pool_quality([A, C], ["dense", "x", "y", "z"], [0.5], boot_iters=100)
    assert len(units(p, "x@0.5", "ppl")[0]) == 60
    row = next(r for r in p["rows"] if r["method"] == "x")
    assert row["ppl_lo"] <= row["ppl"] <= row["ppl_hi"]


def test_speed_intervals_below_three_rounds_are_na():
    one = _rows(rounds=1, spread=0.0)
    assert speed_interval(one[1]) is None and speed_interval(_rows()[1]) == (pytest.approx(1.15), pytest.approx(1.25))
    assert speed_interval(one[0]) == (1.0, 1.0)  # dense: the reference, exactly 1
    table = list(csv.DictReader(io.StringIO(to_csv(one))))
    assert table[1]["speedup_lo"] == "n/a" and table[1]["speedup_hi"] == "n/a"
    assert table[0]["speedup_lo"] == ""
    md = to_markdown(one)
    assert "[n/a: 1 round(s)]" in md and "[1.200, 1.200]" not in md
    # a one-round "interval" never separates two speeds
    one[2]["decode_speedup"] = 1.5
    v = verdicts(one, {"per_text": {}}, metric="ppl")[0]
    assert v["verdict"] == "not separated at this sample size" and "[n/a]" in v["text"]


def test_frontier_two_sets_end_to_end(tmp_path):
    from tda.cli.main import main

    out = tmp_path / "f"
    code = main(["frontier", "--model", "tiny-llama", "--methods", "griffin", "--densities", "0.5",
                 "--set", "pydoc-text,bierce-text", "--rounds", "1", "--prompt-tokens", "8", "--new-tokens", "3",
                 "--limit", "2", "--mc-limit", "0", "--cloze-limit", "2", "--gen-prompts", "0",
                 "--bandwidth-mb", "8", "--boot-iters", "100", "--no-png", "--out", str(out)])
    assert code == 0
    data = json.loads((out / "frontier.json").read_text())
    assert list(data["corpora"]) == ["pydoc-text", "bierce-text"]
    assert data["meta"]["sets"] == {"text": "pydoc-text,bierce-text", "cloze": "pydoc-cloze,bierce-cloze"}
    assert data["meta"]["heldout_texts"] == 4 and data["meta"]["cloze_items"] == 4
    assert [r["corpus"] for r in data["rows"]] == ["pooled", "pooled"]
    assert len(data["quality"]["per_text"]["dense"]["nll"]) == 4
    table = list(csv.DictReader(io.StringIO((out / "frontier.csv").read_text())))
    assert [r["corpus"] for r in table] == ["pooled", "pooled", "pydoc-text", "pydoc-text", "bierce-text", "bierce-text"]
    md = (out / "frontier.md").read_text()
    assert "## Verdicts across corpora" not in md or "holds" in md  # one sparse method: no pair to compare
    assert "## pydoc-text" in md and "## bierce-text" in md and "## Pooled" in md


def test_frontier_set_errors(run_cli):
    code, _, err = run_cli("frontier", "--model", "tiny-llama", "--set", "pydoc-text,pydoc-text")
    assert code == 2 and "different text sets" in err
    code, _, err = run_cli("frontier", "--model", "tiny-llama", "--set", "pydoc-text,bierce-text",
                           "--cloze-set", "pydoc-cloze")
    assert code == 2 and "one cloze set per text set" in err
