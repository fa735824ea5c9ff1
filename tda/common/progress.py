"""Progress of the slow one-time steps (conversion, calibration, kernel build, corpus capture).

One implementation for the CLI and the app. A step is a :class:`Task`::

    with task("calibrating input thresholds", total=32) as t:
        for i, text in enumerate(texts):
            ...
            t.update(i + 1)

Where the lines go (the *sink*): the ``sink`` given to :func:`task`, else the one set with
:func:`use_sink` (context-local: the app routes a page's steps into its status box), else stderr.
On stderr, a terminal gets one line rewritten in place; otherwise (a log, a pipe, CI) a line when
the step starts, at most one every :data:`EVERY` seconds while it runs, and one when it ends.
A step without countable units (a compiler run, a de-quantisation) can keep reporting its elapsed
time with :meth:`Task.heartbeat`, which prints from a background thread: only on stderr or into a
sink marked :func:`threadsafe` (Streamlit calls must stay on the script thread).
``TDA_PROGRESS=0`` silences the stderr sink.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator

EVERY = 5.0  # seconds between lines when stderr is not a terminal
TTY_EVERY = 0.1  # seconds between in-place redraws on a terminal
PREFIX = "[tda] "

Sink = Callable[[str], None]
_SINK: contextvars.ContextVar[Sink | None] = contextvars.ContextVar("tda_progress_sink", default=None)
_STDERR_LOCK = threading.Lock()


class _ThreadSafe:
    """A sink that may be called from any thread (e.g. ``list.append``)."""

    threadsafe = True

    def __init__(self, fn: Sink):
        self.fn = fn

    def __call__(self, msg: str) -> None:
        self.fn(msg)


def threadsafe(fn: Sink) -> Sink:
    """Mark ``fn`` as callable from a background thread (heartbeats then reach it)."""
    return _ThreadSafe(fn)


@contextlib.contextmanager
def use_sink(fn: Sink | None):
    """Route the progress of every :class:`Task` started in this context to ``fn``."""
    token = _SINK.set(fn)
    try:
        yield
    finally:
        _SINK.reset(token)


def _is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _silenced() -> bool:
    return os.environ.get("TDA_PROGRESS", "").strip().lower() in ("0", "off", "false", "no")


def format_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"


class Task:
    """One slow step: a start line, throttled updates, an end line with the elapsed time."""

    def __init__(self, what: str, total: int | None = None, *, sink: Sink | None = None,
                 every: float = EVERY, unit: str = ""):
        self.what, self.total, self.unit = what, total, unit
        self.sink = sink if sink is not None else _SINK.get()
        self.tty = self.sink is None and _is_tty()
        self.every = TTY_EVERY if self.tty else every
        self.t0 = time.perf_counter()
        self._last = -1e9
        self._done_n = 0
        self._line = ""
        self._closed = False

    # -- output
    def _emit(self, msg: str, *, final: bool = False) -> None:
        if self.sink is not None:
            self.sink(msg)
            return
        if _silenced():
            return
        with _STDERR_LOCK:
            if self.tty:
                pad = max(0, len(self._line) - len(msg) - len(PREFIX))
                end = "\n" if final else ""
                sys.stderr.write(f"\r{PREFIX}{msg}{' ' * pad}{end}")
                self._line = "" if final else PREFIX + msg
            else:
                sys.stderr.write(f"{PREFIX}{msg}\n")
            sys.stderr.flush()

    def _status(self, detail: str = "") -> str:
        el = time.perf_counter() - self.t0
        parts = [self.what]
        if self.total:
            frac = self._done_n / self.total
            parts.append(f"{self._done_n}/{self.total}{(' ' + self.unit) if self.unit else ''} ({frac:.0%})")
            if 0 < self._done_n < self.total and el > 1:
                parts.append(f"~{format_seconds(el / self._done_n * (self.total - self._done_n))} left")
        parts.append(format_seconds(el))
        if detail:
            parts.append(detail)
        return " · ".join(parts)

    # -- API
    def start(self) -> Task:
        self._emit(f"{self.what}…" + (f" (0/{self.total}{(' ' + self.unit) if self.unit else ''})"
                                      if self.total else ""))
        self._last = time.perf_counter()
        return self

    def update(self, done: int | None = None, detail: str = "", *, force: bool = False) -> None:
        """Record progress (``done`` units so far); prints when :attr:`every` seconds have passed."""
        if done is not None:
            self._done_n = int(done)
        now = time.perf_counter()
        if force or now - self._last >= self.every:
            self._last = now
            self._emit(self._status(detail))

    def done(self, msg: str = "done") -> None:
        if self._closed:
            return
        self._closed = True
        self._emit(f"{self.what}: {msg} in {format_seconds(time.perf_counter() - self.t0)}", final=True)

    @contextlib.contextmanager
    def heartbeat(self, detail: str = "still working"):
        """While the block runs, a line every :attr:`every` seconds (``<what> · 15 s · detail``)."""
        if self.sink is not None and not getattr(self.sink, "threadsafe", False):
            yield self
            return
        stop = threading.Event()

        def beat():
            while not stop.wait(self.every):
                self.update(detail=detail, force=True)

        th = threading.Thread(target=beat, name="tda-progress", daemon=True)
        th.start()
        try:
            yield self
        finally:
            stop.set()
            th.join()

    def __enter__(self) -> Task:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.done()
        elif not self._closed:
            self._closed = True
            self._emit(f"{self.what}: failed after {format_seconds(time.perf_counter() - self.t0)}",
                       final=True)


def task(what: str, total: int | None = None, *, sink: Sink | None = None, every: float = EVERY,
         unit: str = "") -> Task:
    """A :class:`Task` (use as a context manager: start and end lines are printed for you)."""
    return Task(what, total, sink=sink, every=every, unit=unit)


def note(msg: str, *, sink: Sink | None = None) -> None:
    """One line (no timing) to the same place a :class:`Task` would report."""
    Task(msg, sink=sink)._emit(msg, final=True)


def iterate(items: Iterable, what: str, total: int | None = None, *, sink: Sink | None = None,
            unit: str = "") -> Iterator:
    """Yield ``items`` while reporting ``what`` (one unit per item)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with task(what, total, sink=sink, unit=unit) as t:
        for i, x in enumerate(items):
            yield x
            t.update(i + 1)
