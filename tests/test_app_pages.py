"""Every page of the Streamlit app, headless (``streamlit.testing.v1.AppTest``) on ``tiny-llama``.

Numbers shown by the pages are checked against the library computed directly; Plotly figures are
read back from the page (``json.loads(chart.proto.spec)``, arrays possibly base64-encoded).
"""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

APP = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
MODEL = "tiny-llama"
TIMEOUT = 180  # first runs import torch/transformers and calibrate the tiny model (a few seconds)


@pytest.fixture
def app(monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("TDA_APP_MODEL", MODEL)

    def make(page: str | None = None):
        at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
        if page:
            at.switch_page(page).run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return make


def arr(v):
    """A Plotly JSON array: a list, or ``{"dtype", "bdata"[, "shape"]}`` (base64)."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        if "shape" in v:
            a = a.reshape([int(x) for x in str(v["shape"]).split(",")])
        return a
    return np.asarray(v, dtype=object)


def charts(at) -> list[dict]:
    """The page's Plotly figures (JSON), in page order."""
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


# (dataframes carry no key in AppTest: by page order — samples page: 0 is the editor)
def errors(at) -> list[str]:
    return [e.value for e in at.error]


def metric(at, label_start: str) -> str:
    hits = [m.value for m in at.metric if m.label.startswith(label_start)]
    assert hits, f"no metric starting with {label_start!r}: {[m.label for m in at.metric]}"
    return hits[0]


@pytest.fixture(scope="module")
def lm():
    from tda.models.load import load_model

    return load_model(MODEL)


def n_prompt_tokens(lm, text: str) -> int:
    from tda.activations.capture import capture

    return len(capture(lm, text, [0]).tokens)


# ------------------------------------------------------------------------------------ page 1
def test_inertia_page_shows_studys_numbers(app, lm):
    from analysis.activation import make_rule
    from analysis.studies import inertia_from_captures, random_word_text
    from app.state import default_prompt
    from tda.activations.capture import capture

    at = app()
    assert errors(at) == []
    text = default_prompt()
    assert at.text_area(key="prompt_inertia").value == text
    n = n_prompt_tokens(lm, text)
    assert metric(at, "tokens") == str(n)
    # the same numbers computed directly by the library
    control = random_word_text(lm, n, 0)[0]
    caps = {(src, mode): capture(lm, t, None, mode) for src, t in (("real", text), ("random", control))
            for mode in ("sequence", "isolated")}
    res = inertia_from_captures(caps, make_rule(lm, "cett", 0.2), model_id=lm.model_id)
    layer = int(at.number_input(key="inertia_layer").value)
    row = res["sources"]["real"]["sequence"][layer]
    assert metric(at, f"hist. Jaccard L{layer}, sequence") == f"{row['jaccard']:.3f}"
    assert metric(at, f"hist. Jaccard L{layer}, isolated") == f"{res['sources']['real']['isolated'][layer]['jaccard']:.3f}"
    assert metric(at, f"n50 L{layer}, sequence") == str(row["n50"])
    criteria = at.dataframe[0].value  # the verdict as a table of criteria, each pass/fail with its number
    assert len(criteria) == 4 and set(criteria["tokens"]) == {"prompt", "random tokens"}
    from analysis.inertia import claim4_verdict

    v = claim4_verdict(res)
    a_real = criteria[criteria["criterion"].str.startswith("A") & (criteria["tokens"] == "prompt")].iloc[0]
    assert a_real["result"].endswith("pass" if v["parts"]["A"]["real"]["holds"] else "fail")
    assert a_real["layers passing"] == f"{v['parts']['A']['real']['n']}/{lm.ffn.n_layers}"
    # the example prompt's verdict explained in one sentence, with the counts behind it
    why = next(c.value for c in at.caption if c.value.startswith("This is the paper's own example sentence"))
    assert f"A in {v['parts']['A']['real']['n']}/{lm.ffn.n_layers}" in why and why.count(". ") == 0
    table = at.dataframe[1].value
    assert len(table) == lm.ffn.n_layers
    assert np.allclose(table["self Jaccard"], np.round(res["sources"]["real"]["self_jaccard"], 4))
    rand = at.dataframe[2].value
    assert list(rand["n50 seq"]) == [r["n50"] for r in res["sources"]["random"]["sequence"]]


def test_inertia_page_updates_on_prompt_edit_and_random_button(app, lm):
    at = app()
    before = at.dataframe[1].value.copy()
    figs_before = charts(at)
    new = "The cat sat on the mat and looked at the dog for a while."
    at.text_area(key="prompt_inertia").input(new).run()
    assert errors(at) == []
    assert metric(at, "tokens") == str(n_prompt_tokens(lm, new))
    after = at.dataframe[1].value
    assert not before.equals(after)
    figs_after = charts(at)
    assert len(figs_after[0]["data"][1]["y"]) == n_prompt_tokens(lm, new)  # the heatmap follows the prompt
    assert json.dumps(figs_before[0]["data"]) != json.dumps(figs_after[0]["data"])
    # the random-token control keeps the prompt's length and replaces its text
    at.button(key="random_tokens").click().run()
    rnd = at.text_area(key="prompt_inertia").value
    assert rnd != new and errors(at) == []
    assert n_prompt_tokens(lm, rnd) == n_prompt_tokens(lm, new)
    # the prompt is shared with the other pages
    at.switch_page("page_masks.py").run()
    assert at.text_area(key="prompt_masks").value == rnd


def test_inertia_heatmap_data(app, lm):
    from app.state import default_prompt
    from tda.activations.capture import capture

    at = app()
    at.radio(key="inertia_show").set_value("raw").run()
    at.radio(key="inertia_order").set_value("index").run()
    layer = int(at.number_input(key="inertia_layer").value)
    heat = [t for t in charts(at)[0]["data"] if t.get("type") == "heatmap"]
    assert len(heat) == 2, "isolated and sequence panels side by side"
    caps = [capture(lm, default_prompt(), [layer], m) for m in ("isolated", "sequence")]
    for t, cap in zip(heat, caps, strict=True):
        z = arr(t["z"]).astype(float)
        assert z.shape == (len(cap.tokens), lm.ffn.d_ff)  # d_ff 128 < 512 columns: no pooling
        assert np.allclose(z, cap.acts[0].abs().numpy(), atol=1e-5)
        assert len(t["y"]) == len(cap.tokens) and "%{x}" in t["hovertemplate"] and "%{z" in t["hovertemplate"]
    assert {t.get("coloraxis") for t in heat} == {"coloraxis"}  # one shared colour scale
    assert arr(heat[0]["z"]).astype(float).tolist() != arr(heat[1]["z"]).astype(float).tolist()
    # zoom + pooling: neurons 32..127 into at most 16 columns keeps each bin's largest |a|
    at.slider(key="inertia_zoom").set_value((32, 128)).run()
    at.select_slider(key="inertia_cols").set_value(128).run()
    heat = [t for t in charts(at)[0]["data"] if t.get("type") == "heatmap"]
    x = arr(heat[1]["x"]).astype(int)
    assert x[0] == 32 and x[-1] < 128
    z = arr(heat[1]["z"]).astype(float)
    assert z.shape[1] == 96  # 96 <= 128 columns: shown unpooled
    assert np.allclose(z, caps[1].acts[0, :, 32:128].abs().numpy(), atol=1e-5)
    # the random-token control adds its two panels
    at.toggle(key="inertia_control").set_value(True).run()
    assert len([t for t in charts(at)[0]["data"] if t.get("type") == "heatmap"]) == 4


# ------------------------------------------------------------------------------------ page 2
def test_masks_page_coverage_matches_library(app, lm):
    from analysis.activation import make_rule
    from app.state import default_prompt
    from app.views.masks import COVERED, IDLE, MISSED
    from tda.activations.capture import capture
    from tda.masks.build import build_mask

    at = app("page_masks.py")
    assert errors(at) == []
    at.multiselect(key="mask_methods").set_value(["griffin"]).run()
    at.slider(key="mask_density").set_value(0.5).run()
    layer = int(at.number_input(key="mask_layer").value)
    cap = capture(lm, default_prompt(), None, "sequence")
    active = make_rule(lm, "cett", 0.2).active_capture(cap)[layer]
    keep = build_mask("griffin", cap.acts, density=0.5).keep[layer]
    expect = ((active & keep).sum(-1).double() / active.sum(-1).double()).numpy()
    table = at.dataframe[0].value
    assert len(table) == len(cap.tokens)
    assert np.allclose(table["recall"], np.round(expect, 4))
    assert list(table["missed"]) == [int(x) for x in (active & ~keep).sum(-1)]
    assert metric(at, f"density, layer {layer}") == "0.500"
    # the token × neuron image: covered / missed / kept-but-idle, columns by activation frequency
    image = charts(at)[0]["data"][0]
    z = arr(image["z"]).astype(int)
    order = np.asarray([int(c[0]) for c in image["customdata"][0]])
    assert image["customdata"][0][0][1] in ("covered (active and kept)", "missed (active, not kept)",
                                            "kept but idle", "not active, not kept")
    assert sorted(order.tolist()) == list(range(lm.ffn.d_ff))
    a, k = active[:, order].numpy(), keep[order].numpy()[None, :]
    assert np.array_equal(z == COVERED, a & k) and np.array_equal(z == MISSED, a & ~k)
    assert np.array_equal(z == IDLE, ~a & k)
    counts = a.sum(0)
    assert np.all(np.diff(counts) <= 0)  # most often active first
    spec = charts(at)[1]
    bars = spec["data"]
    assert [b["type"] for b in bars] == ["bar", "bar"]
    assert np.allclose(arr(bars[0]["y"]).astype(float), expect, atol=1e-6)
    # overall density per layer: griffin keeps 50% in every layer
    dens = charts(at)[2]["data"][0]
    assert np.allclose(arr(dens["y"]).astype(float), 0.5)
    # the tokens read as on page 1 (decoded, "␣" for a space), never as raw pieces ("▁the")
    from app.widgets import token_labels

    assert list(table["token"]) == token_labels(lm, cap)


def test_masks_page_methods_side_by_side_and_rule(app):
    at = app("page_masks.py")
    at.multiselect(key="mask_methods").set_value(["tda", "tda_matched", "static", "random"]).run()
    assert errors(at) == [] and not at.exception
    images = [c for c in charts(at) if c["data"][0]["type"] == "heatmap"]
    assert len(images) == 1  # one figure: a coverage panel per method side by side, all of one height
    panels = [t for t in images[0]["data"] if t["type"] == "heatmap"]
    assert [t["name"] for t in panels] == ["tda", "tda_matched", "static", "random"]
    lay = images[0]["layout"]
    assert [a["text"] for a in lay["annotations"]] == ["tda", "tda_matched", "static", "random"]
    assert all(lay[f"xaxis{i if i > 1 else ''}"]["title"]["text"] for i in range(1, 5))  # every axis titled
    legend = [t["name"] for t in images[0]["data"] if t["type"] == "scatter"]
    assert legend == ["not active, not kept", "covered (active and kept)", "missed (active, not kept)",
                      "kept but idle"]  # the colours explained in the figure, not only in a caption
    dens = [float(m.value) for m in at.metric if m.label.startswith("density, layer")]
    assert len(dens) == 4 and 0 < dens[0] <= 1
    assert dens[2] == pytest.approx(0.5, abs=0.01)  # static keeps the target in every layer
    notes = [c.value for c in at.caption]
    assert any("mean over layers" in n for n in notes)  # target vs per-layer density, explained
    at.radio(key="rule").set_value("topp").run()
    at.slider(key="top_p").set_value(20.0).run()
    table = at.dataframe[0].value
    d_ff = 128
    assert set(table["active"]) == {round(0.2 * d_ff)}  # top-p: the same count for every token


# ------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("page,key", [("page_inertia.py", "prompt_inertia"), ("page_masks.py", "prompt_masks")])
def test_bad_prompts_show_errors(app, page, key):
    at = app(page)
    at.text_area(key=key).input("   ").run()
    assert not at.exception
    assert any("empty" in e for e in errors(at)), errors(at)
    at.text_area(key=key).input("word " * 400).run()
    assert not at.exception
    assert any("256" in e for e in errors(at)), errors(at)
    # the page recovers
    at.text_area(key=key).input("A short prompt again.").run()
    assert errors(at) == [] and not at.exception


def test_inertia_active_sets_ordered_by_frequency(app, lm):
    from analysis.activation import make_rule
    from app.state import default_prompt
    from tda.activations.capture import capture

    at = app()  # default: the active sets under the rule, neurons most often active first
    layer = int(at.number_input(key="inertia_layer").value)
    heat = [t for t in charts(at)[0]["data"] if t.get("type") == "heatmap"]
    rule = make_rule(lm, "cett", 0.2)
    caps = [capture(lm, default_prompt(), None, m) for m in ("isolated", "sequence")]
    seq_active = rule.active_capture(caps[1])[layer]
    ids = arr(heat[1]["customdata"]).astype(int)[0]
    counts = seq_active.sum(0).numpy()[ids]
    assert np.all(np.diff(counts) <= 0)  # stripes shared by many tokens gather at the left
    for t, cap in zip(heat, caps, strict=True):  # both panels: the same order, binary sets
        assert np.array_equal(arr(t["customdata"]).astype(int)[0], ids)
        z = arr(t["z"]).astype(float)
        assert np.array_equal(z, rule.active_capture(cap)[layer][:, ids].float().numpy())
    at.radio(key="inertia_show").set_value("masked").run()
    z = arr([t for t in charts(at)[0]["data"] if t.get("type") == "heatmap"][1]["z"]).astype(float)
    assert np.allclose(z, (caps[1].acts[layer].abs() * seq_active)[:, ids].numpy(), atol=1e-5)


def test_token_count_truncate_and_layer_refusal(app, lm):
    at = app()
    # one token count: the box's caption and the metric agree (BOS counted against the limit only)
    from app.state import default_prompt

    n = n_prompt_tokens(lm, default_prompt())
    note = next(c.value for c in at.caption if "-token limit" in c.value)
    assert note.startswith(f"{n} tokens") and note.endswith(f"{n + 1} of the 256-token limit)")
    assert metric(at, "tokens") == str(n)
    at.text_area(key="prompt_inertia").input("word " * 400).run()
    assert any("over the limit of 256" in c.value for c in at.caption)
    at.button(key="truncate_inertia").click().run()
    assert errors(at) == [] and not at.exception
    assert n_prompt_tokens(lm, at.text_area(key="prompt_inertia").value) <= 256
    # a layer out of range is refused visibly (the chart does not silently stay on the old one)
    at.number_input(key="inertia_layer").set_value(99).run()
    assert any("layer 99 out of range" in e for e in errors(at)) and not at.get("plotly_chart")
    at.number_input(key="inertia_layer").set_value(1).run()
    assert errors(at) == [] and at.get("plotly_chart")


def test_binary_view_pools_to_the_share_of_active_neurons():
    from app.views.inertia import mean_pool

    v = torch.tensor([[1.0, 0, 0, 1, 1], [0, 0, 0, 0, 1]])
    assert mean_pool(v, 2).tolist() == [[0.5, 0.5, 1.0], [0.0, 0.0, 1.0]]  # the short last bin: its own mean
    assert mean_pool(v, 1) is v


def test_zero_change_metric_is_neutral():
    from app.widgets import delta

    assert delta(-0.0001, "{:+.3f} vs isolated") == {"delta": "no change vs isolated", "delta_color": "off",
                                                      "delta_arrow": "off"}
    assert delta(0.02, "{:+.3f} vs isolated")["delta"] == "+0.020 vs isolated"
    assert delta(-3, "{:+d} vs isolated", inverse=True)["delta_color"] == "inverse"


def test_bad_model_paths_show_errors(app, tmp_path, monkeypatch):
    monkeypatch.setenv("TDA_MODEL_ROOTS", str(tmp_path))  # the box reads only under allowed roots
    at = app()
    at.selectbox(key="model_choice").select("local folder…").run()
    assert not at.exception
    at.text_input(key="model_path").input(str(tmp_path / "nope")).run()
    assert not at.exception
    assert any("not allowed or not found" in e for e in errors(at)), errors(at)
    bad = tmp_path / "bert"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({
        "model_type": "bert", "architectures": ["BertForMaskedLM"], "vocab_size": 100, "hidden_size": 32,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}))
    at.text_input(key="model_path").input(str(bad)).run()
    assert not at.exception
    assert any("unsupported architecture" in e for e in errors(at)), errors(at)
    # the sidebar still works: back to the tiny model
    at.selectbox(key="model_choice").select(MODEL).run()
    assert errors(at) == [] and not at.exception and metric(at, "tokens")


