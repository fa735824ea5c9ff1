"""Model loading: one entry point, :func:`load_model`, for every kind of model spec.

Specs
- ``gemma-3-270m`` — the embedded default (see :mod:`tda.models.embedded`);
- a local Hugging Face folder (``./path``, ``/abs/path``, or any existing folder);
- a hub name ``owner/name`` — needs a network; offline it fails with one clear line;
- a GGUF file (``path/to/file.gguf``) — kept in its quantized blocks by default (``dtype="gguf"``,
  :mod:`tda.models.gguf_load`), or de-quantised with ``dtype="fp32"``;
- ``tiny-llama``, ``tiny-gemma3``, ``tiny-gpt2`` (and ``tiny-opt``, ``tiny-qwen3``,
  ``tiny-mistral``) — seeded random-weight models with the committed tiny tokenizer, for tests;
- ``random:<preset>`` — real architectures' shapes with random weights, **for timing only**.
- ``SPEC+randinit[SEED]`` — the random-weights control of SPEC (same architecture, seeded init).
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tda.common.errors import BadInput, ModelLoadError, UnsupportedArchitecture
from tda.models import dispatch, embedded, hugepages, placement, specs
from tda.models.ffn import SUPPORTED_MODEL_TYPES, FFNAdapter, family_for

DEFAULT_MODEL = specs.DEFAULT_MODEL
TINY_SPECS = specs.TINY_SPECS
RANDOM_PRESETS = specs.RANDOM_PRESETS  # real shapes, random weights: for timing only
list_specs = specs.list_specs


def cache_kwarg(model) -> str:
    """The keyword a model's forward takes its KV cache by: ``cache`` (transformers >= 5.24 asks
    for it; ``past_key_values`` is removed in 5.40) or ``past_key_values`` (older 5.x)."""
    return _cache_kwarg_of(type(model))


@functools.lru_cache(maxsize=64)
def _cache_kwarg_of(cls) -> str:
    import inspect

    fwd = getattr(cls, "forward", None)
    try:
        params = inspect.signature(fwd).parameters if fwd is not None else {}
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        params = {}
    return "cache" if "cache" in params else "past_key_values"


DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
SEED = 1234
DEFAULT_QTYPE = "Q4_K"  # what --dtype gguf quantizes a full-precision model to (Q8_0 where rows are not whole Q4_K blocks)


def _tiny_configs() -> dict[str, Any]:
    from transformers import AutoConfig

    return {name: AutoConfig.for_model(**kw) for name, kw in specs.TINY_CONFIGS.items()}


@dataclass
class LoadedModel:
    """A loaded causal LM with everything the workbench needs about it.

    ``model`` is the Hugging Face model (eval mode, instrumented by :mod:`tda.models.dispatch`),
    ``tokenizer`` its tokenizer, ``model_id`` a short id recorded in every result,
    ``ffn`` the FFN adapter, ``tokenizer_dir`` the local folder the tokenizer came from (needed
    by TransformerLens), ``kind`` one of embedded/local/hub/tiny/random.
    """

    model: Any
    tokenizer: Any
    model_id: str
    spec: str
    kind: str
    ffn: FFNAdapter
    tokenizer_dir: str | None
    hf_name: str
    description: str
    _bridge: Any = field(default=None, repr=False)
    _bridge_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    device_map: Any = None  # how the model was placed (None: one device), see tda.models.placement
    max_memory: Any = None
    weight_format: str | None = None  # "gguf" (quantized blocks, tda.models.quant) or None (dtype only)

    @property
    def device(self) -> torch.device:
        """Where inputs go (with a device map: the input embedding's device; layers may be elsewhere)."""
        return placement.main_device(self.model)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def n_ctx(self) -> int:
        cfg = self.model.config
        cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048))

    @property
    def is_random(self) -> bool:
        return self.kind in ("tiny", "random")

    @property
    def format_name(self) -> str:
        """The weight format: ``gguf`` (quantized blocks, fp32 activations) or the dtype's name."""
        return self.weight_format or {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(
            self.dtype, str(self.dtype).replace("torch.", ""))

    def new_cache(self):
        """An empty KV cache for this model (``DynamicCache(config=...)`` handles sliding windows)."""
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.model.config)
        except TypeError:  # older transformers
            return DynamicCache()

    def cache_kw(self, cache) -> dict:
        """``{name: cache}`` for a forward or ``generate`` call: :func:`cache_kwarg` of this model."""
        return {cache_kwarg(self.model): cache}

    def info(self) -> dict:
        return {
            "model_id": self.model_id,
            "spec": self.spec,
            "kind": self.kind,
            "dtype": str(self.dtype).replace("torch.", ""),
            "format": self.format_name,
            "device": str(self.device),
            "n_ctx": self.n_ctx,
            **self.ffn.describe(),
            **({"device_map": placement.describe(self.model)} if placement.is_dispatched(self.model) else {}),
        }

    def bridge(self):
        """A TransformerLens ``TransformerBridge`` over this model (built once, lazily).

        The bridge wraps a *copy* of the HF model's modules so that the shared model is never touched;
        the copy's parameters share the shared model's weight tensors (the bridge only reads them), so
        the bridge costs no second set of weights (1.1 GB for the embedded Gemma in fp32).
        """
        with self._bridge_lock:
            if self._bridge is None:
                import copy
                import logging

                from transformer_lens.model_bridge import TransformerBridge

                if self.tokenizer_dir is None:
                    raise ModelLoadError("TransformerLens needs a tokenizer loaded from a local folder")
                if placement.is_dispatched(self.model):
                    raise ModelLoadError("the TransformerLens backend needs a model on one device (no device map)")
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(self.tokenizer_dir)
                shared = {id(p): torch.nn.Parameter(p.detach(), requires_grad=p.requires_grad)
                          for p in self.model.parameters()}  # new Parameter objects, the same storage
                hf_copy = copy.deepcopy(self.model, memo=shared)
                logging.getLogger("transformer_lens").setLevel(logging.ERROR)
                self._bridge = TransformerBridge.boot_transformers(
                    self.hf_name, hf_model=hf_copy, tokenizer=tok, device=str(self.device),
                    dtype=self.dtype,
                )
            return self._bridge


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise BadInput(f"unknown dtype '{dtype}'; use one of fp32, bf16, fp16")
    return DTYPES[dtype]


