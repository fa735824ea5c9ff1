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


# ----- issue 27: the selector names what is plotted, one chart per density, Pareto filter, n/a intervals --------
def _three_density_result(model_id: str, rounds: int = 3) -> dict:
    rows = [{"method": "dense", "density_target": None, "decode_speedup": 1.0, "ceiling": 1.0, "ppl": 20.0,
             "speedup_rounds": [1.0] * rounds, "pareto": True}]
    for m, sp, on in (("griffin", 1.1, True), ("tt", 0.9, False)):
        for d in (0.3, 0.5, 0.7):
            rows.append({"method": m, "density_target": d, "decode_speedup": sp + d / 10, "speedup_lo": sp,
                         "speedup_hi": sp + 0.2, "speedup_rounds": [sp + d / 10] * rounds, "ceiling": 1.2,
                         "ppl": 20 + 10 * (1 - d), "pareto": on})
    return {"rows": rows, "verdicts": [], "meta": {"model": {"model_id": model_id, "dtype": "float32"},
                                                   "rounds": rounds, "heldout_texts": 9, "timestamp": "2026-12-01T00:00:00"}}


def test_view_density_pareto_and_na():
    res = _three_density_result("m1", rounds=1)
    assert views.pareto_methods(res) == ["griffin"] and views.result_densities(res) == [0.3, 0.5, 0.7]
    v = views.frontier_view(res, density=0.5)
    assert [(r["method"], r["density"]) for r in v["rows"]] == [("dense", 1.0), ("griffin", 0.5), ("tt", 0.5)]
    assert "density 0.5" in v["figure"].layout.title.text
    assert v["rows"][1]["speedup 95%"] == "n/a (1 round(s))" and "fewer than 3 timed rounds" in v["caption"]
    v3 = views.frontier_view(_three_density_result("m1", rounds=3), density=0.5)
    assert v3["rows"][1]["speedup 95%"] == "[1.1, 1.3]" and "n/a" not in v3["caption"]


def test_view_cross_corpus_parts():
    res = _three_density_result("m1")
    other = [dict(r, ppl=r["ppl"] * 2) for r in res["rows"]]
    res["corpora"] = {"a": {"rows": res["rows"], "verdicts": []}, "b": {"rows": other, "verdicts": []}}
    res["cross_verdicts"] = [
        {"density": 0.5, "a": "griffin", "b": "tt", "status": "corpus-dependent", "verdict": "corpus-dependent",
         "pooled": "griffin beats tt", "text": "a: griffin beats tt (…); b: tt beats griffin (…)"},
        {"density": 0.3, "a": "griffin", "b": "tt", "status": "holds", "verdict": "griffin beats tt",
         "pooled": "griffin beats tt", "text": "a: …; b: …"}]
    assert views.result_corpora(res) == ["pooled", "a", "b"]
    assert [v["status"] for v in views.cross_verdict_rows(res)] == ["holds", "corpus-dependent"]
    assert views.frontier_view(res, corpus="b")["rows"][0]["ppl"] == 40.0


def test_tab_selector_names_the_plotted_run(monkeypatch, tmp_path):
    """With a stored run of this model, "Run frontier" switches the selector to the new run (its
    label and the caption both name it); choosing the stored run again plots the stored one."""
    from streamlit.testing.v1 import AppTest

    from tests.test_app_pages import APP, MODEL, TIMEOUT

    (tmp_path / "frontier-tiny-llama").mkdir()
    (tmp_path / "frontier-tiny-llama" / "frontier.json").write_text(json.dumps(_three_density_result(MODEL)))
    monkeypatch.setenv("TDA_RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("TDA_APP_MODEL", MODEL)
    monkeypatch.setattr("app.views.frontier.SMALL_FRONTIER", dict(
        rounds=1, prompt_tokens=8, new_tokens=3, limit=2, mc_limit=0, bandwidth_mb=8, boot_iters=100))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page("page_generate.py").run()
    sel = at.selectbox(key="fr_run_choice")
    assert sel.value.endswith("frontier.json") and "frontier-tiny-llama" in sel.format_func(sel.value)
    assert len(at.get("plotly_chart")) >= 3  # one chart per density (0.3, 0.5, 0.7)
    assert list(at.multiselect(key=f"fr_plot_methods_{sel.value}").value) == ["griffin"]  # the Pareto set
    at.multiselect(key="fr_methods").set_value(["griffin"]).run()
    at.multiselect(key="fr_densities").set_value([0.5]).run()
    at.button(key="fr_run").click().run()
    assert not at.exception and not at.error
    sel = at.selectbox(key="fr_run_choice")
    assert sel.value == views.PAGE_RUN and sel.format_func(sel.value).startswith("run on this page")
    cap = [c.value for c in at.caption if c.value.startswith("Shown: ")]
    assert cap and cap[0].startswith("Shown: run on this page") and "2 held-out texts" in cap[0]
    assert "n/a (1 round(s))" in list(at.dataframe[0].value["speedup 95%"])
    assert any("frontier-tiny-llama" in o for o in sel.options)  # the stored run is still offered
    sel.set_value(str(tmp_path / "frontier-tiny-llama" / "frontier.json")).run()
    cap = [c.value for c in at.caption if c.value.startswith("Shown: ")]
    assert "frontier-tiny-llama" in cap[0] and "9 held-out texts" in cap[0]
