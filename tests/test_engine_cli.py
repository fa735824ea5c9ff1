"""``tda calibrate`` and ``tda recall`` through the CLI (in-process) on tiny models."""

from __future__ import annotations

import csv
import json

import pytest

from tda.masks.calibrate import Calibration

TEXTS = ["The cat sat on the mat and looked at the birds.", "Prices rose sharply in March, said the bank.",
         "A quick brown fox jumps over the lazy dog near the river bank."]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def data_file(tmp_path):
    p = tmp_path / "texts.jsonl"
    p.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return p


@pytest.fixture
def thresholds_file(tmp_path, tiny_llama, data_file, capsys):
    from tda.masks.calibrate import calibrate

    path = calibrate(tiny_llama, TEXTS, 0.2).save(tmp_path / "tiny-llama-cett.json")
    capsys.readouterr()  # the calibration's progress lines are not the command's output
    return path


def _one_line_error(code, err, match):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert match in lines[0]


def test_calibrate_writes_thresholds_and_prints_them(run_cli, tmp_path, data_file):
    out = tmp_path / "cal.json"
    code, stdout, err = run_cli("calibrate", "--model", "tiny-llama", "--data", data_file, "--cett", "0.3", "--out", out)
    assert code == 0, err
    cal = Calibration.load(out)
    assert cal.model_id == "tiny-llama" and cal.target == 0.3 and cal.n_layers == 3 and cal.d_ff == 128
    for L, t in enumerate(cal.thresholds):
        assert f"{t:.5g}" in stdout and f"{cal.densities[L]:.3f}" in stdout
    # second run: same answer, from the cache
    code, stdout2, _ = run_cli("calibrate", "--model", "tiny-llama", "--data", data_file, "--cett", "0.3",
                               "--out", tmp_path / "cal2.json")
    assert code == 0 and "from cache" in stdout2
    assert Calibration.load(tmp_path / "cal2.json") == cal


@pytest.mark.parametrize(("args", "match"), [
    (["--cett", "0"], "CETT target must be in (0, 1)"),
    (["--cett", "1"], "CETT target must be in (0, 1)"),
    (["--cett", "1.5"], "CETT target must be in (0, 1)"),
    (["--limit", "0"], "limit"),
])
def test_calibrate_bad_arguments(run_cli, tmp_path, data_file, args, match):
    out = tmp_path / "cal.json"
    code, _, err = run_cli("calibrate", "--model", "tiny-llama", "--data", data_file, *args, "--out", out)
    _one_line_error(code, err, match)
    assert not out.exists()


@pytest.mark.parametrize("content", ["", json.dumps({"text": "   "}) + "\n"])
def test_calibrate_empty_data(run_cli, tmp_path, content):
    data = tmp_path / "empty.jsonl"
    data.write_text(content)
    out = tmp_path / "cal.json"
    code, _, err = run_cli("calibrate", "--model", "tiny-llama", "--data", data, "--out", out)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert not out.exists()


def test_recall_writes_csv_figures_and_summary(run_cli, tmp_path, thresholds_file, data_file):
    out = tmp_path / "recall"
    code, stdout, err = run_cli(
        "recall", "--model", "tiny-llama", "--data", data_file, "--limit", "2", "--new-tokens", "3",
        "--densities", "0.25,0.5", "--scales", "0.5,1,2", "--thresholds", thresholds_file, "--no-png", "--out", out,
    )
    assert code == 0, err
    rows = list(csv.DictReader((out / "recall.csv").open()))
    # aggregated over the 2 prompts: truth(2) × (tda scales 3 + 5 methods × 2 densities) × 3 layers
    assert len(rows) == 2 * (3 + 5 * 2) * 3
    assert {r["n"] for r in rows} == {"2"}
    assert {r["method"] for r in rows} == {"tda", "tda_matched", "griffin", "static", "random", "oracle"}
    per_prompt = list(csv.DictReader((out / "recall_per_prompt.csv").open()))
    assert len(per_prompt) == 2 * len(rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_prompts"] == 2 and summary["new_tokens"] == 3
    assert summary["calibration"]["thresholds"] == Calibration.load(thresholds_file).thresholds
    for name in ("recall_vs_density", "mass_recall_vs_density", "recall_vs_threshold", "recall_by_layer"):
        page = (out / f"{name}.html").read_text()
        assert 1000 < len(page) < 200_000 and 'src="plotly.min.js"' in page  # plotly.js once, beside the pages
    assert (out / "plotly.min.js").stat().st_size > 1_000_000
    assert "per layer" in (out / "recall_by_layer.html").read_text() and "mean over layers" not in (
        out / "recall_by_layer.html").read_text()
    assert "± std over prompts" in stdout
    assert not list(out.glob("*.png"))
    assert "griffin" in stdout and "density 0.5" in stdout and "random" in stdout


@pytest.mark.parametrize(("args", "match"), [
    (["--densities", "0.5,1.5"], "density must be in (0, 1]"),
    (["--densities", "0:0.5:0.1"], "density must be in (0, 1]"),
    (["--densities", "x"], "densities must be"),
    (["--new-tokens", "0"], "new tokens must be an integer of at least 1"),
    (["--cett", "1.0"], "CETT target must be in (0, 1)"),
    (["--top-p", "0"], "top-p"),
    (["--methods", "griffin,magic"], "unknown method"),
])
def test_recall_bad_arguments(run_cli, tmp_path, args, match):
    out = tmp_path / "recall"
    code, _, err = run_cli("recall", "--model", "tiny-llama", "--prompt", "hello there", *args, "--out", out)
    _one_line_error(code, err, match)
    assert not out.exists()


def test_recall_prompt_or_data(run_cli, tmp_path, data_file):
    out = tmp_path / "recall"
    code, _, err = run_cli("recall", "--model", "tiny-llama", "--out", out)
    _one_line_error(code, err, "give exactly one of --prompt, --prompt-file or --data")
    code, _, err = run_cli("recall", "--model", "tiny-llama", "--prompt", "x", "--data", data_file, "--out", out)
    _one_line_error(code, err, "give exactly one of --prompt, --prompt-file or --data")
    assert not out.exists()


def test_recall_thresholds_from_another_model(run_cli, tmp_path, thresholds_file):
    out = tmp_path / "recall"
    code, _, err = run_cli("recall", "--model", "tiny-gemma3", "--prompt", "hello there", "--new-tokens", "2",
                           "--thresholds", thresholds_file, "--out", out)
    _one_line_error(code, err, "thresholds are for model 'tiny-llama'")
    assert not out.exists()
    # same id but another d_ff is refused too
    cal = Calibration.load(thresholds_file)
    wrong = Calibration(**{**cal.__dict__, "d_ff": 4096}).save(tmp_path / "wrong.json")
    code, _, err = run_cli("recall", "--model", "tiny-llama", "--prompt", "hello there", "--new-tokens", "2",
                           "--thresholds", wrong, "--out", out)
    _one_line_error(code, err, "d_ff 4096")
    assert not out.exists()