# ------------------------------------------------------------------------------------ page 3
def test_samples_page_verdicts_and_edits(app, lm):
    from analysis.activation import make_rule
    from analysis.similarity import similarity_study
    from tda.common.data import load_samples

    at = app("page_samples.py")
    assert errors(at) == []
    verdicts = at.dataframe[1].value
    assert list(verdicts["obs."]) == list("abcde")
    expect = similarity_study(lm, load_samples(), make_rule(lm, "cett", 0.2))
    holds = {k: v["cosine"]["all"]["holds"] for k, v in expect["observations"].items()}
    assert dict(zip(verdicts["obs."], verdicts["holds"], strict=True)) == holds
    def offdiag(m):
        m = np.array(m, dtype=float)
        np.fill_diagonal(m, np.nan)
        return m

    fig = charts(at)[0]
    z = np.array([[np.nan if v is None else v for v in row] for row in fig["data"][0]["z"]], dtype=float) \
        if isinstance(fig["data"][0]["z"], list) else arr(fig["data"][0]["z"]).astype(float)
    assert np.allclose(z, offdiag(expect["matrices"]["cosine"]["all"]), atol=1e-6, equal_nan=True)
    assert fig["layout"]["xaxis"]["title"]["text"] == "sample id" == fig["layout"]["yaxis"]["title"]["text"]
    assert all(t == "" or len(t.split(".")[1]) == 3 for row in fig["data"][0]["text"] for t in row)  # no bare "1"
    at.selectbox(key="sim_measure").select("jaccard_tda").run()
    at.selectbox(key="sim_group").select("late").run()
    fig = charts(at)[0]
    z = np.array([[np.nan if v is None else v for v in row] for row in fig["data"][0]["z"]], dtype=float) \
        if isinstance(fig["data"][0]["z"], list) else arr(fig["data"][0]["z"]).astype(float)
    assert np.allclose(z, offdiag(expect["matrices"]["jaccard_tda"]["late"]), atol=1e-6, equal_nan=True)
    at.selectbox(key="sim_measure").select("cosine").run()
    at.selectbox(key="sim_group").select("all").run()
    # edit a sample: the verdicts recompute (sample 13 made identical to sample 12)
    df = pd.DataFrame(load_samples())[["id", "text", "treatment"]]
    df.loc[df["id"] == 13, "text"] = df.loc[df["id"] == 12, "text"].item()
    at.session_state["samples_df"] = df
    at.run()
    assert errors(at) == [] and not at.exception
    edited = dict(zip(at.dataframe[1].value["obs."],
                      at.dataframe[1].value["margin"], strict=True))
    assert edited != dict(zip(verdicts["obs."], verdicts["margin"], strict=True))
    # fewer than the paper's 13: no verdicts, a clear note, no error
    at.session_state["samples_df"] = df[df["id"] <= 5]
    at.run()
    assert errors(at) == [] and any("ids 1..13" in i.value for i in at.info)
    # a blank text is a clear error
    bad = df.copy()
    bad.loc[0, "text"] = " "
    at.session_state["samples_df"] = bad
    at.run()
    assert not at.exception and any("non-empty" in e for e in errors(at)), errors(at)


