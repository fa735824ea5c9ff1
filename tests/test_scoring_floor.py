"""benchmarks/scoring_floor.py: the arithmetic floor of a stored frontier's scoring, on a tiny model and
a hand-made frontier (its work is variants x scored positions x 2 x parameters, plus the prefills and
the cloze items)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def test_the_floor_is_the_runs_work_over_each_rate(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("scoring_floor", None)
    import scoring_floor

    rows = [{"method": "dense", "density_target": None, "corpus": "pooled"}]
    rows += [{"method": m, "density_target": d, "corpus": "pooled"} for m in ("tt", "teal") for d in (0.3, 0.5)]
    rows += [{"method": "tt", "density_target": 0.5, "corpus": "heldout-small"}]  # a corpus row: not counted
    fr = tmp_path / "frontier.json"
    fr.write_text(json.dumps({"rows": rows, "meta": {"heldout_tokens": 1000, "cloze_items": 6,
                                                     "sets": {"text": "heldout-small", "cloze": "bierce-cloze"}}}))
    out = scoring_floor.main(["--model", "tiny-llama", "--frontier", str(fr), "--gemm", "64", "--tokens", "8",
                              "--repeats", "1", "--sample-texts", "2", "--sample-items", "2", "--sample-dtypes", "fp32",
                              "--out", str(tmp_path / "floor.json")])
    assert out["variants_per_density"] == 3 and out["scored_positions"] == 1000
    assert out["prefill_positions"] > 0
    assert out["cloze_positions"] > out["cloze_target_tokens"] >= 6  # every item's rest holds its target
    work = 3 * 1000 * 2 * out["parameters"]
    assert out["work_tflop"] == pytest.approx(work / 1e12)
    assert out["work_run_tflop"] > out["work_with_prefills_tflop"] > out["work_tflop"]
    for k, rate in out["gflops"].items():
        assert rate > 0
        assert out["floor_minutes"][k] == pytest.approx(work / (rate * 1e9) / 60)
        assert out["floor_minutes_with_prefills"][k] > out["floor_minutes"][k]
        assert out["floor_minutes_run"][k] == pytest.approx(out["work_run_tflop"] * 1e12 / (rate * 1e9) / 60)
    # the frontier's own scoring timed on a sample (2 passages, 2 cloze items) of the run's sets: dense, tt
    # and teal at the run's density 0.5, the whole run projected at that sample's rate
    sample = out["sample"]
    assert (sample["texts"], sample["cloze_items"], sample["density"]) == (2, 2, 0.5)
    assert 0 < sample["work_tflop"] < out["work_run_tflop"]
    m = sample["by_dtype"]["fp32"]
    assert m["variants"] == 3 and m["seconds"] == pytest.approx(m["perplexity_seconds"] + m["cloze_seconds"])
    assert m["projected_run_minutes"] == pytest.approx(
        out["work_run_tflop"] / sample["work_tflop"] * m["seconds"] / 60)
    assert json.loads((tmp_path / "floor.json").read_text())["gflops"] == out["gflops"]
    assert "at least" in capsys.readouterr().out
