"""A GGUF file's metadata, read once and cached: its config, tokenizer and tensor table.

``gguf.GGUFReader`` parses every metadata field into numpy views — the 262,144-token vocabulary of
Gemma 3 takes ~10 s and ~1.5 GB per reader — and transformers reads a file that way once for its
config, once for the tokenizer and once for the tensors. :func:`index` does it once per file
(keyed by its path, size and modification time) and keeps, under
``$TDA_CACHE_DIR/gguf-index/<key>/``: ``index.json`` (the architecture, the config dict as
transformers parses it, and per tensor its name, block type, shape and byte range),
``config.json`` and the tokenizer files. Later loads memory-map the tensors straight from the file
(:func:`tensor_bytes`) and read the rest from the index (well under a second).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from tda.common.errors import ModelLoadError
from tda.common.paths import cache_dir

FORMAT = 1


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


def index(path: str | Path) -> tuple[dict, Path]:
    """``(index, folder)`` for the GGUF at ``path``: built on first use (seconds to a minute),
    then read from the cache. Raises ModelLoadError for a file transformers cannot read."""
    from filelock import FileLock

    path = Path(path)
    final = index_dir(path)
    try:
        return json.loads((final / "index.json").read_text()), final
    except (OSError, ValueError):
        pass
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / "index.json").is_file():
            return json.loads((final / "index.json").read_text()), final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            try:
                _build(path, tmp)
            except (OSError, ValueError, KeyError) as e:
                raise ModelLoadError(f"could not read GGUF '{path}': {str(e).splitlines()[0][:200]}") from None
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return json.loads((final / "index.json").read_text()), final


def tensor_bytes(path: str | Path, t: dict):
    """A tensor's bytes as a read-only memory map ``[rows, bytes per row]`` (rows = every dim but
    the innermost), as ``gguf.dequantize`` takes them."""
    import numpy as np

    rows = int(np.prod(t["shape"][1:])) if len(t["shape"]) > 1 else 1
    mm = np.memmap(path, dtype=np.uint8, mode="r", offset=t["offset"], shape=(t["nbytes"],))
    return mm.reshape(rows, t["nbytes"] // rows)