# ------------------------------------------------------------------------------------ page 4
def test_recall_page_curves(app):
    at = app("page_recall.py")
    assert any("Run recall study" in i.value for i in at.info)
    at.slider(key="recall_tokens").set_value(8).run()
    at.multiselect(key="recall_methods").set_value(["tda", "griffin", "oracle"]).run()
    at.button(key="recall_run").click().run()
    assert errors(at) == [] and not at.exception
    figs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(figs) == 3  # recall, mass recall (vs density), TDA vs threshold
    names = {t.get("name") for t in figs[0]["data"]}
    assert {"griffin", "oracle"} <= names
    for t in figs[0]["data"]:
        y = arr(t["y"]).astype(float)
        assert np.all((y >= 0) & (y <= 1))
    griffin = next(t for t in figs[0]["data"] if t.get("name") == "griffin")
    assert np.all(np.diff(arr(griffin["y"]).astype(float)) >= -1e-9)  # more neurons, more recall
    summary = at.dataframe[0].value
    assert set(summary["method"]) == {"tda", "griffin", "oracle"}
    # readable column names, no raw keys (truth, param, truth_density)
    assert list(summary.columns) == ["method", "mask at", "mask density", "recall", "mass recall", "precision",
                                     "ground-truth density (decode tokens)"]
    assert summary.loc[summary["method"] == "griffin", "mask at"].item() == "density 0.5"
    assert summary.loc[summary["method"] == "tda", "mask at"].item() == "threshold scale 1"
    assert (summary.loc[summary["method"] == "oracle", "mass recall"].item()
            >= summary.loc[summary["method"] == "griffin", "mass recall"].item() - 1e-9)
    # an edit marks the result stale instead of silently mixing prompts
    at.text_area(key="prompt_recall").input("Another prompt.").run()
    assert any("changed" in w.value for w in at.warning)