def split_format(dtype: str | torch.dtype, kind: str) -> tuple[str | None, str | None, torch.dtype]:
    """``(format, quantize_to, torch dtype)`` of a dtype argument for a spec of ``kind``:
    ``"auto"`` is ``gguf`` for a GGUF file and fp32 otherwise; ``"gguf"`` keeps a GGUF's blocks (the
    embedded model, a .gguf file) or quantizes other models to Q4_K; ``"gguf:TYPE"`` quantizes to
    TYPE (models from a GGUF keep their own blocks). Quantized formats run fp32 activations."""
    if isinstance(dtype, torch.dtype):
        return None, None, dtype
    if dtype == "auto":
        dtype = "gguf" if kind == "gguf" else "fp32"
    if dtype == "gguf" or (isinstance(dtype, str) and dtype.startswith("gguf:")):
        qtype = dtype.partition(":")[2] or DEFAULT_QTYPE
        from tda.models.quant import QUANTIZABLE

        if qtype not in QUANTIZABLE:
            raise BadInput(f"unknown quantized format '{dtype}'; use gguf, or gguf:TYPE with TYPE one of "
                           f"{', '.join(QUANTIZABLE)}")
        return "gguf", qtype, torch.float32
    return None, None, resolve_dtype(dtype)


def resolve_device(device: str | torch.device) -> torch.device:
    name = str(device)
    from tda.common import distributed

    if name in ("cuda", "auto") and torch.cuda.is_available() and distributed.is_distributed():
        return torch.device(f"cuda:{distributed.local_rank() % torch.cuda.device_count()}")  # one GPU a process
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput("device 'cuda' was asked for but no CUDA GPU is available on this machine")
    if not (name == "cpu" or name.startswith("cuda")):
        raise BadInput(f"unknown device '{device}'; use cpu, cuda or auto")
    return torch.device(name)


