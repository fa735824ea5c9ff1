"""Write output files atomically: to a temporary file beside the target, then rename.

A failed or interrupted write never leaves a partial file at the target path, and a failure to
write is reported as a one-line :class:`BadInput` that names the user's path — never the
temporary file's. Output paths are checked before any work by really creating (and removing) a
probe file in the folder, so folders that look writable but are not (``/proc``, read-only
mounts, full disks' metadata) are refused up front.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tda.common.errors import BadInput

_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


def _reason(e: BaseException) -> str:
    if getattr(e, "strerror", None):
        return e.strerror
    return str(e).splitlines()[0] if str(e).strip() else type(e).__name__


def _probe(folder: Path, target: Path) -> None:
    """Create and remove a file in ``folder``; raise BadInput naming ``target`` when that fails."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tda-probe.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise BadInput(f"cannot write {target}: {_reason(e)}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)


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
    require_writable_folder(parent, p, "output folder ")
    return p


def require_writable_folder(folder: Path, target: Path, what: str) -> None:
    """The existing ``folder`` is a directory this process can create ``target`` in (probed); else
    BadInput ``"{what}{folder} is not a directory"`` or ``"... is not writable"``."""
    if not folder.is_dir():
        raise BadInput(f"{what}{folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadInput(f"{what}{folder} is not writable")
    _probe(folder, target)


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
    _probe(p, p)
    return p


def check_output_dir_writable(path: str | os.PathLike) -> Path:
    """Like :func:`check_output_dir` but creates nothing: the folder, or its nearest existing
    ancestor, must be a writable directory."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise BadInput(f"output folder {p} exists and is not a directory")
    existing = p
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise BadInput(f"cannot create output folder {p}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BadInput(f"output folder {existing} is not writable")
    _probe(existing, p)
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    Errors about the temporary file (an ``OSError`` on it, or a message naming it) become a
    one-line BadInput that names ``path``.
    """
    target = check_output_path(path)
    from tda.common import stale  # leftovers of killed writes to this name: removed, with a line

    stale.sweep(target.parent, f".{target.name}.*.tmp", rf"^\.{re.escape(target.name)}\.(\d+)\.",
                "left by a write that was killed")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise BadInput(f"cannot write {target}: {_reason(e)}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            if tmp_path.exists():  # mkstemp makes 0600 files; outputs are ordinary readable files
                os.chmod(tmp_path, 0o644)
            os.replace(tmp_path, target)
        except OSError as e:
            if e.filename in (tmp, str(target)) or e.filename2 in (tmp, str(target)):
                raise BadInput(f"cannot write {target}: {_reason(e)}") from None
            if e.filename is None and e.errno in _WRITE_ERRNOS:  # a full disk names no file: we do
                raise BadInput(f"cannot write {target}: {_reason(e)}") from None
            raise
        except Exception as e:
            if tmp in str(e):  # e.g. a serializer's own error type that names the file
                raise BadInput(f"cannot write {target}: {str(e).replace(tmp, str(target)).splitlines()[0]}") from None
            raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
