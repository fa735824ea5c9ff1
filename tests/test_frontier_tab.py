"""The frontier tab's view functions: stored runs in order, methods filter, paired Δ view, verdicts."""

from __future__ import annotations

import json

from app.views import frontier as views


def _result(model_id: str, ts: str, dtype: str = "float32") -> dict:
    rows = [{"method": "dense", "density_target": None, "decode_speedup": 1.0, "speedup_lo": 1.0, "speedup_hi": 1.0,
             "ceiling": 1.0, "ppl": 20.0, "ppl_lo": 18.0, "ppl_hi": 23.0, "pareto": True},
            {"method": "griffin", "density_target": 0.5, "decode_speedup": 1.1, "speedup_lo": 1.0, "speedup_hi": 1.2,
             "ceiling": 1.15, "ppl": 22.0, "ppl_lo": 19.0, "ppl_hi": 25.0, "ppl_delta_pct": 10.0,
             "ppl_delta_pct_lo": 8.0, "ppl_delta_pct_hi": 12.0, "pareto": True},
            {"method": "tt", "density_target": 0.5, "decode_speedup": 0.9, "speedup_lo": 0.8, "speedup_hi": 1.0,
             "ceiling": 1.1, "ppl": 30.0, "ppl_delta_pct": 50.0, "ppl_delta_pct_lo": 40.0, "ppl_delta_pct_hi": 60.0,
             "pareto": False}]
    return {"rows": rows, "verdicts": [{"density": 0.5, "a": "griffin", "b": "tt", "verdict": "griffin beats tt",
                                        "text": "Δppl tt vs griffin +36% [+30, +42]"}],
            "meta": {"model": {"model_id": model_id, "dtype": dtype}, "rounds": 3, "heldout_texts": 200,
                     "cloze_items": 500, "timestamp": ts}}


def test_stored_runs_order(tmp_path):
    for name, mid, ts, dt in (("a", "m1", "2026-01-01", "float32"), ("b", "m1", "2026-02-01", "float32"),
                              ("c", "m2", "2026-03-01", "float32"), ("d", "m1", "2026-04-01", "bfloat16")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "frontier.json").write_text(json.dumps(_result(mid, ts, dt)))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "frontier.json").write_text("{")
    runs = views.stored_runs("m1", "float32", tmp_path)
    assert [p.split("/")[-2] for p, _ in runs] == ["b", "a", "d", "c"]  # same model+dtype, newest first
    assert views.find_frontier("m1", "float32", tmp_path)[0] == runs[0][0]
    assert views.find_frontier("m3", None, tmp_path) is None
    assert "b — m1 (float32)" in views.run_label(*runs[0])


def test_frontier_view_filter_deltas_and_verdicts():
    res = _result("m1", "t")
    v = views.frontier_view(res, ["griffin"])
    assert [r["method"] for r in v["rows"]] == ["dense", "griffin"] and v["verdicts"] == []
    assert v["rows"][1]["Δppl % 95% (paired)"] == "[8, 12]" and v["rows"][1]["Pareto"] is True
    names = [t.name for t in v["figure"].data]
    assert "tt" not in names and "Pareto set" in names
    v = views.frontier_view(res, deltas=True)
    g = next(t for t in v["figure"].data if t.name == "griffin")
    assert list(g.y) == [10.0] and list(g.error_y.array) == [2.0]
    d = next(t for t in v["figure"].data if t.name == "dense")
    assert list(d.y) == [0.0] and v["figure"].layout.yaxis.type != "log"
    assert v["verdicts"][0]["verdict"] == "griffin beats tt"
    assert views.frontier_view(res)["figure"].layout.yaxis.type == "log"
    assert "500 cloze items" in v["caption"] and views.result_methods(res) == ["griffin", "tt"]
