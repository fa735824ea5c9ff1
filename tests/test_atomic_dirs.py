"""Output folders hold one complete run or the previous one; leftovers of killed runs are removed
on the next start (issue 28, items 2 and 6)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tda.common.atomic_dir import MARKER, atomic_dir, recover

ROOT = Path(__file__).resolve().parents[1]


def _write_run(target: Path, files: dict[str, str]) -> None:
    with atomic_dir(target, command="test") as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)


def test_new_folder_appears_whole(tmp_path):
    t = tmp_path / "out"
    _write_run(t, {"a.csv": "1", "b.md": "2"})
    assert sorted(p.name for p in t.iterdir()) == sorted(["a.csv", "b.md", MARKER])
    assert not list(tmp_path.glob(".out.*"))


def test_a_previous_run_is_replaced_whole(tmp_path):
    t = tmp_path / "out"
    _write_run(t, {"a.csv": "old", "plot.html": "old"})
    _write_run(t, {"a.csv": "new"})
    assert sorted(p.name for p in t.iterdir()) == sorted(["a.csv", MARKER])  # no stale plot.html beside it
    assert (t / "a.csv").read_text() == "new"


def test_users_own_files_are_kept(tmp_path):
    t = tmp_path / "out"
    t.mkdir()
    (t / "notes.txt").write_text("mine")
    _write_run(t, {"a.csv": "old", "plot.html": "old"})
    _write_run(t, {"a.csv": "new"})
    assert (t / "notes.txt").read_text() == "mine"
    assert (t / "a.csv").read_text() == "new" and not (t / "plot.html").exists()


def test_a_failed_run_leaves_the_previous_one(tmp_path):
    t = tmp_path / "out"
    _write_run(t, {"a.csv": "old"})
    with pytest.raises(RuntimeError), atomic_dir(t) as tmp:
        (tmp / "a.csv").write_text("half")
        raise RuntimeError("boom")
    assert (t / "a.csv").read_text() == "old"
    assert not list(tmp_path.glob(".out.*"))


def test_a_swap_killed_half_way_is_undone(tmp_path, capsys):
    t = tmp_path / "out"
    _write_run(t, {"a.csv": "old"})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    os.replace(t, tmp_path / f".out.old-{dead.pid}")  # killed between the two renames
    recover(t)
    assert (t / "a.csv").read_text() == "old"
    assert "restored" in capsys.readouterr().err


def test_killed_atomic_write_leftover_is_removed(tmp_path, capsys):
    from tda.common.atomic import write_text_atomic

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f".r.json.{dead.pid}.abcd.tmp"
    left.write_text("half")
    alive = tmp_path / f".r.json.{os.getpid()}.efgh.tmp"
    alive.write_text("being written")
    write_text_atomic(tmp_path / "r.json", "{}")
    assert not left.exists() and alive.exists()
    assert "left by a write that was killed" in capsys.readouterr().err


# Capture --data with every capture's save stopped after the third (READY on stderr).
_DRIVER = r"""
import signal  # as a terminal starts it: the suite may hand its children an ignored or blocked SIGINT
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
import sys, time
import tda.activations.capture as C
orig = C.Capture.save
n = [0]
def save(self, path):
    orig(self, path)
    n[0] += 1
    if n[0] == 3:
        print("READY", file=sys.stderr, flush=True)
        time.sleep(120)
C.Capture.save = save
from tda.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _env(tmp_path):
    return {**os.environ, "PYTHONPATH": str(ROOT), "TDA_CACHE_DIR": str(tmp_path / "cache"),
            "TDA_KERNELS_BACKEND": "torch", "TDA_PROGRESS": "0"}


@pytest.mark.parametrize("sig,code", [(signal.SIGKILL, -9), (signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_capture_rerun_killed_midway_keeps_the_previous_set(tmp_path, run_cli, sig, code):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"text number {i} is here"}) + "\n" for i in range(6)))
    out = tmp_path / "caps"
    rc, _, err = run_cli("capture", "-m", "tiny-llama", "--data", data, "--out", out)
    assert rc == 0, err
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # the rerun with another model is stopped after three of its six captures
    p = subprocess.Popen([sys.executable, "-c", _DRIVER, "capture", "-m", "tiny-gpt2", "--data", str(data),
                          "--out", str(out)], cwd=ROOT, env=_env(tmp_path), stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while time.time() - t0 < 180:
        line = p.stderr.readline()
        if not line or line.strip() == "READY":
            break
    p.send_signal(sig)
    p.communicate(timeout=60)
    assert p.returncode == code
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous set, whole
    assert json.loads((out / "index.json").read_text())["model_id"] == "tiny-llama"
    leftovers = list(tmp_path.glob(".caps.*"))
    assert bool(leftovers) == (sig == signal.SIGKILL)  # Ctrl-C/SIGTERM clean up at once
    rc, _, err = run_cli("capture", "-m", "tiny-gpt2", "--data", data, "--out", out)
    assert rc == 0, err
    assert json.loads((out / "index.json").read_text())["model_id"] == "tiny-gpt2"
    assert not list(tmp_path.glob(".caps.*"))
    if sig == signal.SIGKILL:
        assert "left by a run that was killed" in err


def test_full_disk_names_the_users_path(tmp_path, monkeypatch):
    import errno

    from tda.common.atomic import write_text_atomic
    from tda.common.errors import BadInput

    target = tmp_path / "out.json"

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write() on a full disk: no file name

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(BadInput, match="cannot write .*out.json: No space left on device"):
        write_text_atomic(target, "x")
    assert list(tmp_path.iterdir()) == []