# ------------------------------------------------------------------------------------ page 5
def test_generate_page(app, lm):
    from tda.engine.generate import generate

    at = app("page_generate.py")
    at.selectbox(key="gen_method").select("griffin").run()
    at.slider(key="gen_tokens").set_value(8).run()
    at.button(key="gen_run").click().run()
    assert errors(at) == [] and not at.exception
    table = at.dataframe[0].value
    assert list(table["method"]) == ["dense", "griffin"]
    assert table["FFN density"].tolist() == [1.0, 0.5]
    assert list(table["new tokens"]) == [8, 8]
    from app.state import default_prompt

    res = generate(lm, default_prompt(), "dense", max_new_tokens=8, min_new_tokens=8)
    assert at.code[0].value == res.texts[0]
    sparse = generate(lm, default_prompt(), "griffin", density=0.5, max_new_tokens=8, min_new_tokens=8)
    # timing: the median of the paired repeats' ratios, each repeat listed
    speed = float(metric(at, "decode speedup").rstrip("×"))
    runs = [[float(x) for x in r.split(", ")] for r in table["decode ms/token, each repeat"]]
    assert len(runs[0]) == len(runs[1]) == 3
    ratios = sorted(d / s for d, s in zip(*runs, strict=True))
    assert speed == pytest.approx(ratios[1], rel=0.05)
    # token agreement, aligned (LCS) and positional, and the first divergence, from the engine's token ids
    a, b = res.token_ids[0], sparse.token_ids[0]
    first = next((i for i in range(8) if a[i] != b[i]), None)
    lcs = [[0] * 9 for _ in range(9)]
    for i in range(8):
        for j in range(8):
            lcs[i + 1][j + 1] = lcs[i][j] + 1 if a[i] == b[j] else max(lcs[i][j + 1], lcs[i + 1][j])
    assert metric(at, "aligned token agreement") == f"{lcs[8][8] / 8:.0%}"
    caption = next(c.value for c in at.caption if "tokens aligned" in c.value)
    assert f"{lcs[8][8]} of 8 tokens aligned" in caption
    if first is not None:
        assert f"first divergence at token {first}" in caption
        assert f"positional agreement {sum(x == y for x, y in zip(a, b)) / 8:.0%}" in caption
    agree = json.loads(at.get("plotly_chart")[0].proto.spec)
    z = arr(agree["data"][0]["z"])
    assert z.shape == (2, 8) and sum(float(v) for v in z[1]) == lcs[8][8] == sum(float(v) for v in z[0])
    assert agree["layout"]["xaxis"]["range"] == [-0.5, 7.5]  # the axis starts at the first token, not at -1
    # names and one-line descriptions come from the method registry
    from tda.engine.methods.registry import get_method

    assert any(get_method("griffin").summary.split(": ", 1)[1] in c.value for c in at.caption)
    assert not any(h.value.startswith("dense: dense") for h in at.subheader)
    dens = json.loads(at.get("plotly_chart")[1].proto.spec)["data"][0]
    assert np.allclose(arr(dens["y"]).astype(float), 0.5)


