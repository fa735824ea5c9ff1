"""The shared progress reporter (``tda.common.progress``): where lines go and how often."""

from __future__ import annotations

import time

import pytest

from tda.common import progress


def test_non_tty_stderr_gets_start_throttled_and_end_lines(capsys, monkeypatch):
    monkeypatch.setattr(progress, "_is_tty", lambda: False)
    monkeypatch.delenv("TDA_PROGRESS", raising=False)
    with progress.task("counting", total=1000, every=3600) as t:
        for i in range(1000):
            t.update(i + 1)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines  # start and end only: updates are throttled
    assert lines[0].startswith("[tda] counting") and "0/1000" in lines[0]
    assert lines[1].startswith("[tda] counting: done in")


def test_updates_print_once_the_interval_has_passed(capsys, monkeypatch):
    monkeypatch.setattr(progress, "_is_tty", lambda: False)
    with progress.task("slow", total=3, every=0.0) as t:
        for i in range(3):
            t.update(i + 1)
    err = capsys.readouterr().err
    assert "1/3" in err and "2/3" in err and "3/3" in err


def test_tty_rewrites_one_line(capsys, monkeypatch):
    monkeypatch.setattr(progress, "_is_tty", lambda: True)
    with progress.task("bar", total=2) as t:
        t.update(2, force=True)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.count("\r") == 3


def test_context_sink_and_heartbeat(capsys):
    got: list[str] = []
    with progress.use_sink(progress.threadsafe(got.append)):
        with progress.task("compiling", every=0.05) as t, t.heartbeat("compiling"):
            time.sleep(0.3)
        progress.note("a note")
    assert capsys.readouterr().err == ""  # everything went to the sink
    assert got[0].startswith("compiling")
    assert any("· compiling" in g for g in got[1:-2])  # heartbeat lines while it ran
    assert got[-2].startswith("compiling: done in") and got[-1] == "a note"


def test_heartbeat_skips_a_sink_that_is_not_threadsafe():
    got: list[str] = []
    with progress.task("quiet", sink=got.append, every=0.01) as t, t.heartbeat():
        time.sleep(0.1)
    assert len(got) == 2  # start and end, both from this thread


def test_failure_is_reported(capsys, monkeypatch):
    monkeypatch.setattr(progress, "_is_tty", lambda: False)
    with pytest.raises(ValueError), progress.task("doomed"):
        raise ValueError("x")
    assert "doomed: failed after" in capsys.readouterr().err


def test_silenced(capsys, monkeypatch):
    monkeypatch.setenv("TDA_PROGRESS", "0")
    list(progress.iterate(range(3), "quiet"))
    assert capsys.readouterr().err == ""