def wrap_model(model, tokenizer, *, spec, kind, model_id, tokenizer_dir, hf_name, description, dtype, device,
               device_map=None, max_memory=None):
    """Put an HF causal LM on ``device``/``dtype`` in eval mode, instrument it, wrap it as a LoadedModel.

    With a ``device_map`` (tda.models.placement) a model not yet placed is dispatched by accelerate;
    one ``from_pretrained`` already placed is left where it is.
    """
    if placement.is_dispatched(model):
        model = model.eval()
    elif device_map is not None:
        model = placement.dispatch(model, device_map, max_memory, dtype).eval()
    else:
        model = model.to(device=device, dtype=dtype).eval()
    if not getattr(model.config, "architectures", None):  # from_config models lack it (TL needs it)
        model.config.architectures = [type(model).__name__]
    model.requires_grad_(False)
    if not placement.is_dispatched(model):
        hugepages.advise_model(model)  # huge pages under the large weights (decode streams them)
    ffn = FFNAdapter(model)
    dispatch.instrument(model)
    return LoadedModel(
        model=model, tokenizer=tokenizer, model_id=model_id, spec=spec, kind=kind, ffn=ffn,
        tokenizer_dir=tokenizer_dir, hf_name=hf_name, description=description,
        device_map=device_map, max_memory=max_memory,
    )


def _load_tiny(spec: str, dtype, device, **place) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    from tda.models import tiny_tokenizer

    config = _tiny_configs()[spec]
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED + TINY_SPECS.index(spec))  # distinct, reproducible weights per spec
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    hf_names = {
        "llama": "meta-llama/Llama-2-7b-hf", "gemma3_text": "google/gemma-3-270m", "gpt2": "gpt2",
        "opt": "facebook/opt-125m", "qwen3": "Qwen/Qwen3-0.6B", "mistral": "mistralai/Mistral-7B-v0.1",
    }
    return wrap_model(
        model, tiny_tokenizer.load(), spec=spec, kind="tiny", model_id=spec,
        tokenizer_dir=str(tiny_tokenizer.TINY_TOKENIZER_DIR), hf_name=hf_names[config.model_type],
        description=f"{spec}: tiny {config.model_type} with seeded random weights (tests only)",
        dtype=dtype, device=device, **place,
    )


def _load_random(spec: str, dtype, device, **place) -> LoadedModel:
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tda.models import tiny_tokenizer

    preset = spec.split(":", 1)[1]
    if preset not in RANDOM_PRESETS:
        raise ModelLoadError(
            f"unknown random preset '{preset}'; known: {', '.join('random:' + p for p in RANDOM_PRESETS)}"
        )
    config = LlamaConfig(**RANDOM_PRESETS[preset], bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]), torch.device("cpu" if place.get("device_map") else device):
        torch.manual_seed(SEED)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return wrap_model(
        model, tiny_tokenizer.load(), spec=spec, kind="random", model_id=spec,
        tokenizer_dir=str(tiny_tokenizer.TINY_TOKENIZER_DIR), hf_name="meta-llama/Llama-2-7b-hf",
        description=f"{spec}: RANDOM WEIGHTS with the shape of {preset} — for timing only",
        dtype=dtype, device=device, **place,
    )


def _check_supported(config) -> None:
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    family_for(cfg.model_type)


def _load_pretrained(source: str, *, spec, kind, model_id, dtype, device, hf_name=None, **place) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(source)
    _check_supported(config)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation="eager",
                                                 **placement.pretrained_kwargs(**place))
    return wrap_model(
        model, tokenizer, spec=spec, kind=kind, model_id=model_id,
        tokenizer_dir=source if Path(source).is_dir() else None,
        hf_name=hf_name or getattr(config, "_name_or_path", None) or source,
        description=f"{model_id} ({config.model_type})", dtype=dtype, device=device, **place,
    )


