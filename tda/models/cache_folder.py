"""Pieces shared by the embedded model's two caches (the fp32 conversion, :mod:`tda.models.embedded`,
and the GGUF file, :mod:`tda.models.embedded_gguf`): progress lines, atomic cache folders, the
cached tokenizer."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

Progress = Callable[[str], None]


def _stderr_progress(msg: str) -> None:
    print(f"[tda] {msg}", file=sys.stderr, flush=True)


def build_atomically(final: Path, build: Callable[[Path, Progress], object], progress: Progress):
    """``build(tmp, progress)`` into a hidden temporary sibling of ``final``, renamed into place when
    complete (removed whatever happens): a cache folder is either whole or absent. Returns what
    ``build`` returns."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        out = build(tmp, progress)
        tmp.rename(final)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_tokenizer(path: Path):
    """The cached tokenizer, read straight from its ``tokenizer.json``.

    ``AutoTokenizer`` re-reads the 33 MB file several times and rebuilds Gemma's BPE in Python
    (~4–5 s here); a ``PreTrainedTokenizerFast`` over the same file takes ~1.3 s and encodes,
    decodes and names tokens identically (tested on every shipped text). Falls back to
    ``AutoTokenizer`` when the cache lacks what the fast path needs.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from tda.common.memory import release_free_memory

    try:
        return _load_tokenizer(path, PreTrainedTokenizerFast)
    except (OSError, ValueError, KeyError, TypeError):
        return AutoTokenizer.from_pretrained(path)
    finally:  # parsing the 33 MB tokenizer.json leaves ~180 MB of freed heap resident
        release_free_memory()


def _load_tokenizer(path: Path, cls):
    """The fast path of :func:`load_tokenizer` (``cls``: PreTrainedTokenizerFast); ValueError when
    the folder is not the embedded Gemma's tokenizer."""
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    special = {k: cfg[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token", "mask_token")
               if isinstance(cfg.get(k), str)}
    if cfg.get("tokenizer_class") != "GemmaTokenizer" or len(special) < 4:
        raise ValueError("not the embedded Gemma tokenizer")
    return cls(
        tokenizer_file=str(path / "tokenizer.json"), name_or_path=str(path), padding_side="left",
        model_max_length=cfg.get("model_max_length", int(1e30)), **special,
    )
