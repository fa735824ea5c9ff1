"""The bad-input table of issue 28: each exits 2 with one line naming the culprit, before the model loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GEN = ("generate", "-m", "tiny-llama", "--prompt", "hello there")


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a model is loaded: every refusal here must come first."""
    import tda.models.load as L

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(L, "load_model", boom)


@pytest.mark.parametrize("args,culprit", [
    ((*GEN, "--sample", "--temperature", "0"), "--temperature"),
    ((*GEN, "--sample", "--temperature", "-1"), "--temperature"),
    ((*GEN, "--sample", "--temperature", "nan"), "--temperature"),
    ((*GEN, "--temperature", "inf"), "--temperature"),
    ((*GEN, "--sample", "--top-k", "-1"), "--top-k"),
    ((*GEN, "--sample", "--top-p", "0"), "--top-p"),
    ((*GEN, "--sample", "--top-p", "2"), "--top-p"),
    (("--memory-budget", "", *GEN), "--memory-budget"),
    (("eval", "-m", "tiny-llama", "--mc-limit", "-5", "--out", "{tmp}/ev"), "--mc-limit"),
    (("capture", "-m", "tiny-llama", "--prompt", "hi", "--layers", "", "--out", "{tmp}/c.pt"), "--layers"),
    (("capture", "-m", "tiny-llama", "--prompt", "hi", "--layers", "0,,1", "--out", "{tmp}/c.pt"), "layers"),
])
def test_bad_argument_is_one_line_exit_2_before_loading(run_cli, no_model_load, tmp_path, args, culprit):
    args = [str(a).replace("{tmp}", str(tmp_path)) for a in args]
    code, out, err = run_cli(*args)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and culprit in lines[0], err
    assert not (tmp_path / "ev").exists()  # eval makes no folder on an argument error


@pytest.mark.parametrize("var,value", [
    ("TDA_THREADS", "99999"),
    ("TDA_THREADS", "0"),
    ("TDA_THREADS", "many"),
    ("TDA_KERNELS_BACKEND", "bogus"),
    ("TDA_CACHE_DIR", "/proc/x"),
])
def test_bad_environment_is_one_line_exit_2(run_cli, no_model_load, monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    code, out, err = run_cli(*GEN)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and var in lines[0], err


def test_threads_up_to_the_cores_are_accepted(monkeypatch):
    from tda.cli.checks import check_environment, cores

    monkeypatch.setenv("TDA_THREADS", str(cores()))
    check_environment()


@pytest.mark.parametrize("data", [b"\xff\xfe\x00\x01binary", b"text\x00with a NUL"])
def test_binary_prompt_on_stdin_is_refused(data):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "tda.cli.main", "generate", "-m", "tiny-llama", "--prompt", "-"],
                       input=data, capture_output=True, cwd=ROOT, env=env, timeout=120)
    err = p.stderr.decode()
    assert p.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "standard input" in lines[0], err


@pytest.mark.parametrize("text,where", [('{"text": "a"}\n{broken', "line 2"), ('[{"text": ', "line 1")])
def test_malformed_data_file_is_one_line_naming_it(run_cli, tmp_path, text, where):
    f = tmp_path / "d.jsonl"
    f.write_text(text)
    code, _, err = run_cli("calibrate", "-m", "tiny-llama", "--data", f, "--out", tmp_path / "c.json")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(f) in lines[0] and where in lines[0], err


def test_neuron_takes_negative_layers(run_cli):
    code, out, err = run_cli("neuron", "-m", "tiny-llama", "-l", "-1", "-i", "3", "--prompt", "hello there")
    assert code == 0, err
    assert "of layer 2" in out
