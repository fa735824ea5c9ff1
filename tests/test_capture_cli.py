"""`tda models`, `tda capture`, `tda info`, and every bad input: one line, exit 2, no file left."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tda.activations.capture import Capture

ROOT = Path(__file__).resolve().parent.parent


def _no_files(folder):
    return [p.name for p in folder.iterdir()] == []


def test_models_lists_specs(run_cli):
    code, out, _ = run_cli("models")
    assert code == 0
    for s in ("gemma-3-270m", "tiny-llama", "tiny-gpt2", "random:llama-1b", "random:llama-2-7b"):
        assert s in out


def test_capture_and_info(run_cli, tmp_path):
    out_file = tmp_path / "x.safetensors"
    code, out, err = run_cli("capture", "--model", "tiny-gemma3", "--prompt", "Almost one million people",
                             "--layers", "0,2", "--mode", "isolated", "--out", out_file)
    assert code == 0, err
    assert "tokens" in out and "d_ff 128" in out
    cap = Capture.load(out_file)
    assert cap.layers == [0, 2] and cap.mode == "isolated"
    code, out, _ = run_cli("info", out_file)
    assert code == 0 and "isolated" in out and "tiny-gemma3" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", ""], "the prompt is empty"),
        (["--prompt", "   "], "the prompt is empty"),
        (["--prompt", "city " * 600], "the limit is 512"),
        (["--prompt", "hello", "--layers", "0,7"], "layer 7 out of range"),
        (["--prompt", "hello", "--layers", "a,b"], "comma-separated"),
        (["--prompt", "hello", "--model", "no-such-model"], "unknown model spec"),
        (["--prompt", "hello", "--mode", "diagonal"], "unknown mode"),
    ],
)
def test_capture_bad_input(run_cli, tmp_path, args, message):
    base = ["capture", "--model", "tiny-llama", "--out", tmp_path / "o.safetensors"]
    code, out, err = run_cli(*(base + args))
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert _no_files(tmp_path)


def test_unsupported_architecture_cli(run_cli, tmp_path):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64)
    GPTNeoXForCausalLM(cfg).save_pretrained(tmp_path / "neox")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, err = run_cli("capture", "--model", tmp_path / "neox", "--prompt", "hi", "--out", out_dir / "o.st")
    assert code == 2 and "unsupported architecture 'gpt_neox'" in err and err.count("\n") == 1
    assert _no_files(out_dir)


def test_out_is_directory_or_unwritable(run_cli, tmp_path, monkeypatch):
    code, _, err = run_cli("capture", "--model", "tiny-llama", "--prompt", "hi", "--out", tmp_path)
    assert code == 2 and "is an existing directory" in err
    locked = tmp_path / "locked"
    locked.mkdir()
    # Root can write anywhere, so simulate a read-only folder at the permission check itself.
    import tda.common.atomic

    monkeypatch.setattr(tda.common.atomic.os, "access", lambda path, mode: False)
    code, _, err = run_cli("capture", "--model", "tiny-llama", "--prompt", "hi", "--out", locked / "o.st")
    assert code == 2 and "not writable" in err and err.count("\n") == 1
    assert list(locked.iterdir()) == []


def test_unwritable_parent_as_file(run_cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli("capture", "--model", "tiny-llama", "--prompt", "hi", "--out", blocker / "o.st")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_info_on_corrupt_file(run_cli, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_text("not safetensors")
    code, _, err = run_cli("info", bad)
    assert code == 2 and "not a valid tda capture file" in err and err.count("\n") == 1
    code, _, err = run_cli("info", tmp_path / "missing.safetensors")
    assert code == 2 and "does not exist" in err


def test_hub_name_offline_cli(run_cli, tmp_path, monkeypatch):
    import tda.common.hub as hub

    monkeypatch.setattr(hub, "hub_resolvable", lambda: False)
    code, _, err = run_cli("capture", "--model", "google/gemma-3-270m", "--prompt", "hi", "--out", tmp_path / "o")
    assert code == 2 and "offline" in err and "gemma-3-270m" in err and err.count("\n") == 1
    assert _no_files(tmp_path)


@pytest.mark.slow
def test_capture_on_gemma_cli(tmp_path, gemma):
    """In a child process: the CLI loads its own Gemma, which beside the session's copy (``gemma``, which
    converted the cache) would put two 1.1 GB models in the suite's process."""
    out_file = tmp_path / "g.safetensors"
    r = subprocess.run([sys.executable, "-m", "tda", "capture", "--model", "gemma-3-270m", "--prompt",
                        "Almost one million people visited the city", "--layers", "0,3,17", "--out", str(out_file)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    cap = Capture.load(out_file)
    assert cap.acts.shape == (3, 7, 2048) and cap.model_id == "gemma-3-270m"
