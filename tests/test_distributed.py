"""Data-parallel corpus jobs: 2 CPU processes (gloo) give the same output files as one process.

The multi-process tests launch ``torchrun`` (or ``accelerate launch``) on ``python -m tda`` with
a tiny model and compare the files byte for byte with an in-process one-process run. What is
exact: calibration thresholds (the main process bisects the same gathered tokens), recall CSVs,
capture files and their index, perplexity/agreement sums (per-text floats added in text order),
summaries and Appendix C numbers. What differs: wall-clock fields (``seconds``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tda.common import distributed

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120


# ----- the helpers, in one process ---------------------------------------------------------------
@pytest.mark.parametrize("n,world,unit", [(0, 2, 1), (1, 2, 1), (7, 2, 1), (8, 3, 1), (20, 2, 8), (21, 4, 8),
                                          (5, 8, 1), (17, 3, 4)])
def test_shards_cover_every_item_once_in_order(n, world, unit):
    shards = [distributed.shard_range(n, unit=unit, world=world, rank_=r) for r in range(world)]
    assert [i for s in shards for i in s] == list(range(n))
    for s in filter(len, shards):  # whole units: each item is in the batch a one-process run puts it in
        assert s.start % unit == 0 and (s.stop == n or s.stop % unit == 0)


def test_shards_match_accelerate_split():
    from accelerate import PartialState

    state = PartialState(cpu=True)
    saved = {k: state._shared_state[k] for k in ("num_processes", "process_index")}
    items = list(range(11))
    try:
        for world in (2, 3, 4):
            for r in range(world):
                state._shared_state.update(num_processes=world, process_index=r)
                with state.split_between_processes(items) as got:
                    assert list(distributed.shard_range(len(items), world=world, rank_=r)) == got
    finally:
        state._shared_state.update(saved)


def test_one_process_helpers_are_the_identity():
    assert not distributed.is_distributed() and distributed.is_main() and not distributed.active()
    assert distributed.collect(lambda: 3) == [3]
    assert distributed.map_sharded(lambda i, x: (i, x * 2), ["a", "b"]) == [(0, "aa"), (1, "bb")]
    assert distributed.on_main(lambda: "x") == "x"
    with pytest.raises(ZeroDivisionError):  # one process: errors are not wrapped
        distributed.collect(lambda: 1 / 0)


def test_rank_from_launcher_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert distributed.is_distributed() and distributed.rank() == 2 and not distributed.is_main()
    assert distributed.shard_range(10, world=4, rank_=2) == range(6, 8)
    with distributed.local_section():  # inside a shard helpers act locally
        assert not distributed.active() and distributed.shard_range(10) == range(10)


# ----- launching 2 processes ---------------------------------------------------------------------
def _env(cache: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep),
               TDA_CACHE_DIR=str(cache), TDA_DIST_TIMEOUT="90", TDA_DIST_GRACE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TDA_DEBUG"):
        env.pop(k, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, cache: Path, module: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += (["-m", "tda"] if module else []) + [str(a) for a in args]
    return subprocess.run(cmd, cwd=ROOT, env=_env(cache), capture_output=True, text=True, timeout=TIMEOUT)


def accelerate_launch(*args, cache: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "tda", *[str(a) for a in args]]
    return subprocess.run(cmd, cwd=ROOT, env=_env(cache), capture_output=True, text=True, timeout=TIMEOUT)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture
def data(tmp_path) -> Path:
    from tda.common.data import load_texts

    path = tmp_path / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in load_texts()[:20]))  # > 4096 tokens
    return path


def test_calibrate_two_processes_is_bit_identical(run_cli, tmp_path, data, monkeypatch):
    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path / "cache1"))
    code, out1, err = run_cli("calibrate", "--model", "tiny-llama", "--data", data, "--cett", "0.3",
                              "--out", tmp_path / "one.json")
    assert code == 0, err
    proc = _ok(accelerate_launch("calibrate", "--model", "tiny-llama", "--data", data, "--cett", "0.3",
                                 "--out", tmp_path / "two.json", cache=tmp_path / "cache2"))
    one, two = (tmp_path / "one.json").read_bytes(), (tmp_path / "two.json").read_bytes()
    assert json.loads(one)["n_tokens"] == 4096  # the seeded subsample of > 4096 tokens is exercised
    assert one == two  # thresholds and densities bit-identical: the same tokens, one bisection
    assert proc.stdout.count("wrote ") == 1  # printed once, by the main process


def test_recall_two_processes_gives_identical_files(run_cli, tmp_path, data, monkeypatch):
    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path / "cache1"))
    code, _, err = run_cli("calibrate", "--model", "tiny-llama", "--data", data, "--limit", "4",
                           "--out", tmp_path / "cal.json")
    assert code == 0, err
    args = ["recall", "--model", "tiny-llama", "--data", data, "--limit", "5", "--new-tokens", "4",
            "--densities", "0.25,0.5", "--scales", "0.5,1,2", "--thresholds", tmp_path / "cal.json", "--no-png"]
    code, _, err = run_cli(*args, "--out", tmp_path / "one")
    assert code == 0, err
    proc = _ok(torchrun(*args, "--out", tmp_path / "two", cache=tmp_path / "cache2"))
    for name in ("recall.csv", "recall_per_prompt.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    s1, s2 = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    assert s1.pop("seconds") >= 0 and s2.pop("seconds") >= 0  # wall time is the one difference
    assert s1 == s2 and [g["prompt"] for g in s2["generations"]] == [0, 1, 2, 3, 4]
    assert proc.stderr.count("prompt 1/5") == 1 and "prompt 5/5" not in proc.stderr  # progress: main only


def test_api_corpus_job_two_processes(tmp_path, monkeypatch):
    """Appendix C, perplexity/agreement/summaries and a capture folder: 2 processes == 1."""
    import tda.common.data

    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    import dist_job

    one = tmp_path / "one"
    one.mkdir()
    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path / "cache1"))
    monkeypatch.setattr(tda.common.data, "xsum_prompt", dist_job.short_prompt)
    ref = dist_job.compute(one)
    two = tmp_path / "two"
    two.mkdir()
    _ok(torchrun(ROOT / "tests" / "dist_job.py", two, cache=tmp_path / "cache2", module=False))
    got = torch.load(two / "result.pt", weights_only=False)
    assert got["ppl"] == ref["ppl"] and got["summ"] == ref["summ"]  # exact: same floats, same order
    assert got["scale"]["result"] == ref["scale"]["result"]
    for rule, by_src in ref["scale"]["rates"].items():
        for src, by_mode in by_src.items():
            for mode, r in by_mode.items():
                assert torch.equal(got["scale"]["rates"][rule][src][mode], r)
    files = sorted(p.name for p in (one / "caps").iterdir())
    assert files == sorted(p.name for p in (two / "caps").iterdir()) and "index.json" in files
    for name in files:
        assert (one / "caps" / name).read_bytes() == (two / "caps" / name).read_bytes(), name


def test_failure_in_one_process_ends_the_job_with_one_line(tmp_path, data):
    bad = tmp_path / "bad.jsonl"
    shutil.copy(data, bad)
    with bad.open("a") as f:  # the last text is too long: only the second process meets it
        f.write(json.dumps({"text": "city " * 700}) + "\n")
    proc = torchrun("capture", "--model", "tiny-llama", "--data", bad, "--layers", "0", "--out", tmp_path / "caps",
                    cache=tmp_path / "cache")
    assert proc.returncode != 0
    ours = [ln for ln in proc.stderr.splitlines() if ln.startswith(("error:", "[process"))]
    assert ours == ["error: process 1 of 2 failed: the prompt has 703 tokens; the limit is 512"], proc.stderr[-2000:]
    assert not [ln for ln in proc.stderr.splitlines() if ln.strip().startswith("File") and "/tda/" in ln]
    assert list((tmp_path / "caps").iterdir()) == []  # the first process removed what it had written


def test_capture_folder_cli_and_info(run_cli, tmp_path, data):
    code, out, err = run_cli("capture", "--model", "tiny-llama", "--data", data, "--limit", "3", "--layers", "1",
                             "--out", tmp_path / "caps")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "caps").iterdir() if not p.name.startswith(".")) == [
        "00000.safetensors", "00001.safetensors", "00002.safetensors", "index.json"]  # + the run's marker
    code, out, _ = run_cli("info", tmp_path / "caps")
    assert code == 0 and "capture set of 3 texts" in out and "layers [1]" in out
    code, _, err = run_cli("capture", "--model", "tiny-llama", "--data", data, "--prompt", "x", "--out", tmp_path / "c2")
    assert code == 2 and "exactly one of --prompt, --prompt-file or --data" in err
    code, _, err = run_cli("info", tmp_path)
    assert code == 2 and "not a capture folder" in err
