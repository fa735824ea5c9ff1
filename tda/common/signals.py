"""Ctrl-C and SIGTERM: one line, the conventional exit code, nothing half-written.

:func:`install` makes SIGTERM (and SIGHUP) behave like Ctrl-C: a ``KeyboardInterrupt`` is raised
in the main thread, so every ``finally`` (temporary files and folders, child processes) runs
exactly as for Ctrl-C; :func:`exit_code` then says which signal it was (130 for SIGINT, 143 for
SIGTERM, 129 for SIGHUP). :func:`kill_group_on_exit` ends a child process group (a compiler and
its helpers) when the parent is interrupted or dies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

_received: int | None = None  # the last signal number that interrupted the process


def _on_signal(signum, frame) -> None:  # noqa: ARG001 - the handler's signature
    global _received
    _received = signum
    raise KeyboardInterrupt(signal.Signals(signum).name)


def install() -> None:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt (main thread only; a no-op elsewhere)."""
    global _received
    _received = None
    with contextlib.suppress(ValueError, OSError):  # not the main thread, or an exotic platform
        for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _on_signal)


def exit_code() -> int:
    """128 + the signal that interrupted this process (SIGINT when none was recorded: Ctrl-C)."""
    return 128 + int(_received or signal.SIGINT)


def describe() -> str:
    """``interrupted`` (Ctrl-C) or ``terminated (SIGTERM)``."""
    if _received in (None, signal.SIGINT):
        return "interrupted"
    return f"terminated ({signal.Signals(_received).name})"


def _child_setup() -> None:  # pragma: no cover - runs in the child between fork and exec
    """In a child: its own process group, and SIGTERM when the parent dies (Linux)."""
    os.setsid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def popen_group(args, **kw) -> subprocess.Popen:
    """``subprocess.Popen`` in a new process group that dies with its parent (see
    :func:`end_group`); the child should end its own group on SIGTERM (see :func:`child_main`)."""
    return subprocess.Popen(args, preexec_fn=_child_setup, **kw)  # noqa: PLW1509 - no threads touched


def end_group(proc: subprocess.Popen) -> None:
    """Kill ``proc``'s whole process group (the child and everything it started) and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(timeout=10)


def child_main() -> None:
    """In a child started by :func:`popen_group`: on SIGTERM/SIGINT (e.g. the parent died), kill
    the whole group (compilers included) at once."""

    def die(signum, frame):  # noqa: ARG001
        os.killpg(os.getpgrp(), signal.SIGKILL)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, die)
    if os.getppid() == 1:  # the parent died before the death signal was set
        die(signal.SIGTERM, None)
