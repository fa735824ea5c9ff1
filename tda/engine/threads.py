"""How many threads a generation's parallel regions use: all cores, or only the free ones.

A decode step runs ~130 short parallel regions (one per linear, norm and attention op). With one
thread per core and a busy neighbour process on one core, every region waits at its closing
barrier for the thread that lost its core, so the whole step slows by far more than the lost
core's share (measured 3×: dense 36 -> 113 ms/token on 2 cores). Using only the cores that are
free when the generation starts (``auto``) avoids those waits; on a quiet machine it uses them all.

Policies (:func:`resolve`): ``all`` (torch's default thread count, unchanged), ``auto`` (the free
cores, sampled from ``/proc/stat`` over ~30 ms, cached for a few seconds), or a positive integer.
``TDA_THREADS`` sets the default, ``auto``: on a quiet machine that is every core, as ``all``;
set ``TDA_THREADS=all`` when results must not depend on the machine's load (the thread count
changes the input-sparse C++ kernels' summation order, so fp32 results may differ in the last
bits). Measured on the shared 2-core machine, within one run of ``benchmarks/contention.py``:
Gemma dense 385 -> 91 ms/token with the machine's own load, 1894 -> 195 ms/token with a busy
neighbour added (``all`` -> ``auto``).
``torch.set_num_threads`` is process-wide: concurrent generations share the last setting.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator

import torch

from tda.common.errors import BadInput

ENV = "TDA_THREADS"
POLICIES = ("all", "auto")
_SAMPLE_S = 0.03
_CACHE_S = 5.0
_LOCK = threading.Lock()
_cache: dict = {"t": -1e9, "free": None}


def _cpu_times() -> dict[str, tuple[int, int]]:
    """``{cpuN: (busy_jiffies, total_jiffies)}`` from ``/proc/stat`` (empty where unreadable)."""
    out = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3:4].isdigit():
                    name, *vals = line.split()
                    v = [int(x) for x in vals[:8]]
                    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
                    out[name] = (sum(v) - idle, sum(v))
    except OSError:
        pass
    return out


def busy_fractions(sample_s: float = _SAMPLE_S) -> list[float]:
    """Each usable core's busy fraction over ``sample_s`` seconds (this process's own threads are
    counted too: call it while they are idle). Empty when ``/proc/stat`` cannot be read."""
    a = _cpu_times()
    time.sleep(sample_s)
    b = _cpu_times()
    try:
        allowed = {f"cpu{i}" for i in os.sched_getaffinity(0)}
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        allowed = set(b)
    fr = []
    for name in sorted(set(a) & set(b) & allowed):
        busy, total = b[name][0] - a[name][0], b[name][1] - a[name][1]
        fr.append(busy / total if total > 0 else 0.0)
    return fr


def free_cores(sample_s: float = _SAMPLE_S) -> int | None:
    """Cores less than half busy right now (cached for a few seconds), or None when unknown."""
    with _LOCK:
        now = time.monotonic()
        if now - _cache["t"] < _CACHE_S:
            return _cache["free"]
    fr = busy_fractions(sample_s)
    free = sum(1 for f in fr if f < 0.5) if fr else None
    with _LOCK:
        _cache.update(t=time.monotonic(), free=free)
    return free


def check_policy(policy: str | int | None) -> str | int:
    """``policy`` (or ``$TDA_THREADS``, default ``auto``) validated: ``all``, ``auto`` or an int >= 1."""
    if policy is None:
        policy = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if isinstance(policy, str) and policy.isdigit():
        policy = int(policy)
    if isinstance(policy, bool) or not (policy in POLICIES or (isinstance(policy, int) and policy >= 1)):
        raise BadInput(f"threads must be 'all', 'auto' or a positive integer, got {policy!r}")
    return policy


def resolve(policy: str | int | None, default: int) -> int:
    """The thread count for ``policy`` when torch's default is ``default`` threads."""
    policy = check_policy(policy)
    if policy == "all":
        return default
    if policy == "auto":
        free = free_cores()
        return default if free is None else max(1, min(default, free))
    return int(policy)


@contextlib.contextmanager
def threads(policy: str | int | None = None) -> Iterator[int]:
    """Run the block with :func:`resolve`'s thread count (restored after); yields the count."""
    old = torch.get_num_threads()
    n = resolve(policy, old)
    if n == old:
        yield n
        return
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(old)