def test_generate_page_bad_prompt(app):
    at = app("page_generate.py")
    at.text_area(key="prompt_generate").input("").run()
    at.button(key="gen_run").click().run()
    assert not at.exception and any("empty" in e for e in errors(at))
    assert not any("Press **Generate**" in i.value for i in at.info)  # no stale hint under the error


def test_generate_page_lists_engine_methods(app):
    from app.views.generate import method_label
    from tda.engine.generate import METHODS

    at = app("page_generate.py")
    assert list(at.selectbox(key="gen_method").options) == [method_label(m) for m in METHODS if m != "dense"]
    assert any("No frontier result" in i.value for i in at.info) or at.get("plotly_chart")


def _frontier_result(model_id: str) -> dict:
    rows = [{"method": "dense", "density_target": None, "density_run": 1.0, "decode_speedup": 1.0, "ceiling": 1.0,
             "ppl": 20.0, "ppl_lo": 18.0, "ppl_hi": 23.0, "agreement": 1.0, "mc_acc": 0.7},
            {"method": "griffin", "density_target": 0.5, "density_run": 0.5, "decode_speedup": 1.1, "ceiling": 1.15,
             "ppl": 80.0, "ppl_lo": 60.0, "ppl_hi": 100.0, "agreement": 0.5, "mc_acc": 0.6}]
    return {"rows": rows, "meta": {"model": {"model_id": model_id, "dtype": "float32"}, "rounds": 3,
                                   "heldout_texts": 24, "mc_items": 40, "timestamp": "2026-11-23T10:00:00"}}


