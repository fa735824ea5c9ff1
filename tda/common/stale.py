"""Leftovers of killed runs (temporary files and folders), found and removed on the next start.

Temporary names carry the writer's process id (``.NAME.PID.XXXX.tmp``, ``NAME.tmp-PID``,
``tda-gguf-PID-XXXX``): a leftover whose process is gone is stale; one whose process still runs
belongs to a live writer and is left alone.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from tda.common import progress as report


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists (or exists but belongs to someone else)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def size_of(p: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    try:
        if p.is_dir():
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())
        return p.stat().st_size
    except OSError:
        return 0


def remove(p: Path, why: str, *, sink=None) -> int:
    """Remove ``p`` (file or folder) and say so in one line; returns the bytes freed."""
    n = size_of(p)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink()
        except OSError:
            return 0
    report.note(f"removed {p} ({n / 1e6:.1f} MB), {why}", sink=sink)
    return n


def sweep(folder: Path, pattern: str, pid_regex: str, why: str, *, sink=None) -> int:
    """Remove the entries of ``folder`` matching glob ``pattern`` whose process id (group 1 of
    ``pid_regex`` on the name) is no longer running; returns the bytes freed."""
    freed = 0
    try:
        entries = list(folder.glob(pattern))
    except OSError:
        return 0
    for p in entries:
        m = re.search(pid_regex, p.name)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and not pid_alive(pid):
            freed += remove(p, why, sink=sink)
    return freed
