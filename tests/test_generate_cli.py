"""`tda generate` (and the bad-input paths of generate/bench/eval) through the CLI, in-process."""

from __future__ import annotations

import json

import pytest
import torch


def test_generate_cli_writes_json(run_cli, tmp_out):
    path = tmp_out / "g.json"
    code, out, err = run_cli("generate", "--model", "tiny-llama", "--prompt", "the cat sat on", "--method", "griffin",
                             "--density", "0.5", "--max-new-tokens", "5", "--min-new-tokens", "5", "--json", path)
    assert code == 0, err
    data = json.loads(path.read_text())
    assert set(data) >= {"text", "token_ids", "density", "timings"}
    assert len(data["token_ids"]) == 5 and data["density"] == pytest.approx(0.5)
    assert data["timings"]["decode_steps"] == 4
    assert "density 0.500" in out and "ms/token" in out and data["text"] in out


def test_generate_cli_matches_api(run_cli, tmp_out, tiny_llama):
    from tda.engine.generate import generate

    path = tmp_out / "t.json"
    code, _, err = run_cli("generate", "-m", "tiny-llama", "-p", "one two three", "--method", "tda", "--density",
                           "0.3", "-n", "6", "--json", path)
    assert code == 0, err
    ref = generate(tiny_llama, "one two three", "tda", density=0.3, max_new_tokens=6)
    assert json.loads(path.read_text())["token_ids"] == ref.token_ids[0]


@pytest.mark.parametrize("args,msg", [
    (["--method", "bogus"], "unknown method"),
    (["--method", "griffin", "--density", "0"], "density must be in (0, 1]"),
    (["--method", "griffin", "--density", "1.2"], "density must be in (0, 1]"),
    (["--max-new-tokens", "0"], "max-new-tokens"),
    (["--max-new-tokens", "100000"], "exceeds the context"),
    (["--method", "griffin"], "needs a density"),
    (["--speculate", "5"], "--speculate takes K in 1..4"),
    (["--speculate", "2", "--sample"], "--speculate takes K in 1..4"),
    (["--speculate", "2"], "needs the gguf format"),
])
def test_generate_cli_bad_input(run_cli, args, msg):
    code, out, err = run_cli("generate", "-m", "tiny-llama", "-p", "hello there", *args)
    assert code == 2
    assert msg in err and len(err.strip().splitlines()) == 1


def test_generate_cli_empty_prompt(run_cli):
    code, _, err = run_cli("generate", "-m", "tiny-llama", "-p", "   ")
    assert code == 2 and "empty" in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu(run_cli):
    code, _, err = run_cli("generate", "-m", "tiny-llama", "-p", "hello", "--device", "cuda")
    assert code == 2 and "cuda" in err.lower() and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,msg", [
    (["bench", "--model", "tiny-llama", "--methods", "dense,warp"], "unknown bench method"),
    (["bench", "--model", "tiny-llama", "--density", "2"], "density"),
    (["eval", "--model", "tiny-llama", "--methods", "dense,foo", "--out", "OUT"], "unknown method"),
    (["eval", "--model", "tiny-llama", "--densities", "0.5,0", "--out", "OUT"], "density"),
])
def test_bench_eval_bad_input(run_cli, tmp_out, args, msg):
    args = [str(tmp_out / "o") if a == "OUT" else a for a in args]
    code, _, err = run_cli(*args)
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1
