"""Ctrl-C and SIGTERM: exit 130 / 143 with one line, nothing half-written (issue 28, item 3)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs `tda ARGS` with every atomic write stopped (READY on stderr) after its temporary file is
# written and before the rename: the moment where a signal could leave a half-written output.
_DRIVER = r"""
import signal  # as a terminal starts it: the suite may hand its children an ignored or blocked SIGINT
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
import contextlib, sys, time
import tda.common.atomic as A
orig = A.atomic_path
@contextlib.contextmanager
def slow(path):
    with orig(path) as tmp:
        yield tmp
        print("READY", file=sys.stderr, flush=True)
        time.sleep(120)
A.atomic_path = slow
from tda.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _run_until_ready(args, env, timeout=240.0):
    p = subprocess.Popen([sys.executable, "-c", _DRIVER, *map(str, args)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    t0 = time.time()
    while time.time() - t0 < timeout:
        line = p.stderr.readline()
        if not line:
            break
        lines.append(line)
        if line.strip() == "READY":
            return p, lines
    p.kill()
    raise AssertionError(f"never reached the write: {''.join(lines)[-2000:]}")


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"),
                                           (signal.SIGTERM, 143, "SIGTERM")])
def test_signal_during_a_write_exits_with_its_code_and_leaves_nothing(tmp_path, sig, code, word):
    env = {**os.environ, "TDA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT),
           "TDA_KERNELS_BACKEND": "torch", "TDA_PROGRESS": "0"}
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "cal.json"
    p, _ = _run_until_ready(["calibrate", "-m", "tiny-llama", "--limit", "2", "--out", out], env)
    # the first atomic write is the cache's calibration file; the output folder is still empty
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == code, err
    lines = [ln for ln in err.splitlines() if ln.strip() and ln.strip() != "READY"]
    assert len(lines) == 1 and word in lines[0], err
    assert "Traceback" not in err
    assert list(out_dir.iterdir()) == []  # no output, no temporary file
    cal_dir = tmp_path / "cache" / "calibration"
    assert not any(f.name.startswith(".") for f in cal_dir.iterdir())  # the cache's temporary file went too


def test_typer_exit_codes_are_passed_on(monkeypatch):
    """`standalone_mode=False` returns typer's Exit code: 130 must not become 0."""
    import typer

    from tda.cli import main as cli_main
    from tda.cli.app import app

    @app.command("zz-interrupt", hidden=True)
    def _interrupt() -> None:
        raise KeyboardInterrupt

    try:
        assert cli_main.main(["zz-interrupt"]) == 130
    finally:
        app.registered_commands[:] = [c for c in app.registered_commands if c.name != "zz-interrupt"]
    assert isinstance(typer.Exit(3).exit_code, int)