def test_generate_page_shows_stored_frontier(app, monkeypatch, tmp_path):
    for name, model_id in (("frontier-tiny-llama", MODEL), ("frontier-other", "gemma-3-270m")):
        (tmp_path / name).mkdir()
        data = _frontier_result(model_id)
        if model_id != MODEL:
            data["rows"] = data["rows"][:1]
        (tmp_path / name / "frontier.json").write_text(json.dumps(data))
    monkeypatch.setenv("TDA_RESULTS_DIR", str(tmp_path))
    at = app("page_generate.py")
    fig = charts(at)[0]
    names = [t.get("name") for t in fig["data"]]
    assert "griffin" in names and "dense" in names  # this model's result, not the other one
    griffin = next(t for t in fig["data"] if t.get("name") == "griffin")
    assert arr(griffin["x"]).astype(float).tolist() == [1.1] and arr(griffin["y"]).astype(float).tolist() == [80.0]
    table = at.dataframe[0].value
    assert list(table["method"]) == ["dense", "griffin"] and table["ppl 95%"][1] == "[60, 100]"


def test_generate_page_runs_small_frontier(app, monkeypatch, tmp_path):
    monkeypatch.setenv("TDA_RESULTS_DIR", str(tmp_path))  # nothing stored
    monkeypatch.setattr("app.views.frontier.SMALL_FRONTIER", dict(
        rounds=1, prompt_tokens=8, new_tokens=3, limit=2, mc_limit=2, bandwidth_mb=8, boot_iters=100))
    at = app("page_generate.py")
    assert any("No frontier result" in i.value for i in at.info)
    at.multiselect(key="fr_methods").set_value(["griffin"]).run()
    at.multiselect(key="fr_densities").set_value([0.5]).run()
    at.button(key="fr_run").click().run()
    assert errors(at) == [] and not at.exception
    table = at.dataframe[0].value
    assert list(table["method"]) == ["dense", "griffin"] and table["density run"][1] == pytest.approx(0.5, abs=0.02)
    names = [t.get("name") for t in charts(at)[0]["data"]]
    assert "griffin" in names and "dense" in names


