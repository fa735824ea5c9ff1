"""The Neuron page (``/neuron``) headless on ``tiny-llama``, in the style of ``tests/test_app_pages.py``:
its numbers and charts against :func:`analysis.neuron.neuron_profile` computed directly."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_app_pages import APP, MODEL, TIMEOUT, arr, charts, errors, metric

PAGE = "page_neuron.py"
PROMPT = "The cat sat on the mat."


@pytest.fixture
def neuron_page(monkeypatch, tmp_path):
    """``neuron_page(**query)``: the Neuron page opened with ``?key=value`` query parameters."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("TDA_APP_MODEL", MODEL)
    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path / "cache"))

    def make(**query):
        at = AppTest.from_file(APP, default_timeout=TIMEOUT)
        at.session_state["prompt"] = PROMPT
        at.run()
        for k, v in query.items():
            at.query_params[k] = str(v)
        at.switch_page(PAGE).run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return make


@pytest.fixture(scope="module")
def lm():
    from tda.models.load import load_model

    return load_model(MODEL)


def test_neuron_page_from_query_params_shows_the_profile(neuron_page, lm):
    from analysis.neuron import neuron_profile

    at = neuron_page(layer=1, neuron=5)
    assert errors(at) == []
    assert at.number_input(key="neuron_layer").value == 1 and at.number_input(key="neuron_index").value == 5
    prof = neuron_profile(lm, 1, 5, PROMPT, cett_target=0.2, density=0.5)  # the same (cached) inputs
    assert metric(at, "CETT/TT cut-off on |a|") == f"{prof['cutoffs']['cett']['value']:.4g}"
    assert metric(at, "corpus tokens beyond it") == f"{prof['corpus']['fraction_beyond']['cett']:.1%}"
    assert metric(at, "peak |a| on the prompt") == f"{max(abs(v) for v in prof['prompt']['activation']):.4g}"
    figs = charts(at)
    assert len(figs) == 4  # prompt bars, layer overview, corpus histograms, vocabulary
    bars = {x: float(y) for t in figs[0]["data"] if t["type"] == "bar" for x, y in zip(arr(t["x"]), arr(t["y"]))}
    labels = [f"{i}: {tok}" for i, tok in enumerate(prof["prompt"]["tokens"])]
    assert [bars[x] for x in labels] == pytest.approx(prof["prompt"]["activation"], rel=1e-5, abs=1e-7)
    hist = figs[1]["data"]
    assert sum(float(v) for v in arr(hist[0]["y"])) == pytest.approx(prof["corpus"]["n_tokens"], rel=1e-3)
    cut_lines = {t["name"] for t in hist if t["type"] == "scatter" and t.get("showlegend", True)}
    assert any("CETT" in n for n in cut_lines) and any("TEAL" in n for n in cut_lines)
    assert any("CATS" in n for n in cut_lines)
    masks = at.dataframe[2].value  # after the two context tables
    assert [m.split()[0] for m in masks["method"]] == ["TDA", "GRIFFIN", "static", "TT", "TEAL", "CATS"]
    assert masks["keeps it?"][0] == ("yes" if prof["masks"]["tda"]["keeps"] else "no")
    assert masks["keeps it?"][3] == f"{prof['masks']['tt']['fraction']:.0%} of tokens"
    top = at.dataframe[0].value
    assert list(top["a"]) == pytest.approx([round(r["activation"], 5) for r in prof["corpus"]["top"]])
    vocab = figs[2]["data"][0]
    assert max(float(v) for v in arr(vocab["x"])) == pytest.approx(prof["vocab"]["promoted"][0]["logit"], rel=1e-5)
    assert at.query_params["neuron"] == ["5"] or at.query_params["neuron"] == "5"


def test_neuron_page_refuses_out_of_range_visibly(neuron_page):
    at = neuron_page(layer=1, neuron=2)
    at.number_input(key="neuron_index").set_value(10_000).run()
    assert any("neuron 10000 out of range" in e for e in errors(at))
    assert len(charts(at)) == 0
    at.number_input(key="neuron_index").set_value(3).run()
    assert errors(at) == [] and len(charts(at)) == 4
    at = neuron_page(layer=99, neuron=0)
    assert any("layer 99 out of range" in e for e in errors(at))


def test_neuron_page_default_is_the_busiest_neuron_and_page_is_registered(neuron_page, lm):
    from analysis.neuron import prompt_trace

    at = neuron_page()
    layer = lm.ffn.n_layers // 2
    cap, _ = prompt_trace(lm, PROMPT, layer)
    assert at.number_input(key="neuron_layer").value == layer
    assert at.number_input(key="neuron_index").value == int(cap.layer(layer).abs().amax(dim=0).argmax())
    main = (Path(APP)).read_text()
    assert 'url_path="neuron"' in main and "Neuron" in main


def test_clicked_bar_selects_its_neuron():
    from app.views.neuron import layer_peaks, peaks_figure, selected_point

    assert selected_point({"selection": {"points": [{"x": "#7", "customdata": 7}]}}) == 7
    assert selected_point({"selection": {"points": [{"x": "#7", "customdata": [9]}]}}) == 9
    assert selected_point({"selection": {"points": []}}) is None and selected_point(None) is None
    import torch

    peaks = layer_peaks(torch.tensor([[0.1, -3.0, 2.0], [0.5, 1.0, -0.2]]), 2)
    assert peaks == [(1, 3.0), (2, 2.0)]
    fig = peaks_figure(peaks, 0, selected=2)
    assert list(fig.data[0].customdata) == [1, 2]
