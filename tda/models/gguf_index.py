"""A GGUF file's metadata, read once and cached: its config, tokenizer and tensor table.

``gguf.GGUFReader`` parses every metadata field into numpy views — the 262,144-token vocabulary of
Gemma 3 takes ~10 s and ~1.5 GB per reader — and transformers reads a file that way once for its
config, once for the tokenizer and once for the tensors. :func:`index` does it once per file
(keyed by its path, size and modification time) and keeps, under
``$TDA_CACHE_DIR/gguf-index/<key>/``: ``index.json`` (the architecture, the config dict as
transformers parses it, and per tensor its name, block type, shape and byte range),
``config.json``, the tokenizer files and ``tda-hashes.json`` (each file's content hash, checked
before use: a damaged index is built again with one line). Later loads memory-map the tensors straight from the file
(:func:`tensor_bytes`) and read the rest from the index (well under a second).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from tda.common.errors import ModelLoadError
from tda.common.paths import cache_dir

FORMAT = 1
HASHES = "tda-hashes.json"  # each file's size, SHA-256 and stamp (tda.common.integrity's manifest)


def _key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{FORMAT}".encode()).hexdigest()[:16]


def index_dir(path: str | Path) -> Path:
    return cache_dir() / "gguf-index" / _key(Path(path))


def _build(path: Path, dest: Path) -> None:
    from gguf import GGUFReader
    from transformers import AutoConfig, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint, read_field

    parsed = load_gguf_checkpoint(str(path), return_tensors=False)
    reader = GGUFReader(str(path))
    tensors = [{"name": t.name, "type": t.tensor_type.name, "shape": [int(s) for s in t.shape],
                "offset": int(t.data_offset), "nbytes": int(t.n_bytes)} for t in reader.tensors]
    info = {"format": FORMAT, "arch": read_field(reader, "general.architecture")[0],
            "config": parsed["config"], "tensors": tensors}
    del reader
    AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(dest)
    AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(dest)
    (dest / "index.json").write_text(json.dumps(info))


def _write_hashes(folder: Path, hashes: dict) -> None:
    tmp = folder / f".{HASHES}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(hashes, indent=1))
    os.replace(tmp, folder / HASHES)


def _read(final: Path) -> tuple[dict | None, str | None]:
    """``(index, None)`` when the cached index at ``final`` is intact (every file matches the hash
    recorded in :data:`HASHES`, :mod:`tda.common.integrity`), else ``(None, why)`` ("missing" when
    there is none)."""
    from tda.common import integrity

    if not (final / "index.json").is_file():
        return None, "missing"
    try:
        hashes = json.loads((final / HASHES).read_text())
        problem, restamped = integrity.check_manifest(final, hashes)
    except FileNotFoundError:  # indexed by an older version: its hashes are recorded once
        names = [p.name for p in final.iterdir() if p.is_file() and not p.name.startswith(".")]
        hashes, problem, restamped = integrity.manifest_entries(final, names), None, True
    except (OSError, ValueError) as e:
        return None, f"{HASHES} unreadable ({type(e).__name__})"
    if problem is not None:
        return None, problem
    try:
        info = json.loads((final / "index.json").read_text())
        if not isinstance(info, dict) or not isinstance(info.get("tensors"), list):
            raise ValueError("no tensor table")
    except (OSError, ValueError) as e:
        return None, f"index.json: {str(e)[:80] or type(e).__name__}"
    if restamped:
        try:
            _write_hashes(final, hashes)
        except OSError:
            pass
    return info, None


def index(path: str | Path) -> tuple[dict, Path]:
    """``(index, folder)`` for the GGUF at ``path``: built on first use (seconds to a minute),
    then read from the cache (its files' content hashes checked: a damaged index is built again
    with one line). Raises ModelLoadError for a file transformers cannot read."""
    from filelock import FileLock

    from tda.common import integrity
    from tda.common import progress as report

    path = Path(path)
    final = index_dir(path)
    info, _ = _read(final)
    if info is not None:
        return info, final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        info, problem = _read(final)
        if info is not None:
            return info, final
        if final.exists():
            report.note(f"the cached GGUF index {final} is damaged ({problem}); indexing the GGUF again")
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            try:
                _build(path, tmp)
            except (OSError, ValueError, KeyError) as e:
                raise ModelLoadError(f"could not read GGUF '{path}': {str(e).splitlines()[0][:200]}") from None
            names = [p.name for p in tmp.iterdir() if p.is_file()]
            _write_hashes(tmp, integrity.manifest_entries(tmp, names))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    info, problem = _read(final)
    if info is None:
        raise ModelLoadError(f"the GGUF index {final} could not be read back ({problem})")
    return info, final


def tensor_bytes(path: str | Path, t: dict):
    """A tensor's bytes as a read-only memory map ``[rows, bytes per row]`` (rows = every dim but
    the innermost), as ``gguf.dequantize`` takes them."""
    import numpy as np

    rows = int(np.prod(t["shape"][1:])) if len(t["shape"]) > 1 else 1
    mm = np.memmap(path, dtype=np.uint8, mode="r", offset=t["offset"], shape=(t["nbytes"],))
    return mm.reshape(rows, t["nbytes"] // rows)