# ------------------------------------------------------------------------------------ sessions
def test_two_sessions_at_once_keep_their_own_results(monkeypatch, lm):
    """Two app sessions running at the same time on the shared model see only their own prompt."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("TDA_APP_MODEL", MODEL)
    prompts = ["One two three four five six seven.", "Completely different words here, and more of them too."]
    sessions = [AppTest.from_file(APP, default_timeout=TIMEOUT).run() for _ in prompts]
    for at, p in zip(sessions, prompts, strict=True):
        at.text_area(key="prompt_inertia").set_value(p)
    errs = []

    def go(at):
        try:
            for _ in range(2):
                at.run()
        except Exception as e:  # pragma: no cover - reported below
            errs.append(e)

    threads = [threading.Thread(target=go, args=(at,)) for at in sessions]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errs
    for at, p in zip(sessions, prompts, strict=True):
        assert not at.exception and errors(at) == []
        assert metric(at, "tokens") == str(n_prompt_tokens(lm, p))
        assert at.text_area(key="prompt_inertia").value == p


def test_capture_cache_is_bounded():
    from app import state

    assert state.capture._info.max_entries <= 32  # noqa: SLF001 - bounded per-prompt cache
    assert torch.get_num_threads() >= 1


def test_model_load_shows_progress_lines(app, monkeypatch, tmp_path):
    """The one-time conversion's progress lines (``load_model(progress=...)``) appear in the page."""
    import time as _time

    import tda.models.load

    real = tda.models.load.load_model
    fake = str(tmp_path / "needs-conversion")
    Path(fake).mkdir()
    (Path(fake) / "config.json").write_text("{}")
    monkeypatch.setenv("TDA_MODEL_ROOTS", str(tmp_path))

    def slow_load(spec, dtype="fp32", device="cpu", progress=None):
        if spec != fake:
            return real(spec, dtype=dtype, device=device, progress=progress)
        progress("one-time conversion of the model (test)…")
        _time.sleep(0.6)
        progress("writing the converted weights (test)…")
        _time.sleep(0.6)
        return real(MODEL, dtype=dtype)

    monkeypatch.setattr(tda.models.load, "load_model", slow_load)
    at = app()
    at.selectbox(key="model_choice").select("local folder…").run()
    at.text_input(key="model_path").input(fake).run()
    assert not at.exception and errors(at) == []
    texts = " ".join(m.value for m in at.markdown)
    assert "one-time conversion of the model (test)" in texts
    assert "writing the converted weights (test)" in texts
    assert metric(at, "tokens")  # and the page then works on the loaded model


