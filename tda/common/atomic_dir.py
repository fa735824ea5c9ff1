"""Output *folders* written atomically: one complete run or the previous one, never a mix.

:func:`atomic_dir` gives a command a temporary sibling of its output folder
(``.NAME.tmp-PID``) to write its whole output set into; when the command succeeds the set is moved
into place:

- a new or empty folder, or one that holds exactly a previous tda run (a ``.tda-run.json``
  marker lists its files), is *swapped*: the old folder is renamed aside (``.NAME.old-PID``), the
  new one renamed into place, the old one removed;
- a folder holding other files too (the user's own) is never removed: each new file replaces its
  namesake atomically, the files of the previous run that this run did not write are removed,
  and the user's files stay.

A run that fails or is interrupted leaves the previous folder untouched and its temporary sibling
removed; one that is killed leaves a sibling that the next start removes (with a line), and a
swap killed half-way is undone (the previous run is put back).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from tda.common import stale
from tda.common.atomic import check_output_dir_writable
from tda.common.errors import BadInput

MARKER = ".tda-run.json"


def _siblings(target: Path, kind: str) -> list[Path]:
    return list(target.parent.glob(f".{target.name}.{kind}-*"))


def recover(target: Path) -> None:
    """Remove the temporary siblings of killed runs, and undo a swap that was killed half-way."""
    for old in _siblings(target, "old"):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not stale.pid_alive(int(pid)):
            if not target.exists():  # killed between the two renames: the previous run goes back
                os.replace(old, target)
                from tda.common import progress as report

                report.note(f"restored {target} (a run was killed while replacing it)")
            else:
                stale.remove(old, "left by a run that was killed")
    stale.sweep(target.parent, f".{target.name}.tmp-*", r"\.tmp-(\d+)$", "left by a run that was killed")


def _run_files(folder: Path) -> set[str] | None:
    """The files a previous tda run wrote in ``folder`` (from its marker), or None without one."""
    try:
        files = json.loads((folder / MARKER).read_text()).get("files")
        return set(files) if isinstance(files, list) else None
    except (OSError, ValueError, AttributeError):
        return None


def _entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, command: str = "") -> Iterator[Path]:
    """Yield a temporary folder to write an output set into; put it in place at ``path`` on success."""
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise BadInput(f"output folder {target} exists and is not a directory")
    check_output_dir_writable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
    except OSError as e:
        raise BadInput(f"cannot create output folder {target}: {e.strerror}") from None
    try:
        yield tmp
        files = sorted(_entries(tmp) - {MARKER})
        (tmp / MARKER).write_text(json.dumps({"command": command, "files": files, "time": time.time()}, indent=1))
        _put_in_place(tmp, target, files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _put_in_place(tmp: Path, target: Path, files: list[str]) -> None:
    here = _entries(target)
    previous = _run_files(target)
    swappable = not here or (previous is not None and here <= previous | {MARKER})
    if not target.exists():
        os.replace(tmp, target)
        return
    if swappable:
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
        return
    for name in files:  # the user's own files stay; ours replace their namesakes one by one
        src, dst = tmp / name, target / name
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)
        os.replace(src, dst)
    for name in (previous or set()) - set(files):  # the previous run's files this run did not write
        p = target / name
        if p.is_file():
            p.unlink(missing_ok=True)
    os.replace(tmp / MARKER, target / MARKER)