def random_weights_like(lm: LoadedModel, seed: int = 0) -> LoadedModel:
    """A control twin of ``lm``: the same config, tokenizer, dtype and device, seeded random weights.

    Built with ``AutoModelForCausalLM.from_config`` (transformers' own initialiser) under
    ``seed``; its ``model_id`` is ``<model_id>+randinit<seed>`` (so its calibration is cached
    separately). What ``lm`` shows and this model does not comes from training.
    """
    import copy

    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(lm.model.config)
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return wrap_model(
        model, lm.tokenizer, spec=f"{lm.spec}+randinit{int(seed)}", kind="random",
        model_id=f"{lm.model_id}+randinit{int(seed)}", tokenizer_dir=lm.tokenizer_dir, hf_name=lm.hf_name,
        description=f"{lm.model_id} architecture with seeded random weights (seed {seed}): control",
        dtype=lm.dtype, device=lm.device, device_map=lm.device_map, max_memory=lm.max_memory,
    )


def _quiet_loading() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_model(spec: str = DEFAULT_MODEL, dtype: str | torch.dtype = "auto", device: str = "cpu",
               progress=None, *, device_map: str | dict | None = None,
               max_memory: str | dict | None = None) -> LoadedModel:
    """Load a model by spec (see the module docstring) as a :class:`LoadedModel`.

    ``dtype``: fp32/bf16/fp16, ``gguf`` (quantized blocks with fp32 activations: a GGUF's own —
    the embedded model's file or a .gguf path — or, for other models, their linears quantized to
    Q4_K; ``gguf:Q8_0|Q4_0|Q4_K`` picks the type), or ``auto`` (gguf for a .gguf file, else fp32);
    ``device``: cpu, cuda or auto (cuda only when asked or found).
    ``device_map`` (``"auto"``, ``"balanced"``, ``"sequential"`` or ``{module: device}``) and
    ``max_memory`` (``{0: "20GiB", "cpu": "60GiB"}`` or ``"0=20GiB,cpu=60GiB"``): accelerate's
    big-model placement over GPUs, CPU and disk (``device`` is then ignored); see
    :mod:`tda.models.placement`.
    ``progress``: optional callable receiving one-line messages during the one-time conversion.
    """
    s = specs.resolve(spec)  # raises ModelLoadError for an unknown spec, a missing folder, offline hub
    spec = s.spec
    fmt, qtype, dt = split_format(dtype, s.kind)
    dev = resolve_device(device)
    place = {"device_map": placement.check_device_map(device_map), "max_memory": placement.parse_max_memory(max_memory)}
    if place["device_map"] is None and place["max_memory"] is not None:
        raise BadInput("max memory needs a device map (e.g. --device-map auto)")
    _quiet_loading()
    if fmt is not None:
        if place["device_map"] is not None:
            raise BadInput("the gguf format runs on one device: leave out --device-map")
        return _load_quantized(s, qtype, dev, progress)
    if s.kind == "gguf":
        return _load_gguf_file(s, dt, dev, progress, keep_blocks=False)
    if s.kind == "control":  # e.g. gemma-3-270m+randinit0: the random-weights control of a model
        base = load_model(s.base, dtype=dt, device=str(dev), progress=progress, **place)
        return random_weights_like(base, s.seed)
    if s.kind == "embedded":
        return _load_embedded(dt, dev, progress, **place)
    if s.kind == "tiny":
        return _load_tiny(spec, dt, dev, **place)
    if s.kind == "random":
        return _load_random(spec, dt, dev, **place)
    if s.kind == "local":
        try:
            return _load_pretrained(str(s.path), spec=spec, kind="local", model_id=s.path.name, dtype=dt,
                                    device=dev, **place)
        except UnsupportedArchitecture:
            raise
        except (OSError, ValueError, KeyError) as e:
            raise ModelLoadError(f"could not load model folder '{spec}': {str(e).splitlines()[0]}") from None
    try:  # hub
        return _load_pretrained(spec, spec=spec, kind="hub", model_id=spec, dtype=dt, device=dev, hf_name=spec,
                                **place)
    except UnsupportedArchitecture:
        raise
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"could not fetch '{spec}' from the Hugging Face hub (no network, or no such model: "
            f"{str(e).splitlines()[0][:120]}); the embedded default '{DEFAULT_MODEL}' works offline"
        ) from None


