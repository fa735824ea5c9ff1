"""Write output files atomically: to a temporary file beside the target, then rename.

A failed or interrupted write never leaves a partial file at the target path.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tda.common.errors import BadInput


def check_output_path(path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Validate an output *file* path before any work is done; returns it as a Path."""
    p = Path(path).expanduser()
    if str(path).strip() == "":
        raise BadInput("output path is empty")
    if p.is_dir():
        raise BadInput(f"output path {p} is an existing directory; give a file name")
    if p.exists() and not overwrite:
        raise BadInput(f"output file {p} already exists")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BadInput(f"cannot create output folder {parent}: {e.strerror}") from None
    if not parent.is_dir():
        raise BadInput(f"output folder {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInput(f"output folder {parent} is not writable")
    return p


def check_output_dir(path: str | os.PathLike) -> Path:
    """Validate (and create) an output *folder*; fails if it is a file or not writable."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise BadInput(f"output folder {p} exists and is not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"cannot create output folder {p}: {e.strerror}") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise BadInput(f"output folder {p} is not writable")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success."""
    target = check_output_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files; outputs are ordinary readable files
            os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