def test_agreement_is_aligned_and_the_strip_wraps():
    from app.views.generate import STRIP_WIDTH, agreement_figure, divergence

    dense, sparse = [1, 2, 3, 4, 5, 6], [1, 9, 2, 3, 4, 5]  # sparse inserts one token, then repeats dense
    dv = divergence(dense, sparse)
    assert dv["first"] == 1 and dv["positional"] == pytest.approx(1 / 6) and dv["aligned"] == pytest.approx(5 / 6)
    n = 40
    ids = list(range(n))
    pair = {"dense": {"token_ids": ids, "tokens": [f"tok{i:03d}_long" for i in ids]},
            "sparse": {"token_ids": ids[:20] + [999] * 20, "tokens": [f"s{i}" for i in ids]}}
    fig = agreement_figure(pair).to_plotly_json()
    z = np.asarray(fig["data"][0]["z"], dtype=object)
    rows = -(-n // STRIP_WIDTH)
    assert z.shape == (2 * rows, STRIP_WIDTH)  # wrapped: never more than STRIP_WIDTH labels side by side
    assert all(len(t) <= 7 for row in fig["data"][0]["text"] for t in row)
    assert fig["layout"]["xaxis"]["range"] == [-0.5, STRIP_WIDTH - 0.5]
    line = fig["layout"]["shapes"][0]  # the first divergence (token 20) is in the second pair of rows
    assert line["x0"] == 20 % STRIP_WIDTH - 0.5 and line["y0"] == 2 - 0.5


def test_emptied_sample_cells_are_found_and_restored():
    from app.views.samples import cleared_cells, restore_cells

    before = pd.DataFrame({"id": [1, 2, 3], "text": ["a", "b", "c"], "treatment": ["x", "y", ""]})
    after = before.copy()
    after["treatment"] = None  # what Ctrl+A, Delete leaves
    after = after.drop(index=1)  # a deleted row is not an emptied cell
    after.loc[7] = [9, "new", None]  # an added row neither
    cells = cleared_cells(before, after)
    assert cells == [(0, "treatment")]  # row 2 had no treatment to lose
    back = restore_cells(before, after, cells)
    assert back.loc[0, "treatment"] == "x" and back.loc[7, "text"] == "new" and 1 not in back.index


def test_every_inertia_heatmap_has_axis_titles(app):
    at = app()
    for show in ("active", "masked", "raw"):
        for order in ("frequency", "index"):
            at.radio(key="inertia_show").set_value(show).run()
            at.radio(key="inertia_order").set_value(order).run()
            lay = charts(at)[0]["layout"]
            xs = [v for k, v in lay.items() if k.startswith("xaxis")]
            assert xs and all(x.get("title", {}).get("text") for x in xs), (show, order)
            assert lay["yaxis"]["title"]["text"] == "token"


def test_one_time_job_progress_is_one_display():
    from app.views.loading import CONVERSION_S, CONVERSION_STEPS, condensed, job_progress

    lines = [(0.0, "one-time conversion (about a minute)..."), (0.1, "step 1/4: assembling…"),
             (1.0, "step 1/4: assembling: done in 1 s"), (1.0, "step 2/4: tokenizer…"),
             (6.0, "step 2/4: tokenizer · 5 s · still working"), (11.0, "step 2/4: tokenizer · 10 s · still working")]
    # a step's start, heartbeats and end collapse into its newest line: no repeated first lines
    assert condensed([m for _, m in lines]) == ["one-time conversion (about a minute)...", "step 1/4: assembling: done in 1 s",
                                                "step 2/4: tokenizer · 10 s · still working"]
    frac, left = job_progress(lines, 11.0, 0.0)
    expect = (CONVERSION_STEPS[0] + 10.0) / CONVERSION_S  # step 1 done, 10 s into step 2
    assert frac == pytest.approx(expect) and left.startswith("about") and left.endswith("left")
    slower, _ = job_progress(lines[:3], 1.0, 0.0)
    assert slower == pytest.approx(CONVERSION_STEPS[0] / CONVERSION_S)
    assert job_progress([(0.0, "corpus · 3/10 (30%) · ~12 s left · 5 s")], 5.0, 0.0) == (0.3, "about 12 s left")
    assert job_progress([], 1.0, 0.0) == (None, "")


def test_background_jobs_prepare_the_next_pages(monkeypatch, tmp_path, lm):
    """The embedded model's next one-time jobs (kernels, then the neuron corpus statistics) run in a
    background thread with their progress lines; tiny models get none (the page runs them when needed)."""
    import tda.engine.kernel_build as kb
    from app import state
    from app.views.loading import job_progress
    from tda.activations.neuron_corpus import cached_corpus_stats

    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path))
    built = []
    monkeypatch.setattr(kb, "build", lambda: built.append(1) or True)
    job = state._Background(lm)
    assert job.corpus_done.wait(300) and job.error is None
    assert built == [1] and cached_corpus_stats(lm) is not None
    frac, left = job_progress(job.stamped, job.stamped[-1][0], job.started)
    assert frac == 1.0 and "corpus activations" in job.stamped[-1][1]


def test_no_background_jobs_for_tiny_models(app):
    from app import state

    app()
    assert not state._JOBS  # tiny-llama is not the embedded model
