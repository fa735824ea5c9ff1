"""``tda figures``, ``tda inertia``, ``tda similarity`` end to end on a tiny model, and bad input."""

from __future__ import annotations

import json

import pytest

FAST = ["--scale-samples", "4", "--scale-tokens", "6", "--no-png"]


def test_similarity_cli_writes_matrices_and_verdicts(run_cli, tmp_path):
    out = tmp_path / "sim.json"
    code, stdout, err = run_cli("similarity", "--model", "tiny-gemma3", "--json", out)
    assert code == 0, err
    data = json.loads(out.read_text())
    assert len(data["matrices"]["cosine"]["all"]) == 13
    for key in "abcde":
        v = data["observations"][key]["jaccard_tda"]["late"]
        assert isinstance(v["holds"], bool) and "margin" in v and v["comparisons"]
    assert "(a)" in stdout


def test_inertia_cli(run_cli, tmp_path):
    js, page = tmp_path / "i.json", tmp_path / "i.html"
    code, stdout, err = run_cli("inertia", "--model", "tiny-gemma3", "--prompt", "Almost one million people visited "
                                "the city during the festival period over Christmas", "--rule", "topp",
                                "--top-p", "0.2", "--layer", "1", "--json", js, "--html", page)
    assert code == 0, err
    data = json.loads(js.read_text())
    assert data["result"]["layers"] == [1] and data["result"]["rule"]["rule"] == "topp"
    assert data["claim4"]["verdict"] in ("holds", "partly holds", "fails")
    assert "Claim 4" in stdout and page.stat().st_size > 100_000


def test_inertia_cli_says_when_the_token_window_cuts_the_prompt(run_cli, lm_tiny_gemma3_tokens):
    text, total = lm_tiny_gemma3_tokens
    code, _, err = run_cli("inertia", "--model", "tiny-gemma3", "--prompt", text, "--tokens", "4", "--layer", "1")
    assert code == 0, err
    assert f"studied the first 4 of the prompt's {total} tokens" in err and f"--tokens {total}" in err
    code, _, err = run_cli("inertia", "--model", "tiny-gemma3", "--prompt", text, "--tokens", str(total),
                           "--layer", "1")
    assert code == 0 and "studied the first" not in err


@pytest.fixture
def lm_tiny_gemma3_tokens():
    from tda.models.load import load_model

    text = "Almost one million people visited the city during the festival period over Christmas"
    lm = load_model("tiny-gemma3")
    return text, len(lm.tokenizer(text, add_special_tokens=False).input_ids)


@pytest.mark.parametrize("args, msg", [
    (["inertia", "--model", "tiny-gemma3", "--prompt", "the city", "--layer", "7"], "layer 7 out of range"),
    (["inertia", "--model", "tiny-gemma3", "--prompt", "the city", "--cett", "1.5"], "CETT target must be in (0, 1)"),
    (["inertia", "--model", "tiny-gemma3", "--prompt", "the city", "--cett", "0"], "CETT target must be in (0, 1)"),
    (["inertia", "--model", "tiny-gemma3", "--prompt", "the city", "--rule", "median"], "unknown activation rule"),
    (["figures", "--model", "tiny-gemma3", "--top-p", "1"], "top-p fraction must be in (0, 1)"),
    (["similarity", "--model", "tiny-gemma3", "--cett", "-0.1", "--json", "x.json"], "CETT target must be in (0, 1)"),
])
def test_bad_arguments_one_line(run_cli, args, msg):
    code, _, err = run_cli(*args)
    assert code == 2
    assert msg in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("content, msg", [
    ([{"id": 1, "text": "only one"}], "at least 2 samples"),
    ([{"id": 1, "text": "a"}, {"id": 2, "treatment": "no text"}], "lacks a non-empty 'text'"),
    ({"not": "a list"}, "at least 2 samples"),
])
def test_bad_sample_files(run_cli, tmp_path, content, msg):
    f = tmp_path / "s.json"
    f.write_text(json.dumps(content))
    out = tmp_path / "out.json"
    code, _, err = run_cli("similarity", "--model", "tiny-gemma3", "--samples", f, "--json", out)
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    code, _, err = run_cli("figures", "--model", "tiny-gemma3", "--samples", f, "--out", tmp_path / "figs")
    assert code == 2 and msg in err and not (tmp_path / "figs").exists()


def test_output_folder_not_usable(run_cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli("figures", "--model", "tiny-gemma3", "--out", blocker, *FAST)
    assert code == 2 and "not a directory" in err
    code, _, err = run_cli("figures", "--model", "tiny-gemma3", "--out", blocker / "sub", *FAST)
    assert code == 2 and "cannot create output folder" in err
    code, _, err = run_cli("similarity", "--model", "tiny-gemma3", "--json", blocker / "x.json")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_figures_unknown_layer_writes_nothing(run_cli, tmp_path):
    out = tmp_path / "figs"
    code, _, err = run_cli("figures", "--model", "tiny-gemma3", "--out", out, "--layer", "9", *FAST)
    assert code == 2 and "layer 9 out of range" in err
    assert not out.exists()


def test_figures_end_to_end_and_deterministic(run_cli, tmp_path):
    out = tmp_path / "figs"
    code, _, err = run_cli("figures", "--model", "tiny-gemma3", "--out", out, *FAST)
    assert code == 0, err
    man = json.loads((out / "manifest.json").read_text())
    assert man["model_id"] == "tiny-gemma3" and man["version"] and man["settings"]["cett"] == 0.2
    assert man["png_error"]  # PNGs not requested
    names = set(man["figures"])
    assert {"study1_heatmaps_L1", "study1_heatmaps_L1_control", "study1_all_layers", "study2_verdicts",
            "study2_similarity_cosine", "appC_samples_L1_cett0.2"} <= names
    assert all(f["html"].startswith("figures.html#") for f in man["figures"].values())
    page = (out / "figures.html").read_text()
    assert all(f"id='{n}'" in page for n in names)
    report = (out / "REPORT.md").read_text()
    for needle in ("Claim 4 verdict (cett0.2)", "## Appendix C", "| (a) | cosine |", "What the model shows"):
        assert needle in report
    first = (out / "results.json").read_text()
    assert not list(out.glob(".staging-*"))
    code, _, err = run_cli("figures", "--model", "tiny-gemma3", "--out", out, *FAST)
    assert code == 0, err
    assert (out / "results.json").read_text() == first
    assert (out / "REPORT.md").read_text() == report


def test_png_failure_falls_back_to_html(monkeypatch, tmp_path):
    import plotly.graph_objects as go
    import plotly.io as pio

    from analysis.export import export_figures

    def boom(*a, **k):
        raise RuntimeError("no browser here")

    monkeypatch.setattr(pio, "write_images", boom)
    files, err = export_figures({"f": go.Figure(go.Scatter(y=[1, 2]))}, tmp_path)
    assert err.startswith("RuntimeError: no browser") and files == {"f": {"png": None, "html": "figures.html#f"}}
    assert (tmp_path / "figures.html").exists() and not (tmp_path / "f.png").exists()
