"""Trusting the converted embedded model: content hashes, finite weights, no leftovers.

The manifest (``tda-cache.json``) keeps its sizes (``files``, format 1, which older versions
read) and gains ``hashes``: each file's SHA-256 and the stamp it had when last verified (see
:mod:`tda.common.integrity`). A load compares the stamps (microseconds) and re-hashes only files
whose stamp moved (~1.2 s for the whole 1.1 GB model, measured); same-size damage is caught.
A cache converted by an older version (sizes only) gets its hashes recorded on first use.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from tda.common import integrity, stale

MANIFEST = "tda-cache.json"


def _read(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text())


def _write(path: Path, manifest: dict) -> None:
    tmp = path / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path / MANIFEST)


def problem(path: Path, cache_format: int, progress=None) -> str | None:
    """None when the converted model at ``path`` is complete and intact, else why not."""
    try:
        manifest = _read(path)
    except FileNotFoundError:
        return "no manifest" if path.exists() else "missing"
    except (OSError, ValueError) as e:
        return f"{MANIFEST} unreadable ({type(e).__name__})"
    if not isinstance(manifest, dict) or manifest.get("format") != cache_format:
        return f"{MANIFEST}: unknown format"
    sizes = manifest.get("files")
    if not isinstance(sizes, dict) or not sizes:
        return f"{MANIFEST} lists no files"
    for name, size in sizes.items():
        try:
            if (path / name).stat().st_size != size:
                return f"{name}: size {(path / name).stat().st_size} instead of {size}"
        except OSError:
            return f"{name}: missing"
    hashes = manifest.get("hashes")
    if not isinstance(hashes, dict) or set(hashes) != set(sizes):  # converted by an older version
        if progress:
            progress(f"recording content hashes of the converted model at {path} (once)")
        manifest["hashes"] = integrity.manifest_entries(path, sizes)
        _write(path, manifest)
        return None
    bad, restamped = integrity.check_manifest(path, hashes)
    if bad is None and restamped:
        try:
            _write(path, manifest)  # verified in full: the next load trusts the new stamps
        except OSError:
            pass
    return bad


def record(dest: Path, manifest: dict) -> None:
    """Write the manifest of a fresh conversion in ``dest``, with every file's hash."""
    manifest = dict(manifest)
    manifest["hashes"] = integrity.manifest_entries(dest, manifest["files"])
    _write(dest, manifest)


def nonfinite_parameters(model) -> list[str]:
    """Names of the parameters holding NaN or inf (refused before the cache is written)."""
    import torch

    def finite(p: torch.Tensor) -> bool:  # min and max propagate NaN and show ±inf; 10x isfinite().all()
        if p.numel() == 0:
            return True
        if not p.is_floating_point():
            return True
        return all(bool(torch.isfinite(v)) for v in p.aminmax())

    return [n for n, p in model.named_parameters() if not finite(p)]


def sweep(final: Path, name: str, progress=None) -> None:
    """Under the conversion lock: remove temporary conversion folders of killed runs (hidden
    siblings of the cache, and ``tda-gguf-PID-*`` in the system temporary folder)."""
    for p in final.parent.glob(f".{name}.*"):
        if p.is_dir():  # only the lock holder converts, so every such folder is a leftover
            stale.remove(p, "left by a conversion that was killed", sink=progress)
    stale.sweep(Path(tempfile.gettempdir()), "tda-gguf-*", r"^tda-gguf-(\d+)-",
                "left by a conversion that was killed", sink=progress)