def _load_gguf_file(s, dtype, device, progress, *, keep_blocks: bool) -> LoadedModel:
    from tda.models.gguf_load import load_gguf, load_gguf_tokenizer

    model, _ = load_gguf(s.path, keep_blocks=keep_blocks, progress=progress)
    lm = wrap_model(
        model, load_gguf_tokenizer(s.path), spec=s.spec, kind="local", model_id=s.path.name, tokenizer_dir=None,
        hf_name=getattr(model.config, "_name_or_path", None) or s.path.name,
        description=f"{s.path.name} ({model.config.model_type}, GGUF{'' if keep_blocks else ', de-quantised'})",
        dtype=dtype, device=device,
    )
    lm.weight_format = "gguf" if keep_blocks else None
    return lm


def _load_quantized(s, qtype: str, device, progress) -> LoadedModel:
    """A model in the ``gguf`` format: a GGUF's own blocks (the embedded model, a .gguf file) or a
    full-precision model's linears quantized to ``qtype`` (:func:`tda.models.quant.quantize_model`)."""
    from tda.models import embedded_gguf, quant

    if s.kind == "embedded":
        model, tokenizer, folder = embedded_gguf.load(progress)
        lm = wrap_model(
            model, tokenizer, spec=DEFAULT_MODEL, kind="embedded", model_id=DEFAULT_MODEL,
            tokenizer_dir=str(folder), hf_name=embedded.HF_NAME,
            description="Gemma 3 270M (embedded, the Q4_K_M GGUF's own blocks)", dtype=torch.float32, device=device,
        )
    elif s.kind == "gguf":
        return _load_gguf_file(s, torch.float32, device, progress, keep_blocks=True)
    else:
        lm = load_model(s.spec, dtype="fp32", device=str(device), progress=progress)
        fallback = "Q8_0" if qtype == DEFAULT_QTYPE else None  # plain "gguf": Q4_K, Q8_0 where rows are shorter
        if quant.quantize_model(lm.model, qtype, fallback) == 0:
            raise BadInput(f"no linear of {s.spec} has rows of whole {qtype} blocks: it cannot run in this format")
        dispatch.instrument(lm.model)
        lm.ffn = FFNAdapter(lm.model)
        lm.description += f" — linears quantized to {qtype}"
        # other weights than the model's own: calibrations (cached by model id) must not be shared
        # with it, as a +randinit control's are not (the embedded file and .gguf files hold theirs)
        lm.model_id = f"{lm.model_id}+{qtype}"
    lm.weight_format = "gguf"
    for m in quant.quant_modules(lm.model):
        hugepages.advise([m.storage] if m.storage.device.type == "cpu" else [])
    return lm


def _load_embedded(dtype, device, progress, **place) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    for attempt in (1, 2):
        path = embedded.ensure_embedded_cache(progress, force=attempt == 2, handoff=True)
        try:
            fresh = embedded.take_converted(path)  # just converted here: the same tensors, not read back
            tok_dir = path if fresh is None else fresh[1]  # the cache may still be being saved
            tokenizer = embedded.load_tokenizer(tok_dir)  # first: its parse's transient heap is handed back
            if fresh is not None and dtype == torch.float32 and not any(v is not None for v in place.values()):
                model = fresh[0]
                model.config._name_or_path = str(path)  # as from_pretrained(path) names it
            else:
                if fresh is not None:  # another dtype or a placement: from the saved cache
                    del fresh
                    embedded.wait_saved()
                model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager",
                                                             **placement.pretrained_kwargs(**place))
            break
        except Exception:  # corrupt cache content with the right sizes: rebuild once
            if attempt == 2:
                raise
    return wrap_model(
        model, tokenizer, spec=DEFAULT_MODEL, kind="embedded", model_id=DEFAULT_MODEL,
        tokenizer_dir=str(tok_dir), hf_name=embedded.HF_NAME,
        description="Gemma 3 270M (embedded, de-quantised from Q4_K_M GGUF)", dtype=dtype, device=device,
        **place,
    )


__all__ = ["LoadedModel", "load_model", "list_specs", "random_weights_like", "wrap_model", "DEFAULT_MODEL", "TINY_SPECS", "RANDOM_PRESETS",
           "SUPPORTED_MODEL_TYPES"]
