"""A GGUF file's metadata, read once and cached: its config, tokenizer and tensor table.

``gguf.GGUFReader`` parses every metadata field into numpy views — the 262,144-token vocabulary of
Gemma 3 takes 8–16 s and ~1.5 GB per reader — and transformers reads a file that way once for its
config, once for the tokenizer and once for the tensors. :func:`index` reads the header once, in
one pass (:mod:`tda.models.gguf_header`, well under a second), per file (keyed by its path, size
and modification time) and keeps, under
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


# architectures whose config transformers derives with more than renames (tensor probes, name
# patches): their config comes from transformers' own full parse (slow, exact)
_SPECIAL_ARCHS = ("mistral", "t5", "qwen2moe", "gpt_oss", "gpt-oss", "qwen3moe", "minimax", "stablelm", "lfm2",
                  "gemma4")


def config_from_metadata(meta: dict, names: list[str], path: Path) -> dict:
    """The config dict transformers' ``load_gguf_checkpoint`` derives from the file's metadata,
    computed from :func:`tda.models.gguf_header.read_header`'s metadata by the same renames and
    defaults (the architectures that need more go through transformers' own parse)."""
    from transformers.integrations import GGUF_CONFIG_DEFAULTS_MAPPING
    from transformers.integrations.gguf import GGUF_CONFIG_ARCHS, get_gguf_config
    from transformers.modeling_gguf_pytorch_utils import (
        GGUF_TO_TRANSFORMERS_MAPPING,
        load_gguf_checkpoint,
    )

    arch = meta["general.architecture"]
    if arch in GGUF_CONFIG_ARCHS:
        return get_gguf_config(meta, tuple(names))
    if any(s in arch for s in _SPECIAL_ARCHS) or "mistral" in str(meta.get("general.name", "")).lower():
        return load_gguf_checkpoint(str(path), return_tensors=False)["config"]
    renames = GGUF_TO_TRANSFORMERS_MAPPING["config"]
    if arch not in renames:
        raise ValueError(f"GGUF model with architecture {arch} is not supported yet")
    config = {"tie_word_embeddings": "output.weight" not in names}
    for key, value in (GGUF_CONFIG_DEFAULTS_MAPPING.get(arch) or {}).items():
        config.setdefault(key, value)
    for key, value in meta.items():
        prefix, _, sub = key.partition(".")
        new = renames.get(prefix, {}).get(sub, -1)
        if new is None or new == -1:
            continue
        config[new] = value[0] if isinstance(value, list) and len(value) == 1 else value
    tokens = meta.get("tokenizer.ggml.tokens")
    if "vocab_size" not in config and tokens is not None:  # as transformers: the vocabulary's length
        config["vocab_size"] = tokens if isinstance(tokens, int) else len(tokens)
    if config.get("model_type") == "gemma3":  # a Gemma 3 GGUF holds the text backbone only
        config["model_type"] = "gemma3_text"
    return config


def _tokenizer(path: Path, model_type: str):
    """The file's tokenizer, converted by transformers from the metadata's vocabulary (its fast
    metadata reader; ``AutoTokenizer`` would re-parse the file for the config first)."""
    from transformers import AutoTokenizer
    from transformers.models.auto.tokenization_auto import (
        TOKENIZER_MAPPING_NAMES,
        tokenizer_class_from_name,
    )

    name = TOKENIZER_MAPPING_NAMES.get(model_type)
    cls = tokenizer_class_from_name(name) if isinstance(name, str) else None
    return (cls or AutoTokenizer).from_pretrained(str(path.parent), gguf_file=path.name)


def header_info(path: str | Path) -> dict:
    """What ``index.json`` holds (architecture, config dict, tensor table), read from the file's
    header alone: no tokenizer, nothing written (well under a second). ModelLoadError for a file
    transformers cannot read."""
    from tda.models.gguf_header import read_header

    path = Path(path)
    try:
        meta, tensors = read_header(path)
        config = config_from_metadata(meta, [t["name"] for t in tensors], path)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"could not read GGUF '{path}': {str(e).splitlines()[0][:200]}") from None
    return {"format": FORMAT, "arch": meta["general.architecture"], "config": config, "tensors": tensors,
            "source": str(path.resolve())}


def _build(path: Path, dest: Path) -> None:
    from transformers import AutoConfig

    info = header_info(path)
    config = info["config"]
    AutoConfig.for_model(**config).save_pretrained(dest)
    _tokenizer(path, config["model_type"]).save_pretrained(dest)
    (dest / "index.json").write_text(json.dumps(info))


def is_indexed(path: str | Path) -> bool:
    """Whether an intact index of ``path`` is cached (its hashes checked)."""
    return _read(index_dir(path))[0] is not None


class ChildIndex:
    """:func:`index` of a GGUF in a child process, while this one goes on (the tokenizer's conversion
    takes seconds of one core): ``result()`` waits for it and returns the index folder; if the child
    fails, the index is built here instead. Used as a context manager, an unfinished child is killed."""

    def __init__(self, path: str | Path):
        import subprocess
        import sys

        self.path = Path(path)
        code = "import sys; from tda.models import gguf_index; gguf_index.index(sys.argv[1])"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", code, str(self.path)], env=env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        except OSError:
            self.proc = None

    def result(self) -> Path:
        if self.proc is not None:
            _, err = self.proc.communicate()
            self.proc = None
            if err.strip():
                from tda.common import progress as report

                report.note(f"indexing {self.path.name} in a child process: {err.strip().splitlines()[-1][:200]}")
        return index(self.path)[1]  # the child's index (hashes checked), or built here if it failed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        return False


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


def sweep_stale(keep: Path) -> int:
    """Remove the cached indexes (beside ``keep``) whose GGUF file is gone or has changed since it
    was indexed (its key no longer matches): nothing can load them again. One line each; returns
    how many were removed. Indexes written before the source was recorded are left alone."""
    from tda.common import stale

    removed = 0
    for folder in keep.parent.iterdir():
        if folder == keep or folder.name.startswith(".") or not folder.is_dir():
            continue
        try:
            source = json.loads((folder / "index.json").read_text()).get("source")
        except (OSError, ValueError, AttributeError):
            continue
        if not isinstance(source, str):
            continue
        src = Path(source)
        if src.is_file() and _key(src) == folder.name:
            continue
        stale.remove(folder, "an index of a GGUF file that is gone or has changed")
        Path(str(folder) + ".lock").unlink(missing_ok=True)
        removed += 1
    return removed


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
        sweep_stale(final)
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
