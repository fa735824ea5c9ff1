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


def popen_group(args, **kw) -> subprocess.Popen:
    """``subprocess.Popen`` in a new process group (session); end it with :func:`end_group`. The
    child should call :func:`child_main` first: it then dies, with everything it started, when
    the parent dies."""
    return subprocess.Popen(args, start_new_session=True, **kw)


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (ninja puts each compiler in a process group of
    its own, so killing one group is not enough; the session holds them all)."""
    pids = [int(d) for d in os.listdir("/proc") if d.isdigit()] if os.path.isdir("/proc") else []
    for pid in pids:
        with contextlib.suppress(OSError):
            if pid != os.getpid() and os.getsid(pid) == sid:
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.killpg(sid, signal.SIGKILL)


def end_group(proc: subprocess.Popen) -> None:
    """Kill ``proc``'s whole session (the child and everything it started) and reap it."""
    if proc.poll() is None:
        _kill_session(proc.pid)
    with contextlib.suppress(Exception):
        proc.wait(timeout=10)


def child_main(parent: int) -> None:
    """In a child started by :func:`popen_group` from process ``parent``: SIGTERM when the parent
    dies (Linux), and on SIGTERM/SIGINT/SIGHUP the whole group (compilers included) is killed."""

    def die(signum, frame):  # noqa: ARG001
        _kill_session(os.getsid(0))
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, die)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the death signal was set
        die(signal.SIGTERM, None)
