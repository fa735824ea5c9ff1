"""Per-context overrides of a model's linear layers, without mutating the shared model.

:func:`instrument` wraps the ``forward`` of every linear layer of a model once. Without an
active override the wrapped forward calls the original, so results are bit-identical. Inside
``with linear_overrides({module: fn}):`` the listed modules compute ``fn(x)`` instead — only in
the current thread/async context (a :class:`contextvars.ContextVar`), so two callers sharing
one model (two Streamlit sessions, two threads) never see each other's overrides.

This is how sparse generation swaps in sliced FFN weights, how TT thresholds activations per
token, and how the fast fp32 dense path routes linears through oneDNN.
Attention modules and Llama/Gemma-shaped base models are wrapped the same way
(:func:`attention_override`, :func:`decoder_override`): the lean decode step of
:mod:`tda.engine.attention` and :mod:`tda.engine.decoder`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable, Iterator, Mapping
from types import MethodType

import torch
from torch import nn

LinearFn = Callable[[torch.Tensor], torch.Tensor]

_OVERRIDES: contextvars.ContextVar[Mapping[int, LinearFn] | None] = contextvars.ContextVar(
    "tda_linear_overrides", default=None
)
_ATTENTION: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("tda_attention_override", default=None)
_DECODER: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("tda_decoder_override", default=None)
_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _linear_types() -> tuple[type, ...]:
    from tda.models.quant import QuantLinear

    types: list[type] = [nn.Linear, QuantLinear]
    try:
        from transformers.pytorch_utils import Conv1D

        types.append(Conv1D)
    except ImportError:  # pragma: no cover - transformers always has it today
        pass
    return tuple(types)


def is_rms_norm(mod: nn.Module) -> bool:
    """An RMSNorm layer (``*RMSNorm`` class with a 1-D weight: Llama, Gemma, Qwen, Mistral ...)."""
    if not type(mod).__name__.endswith("RMSNorm"):
        return False
    w = getattr(mod, "weight", None)
    return isinstance(w, torch.Tensor) and w.dim() == 1


def instrument(model: nn.Module) -> nn.Module:
    """Wrap every linear layer's (and RMSNorm's) forward once (idempotent, thread-safe); returns
    ``model``. Norms can be overridden too (the fast dense path fuses them) but are not linears:
    :func:`is_instrumented` and :func:`linear_modules` see linears only."""
    types = _linear_types()
    with _LOCK:
        for mod in model.modules():
            norm = is_rms_norm(mod)
            flag = "_tda_norm_instrumented" if norm else "_tda_instrumented"
            if (norm or isinstance(mod, types)) and not getattr(mod, flag, False):
                original = mod.forward
                key = id(mod)

                def forward(x, *args, _original=original, _key=key, **kwargs):
                    table = _OVERRIDES.get()
                    if table is not None:
                        fn = table.get(_key)
                        if fn is not None:
                            return fn(x)
                    return _original(x, *args, **kwargs)

                mod.forward = forward
                setattr(mod, flag, True)
                mod._tda_original_forward = original
        for mod in model.modules():
            if is_attention(mod) and not getattr(mod, "_tda_attn_instrumented", False):
                original = mod.forward

                def attn_forward(*args, _original=original, _mod=mod, **kwargs):
                    fn = _ATTENTION.get()
                    if fn is not None:
                        out = fn(_mod, *args, **kwargs)
                        if out is not None:
                            return out
                    return _original(*args, **kwargs)

                mod.forward = attn_forward
                mod._tda_attn_instrumented = True
                mod._tda_original_forward = original
        for mod in model.modules():
            # a bound method (not a closure over this module), so a deepcopy of the model (the
            # TransformerLens bridge's) runs its own copy; models whose forward accelerate already
            # wrapped (device maps) are left alone: the lean stack never takes them
            if (is_decoder_stack(mod) and not getattr(mod, "_tda_stack_instrumented", False)
                    and "forward" not in mod.__dict__):
                mod.forward = MethodType(_stack_forward, mod)
                mod._tda_stack_instrumented = True
    return model


def _stack_forward(self, *args, **kwargs):
    fn = _DECODER.get()
    if fn is not None:
        out = fn(self, *args, **kwargs)
        if out is not None:
            return out
    return type(self).forward(self, *args, **kwargs)


def is_decoder_stack(mod: nn.Module) -> bool:
    """A base model of the Llama/Gemma shape (``embed_tokens``, ``layers``, ``norm``, ``rotary_emb``),
    whose decode step :func:`decoder_override` may replace."""
    return (type(mod).__name__.endswith("Model") and isinstance(getattr(mod, "layers", None), nn.ModuleList)
            and all(hasattr(mod, n) for n in ("embed_tokens", "norm", "rotary_emb")))


def is_attention(mod: nn.Module) -> bool:
    """A self-attention module of the Llama/Gemma shape (``q_proj``/``k_proj``/``v_proj``/``o_proj``,
    ``head_dim``, ``layer_idx``), whose decode step :func:`attention_override` may replace."""
    return (type(mod).__name__.endswith("Attention") and all(
        isinstance(getattr(mod, n, None), _linear_types()) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
        and hasattr(mod, "head_dim") and hasattr(mod, "layer_idx"))


@contextlib.contextmanager
def attention_override(fn: Callable | None) -> Iterator[None]:
    """Within the block (this context only), every instrumented attention module calls
    ``fn(module, *args, **kwargs)`` first and uses its result unless it is None (then its own forward)."""
    token = _ATTENTION.set(fn)
    try:
        yield
    finally:
        _ATTENTION.reset(token)


@contextlib.contextmanager
def decoder_override(fn: Callable | None) -> Iterator[None]:
    """Within the block (this context only), every instrumented base model (:func:`is_decoder_stack`)
    calls ``fn(module, *args, **kwargs)`` first and uses its result unless it is None."""
    token = _DECODER.set(fn)
    try:
        yield
    finally:
        _DECODER.reset(token)


def current_overrides() -> Mapping[int, LinearFn] | None:
    """This context's override table ``{id(module): fn}`` (None outside :func:`linear_overrides`):
    what an instrumented module's forward looks up on every call, for callers that look it up once."""
    return _OVERRIDES.get()


def original_forward(module: nn.Module) -> LinearFn:
    """The module's own forward, bypassing overrides (with accelerate's hooks, when it has them)."""
    return getattr(module, "_tda_original_forward", None) or module.forward


def is_instrumented(module: nn.Module) -> bool:
    """A linear layer wrapped by :func:`instrument`."""
    return bool(getattr(module, "_tda_instrumented", False))


def norm_modules(model: nn.Module) -> list[nn.Module]:
    """Every instrumented RMSNorm of ``model``."""
    return [m for m in model.modules() if getattr(m, "_tda_norm_instrumented", False)]


@contextlib.contextmanager
def linear_overrides(table: Mapping[nn.Module, LinearFn]) -> Iterator[None]:
    """Within the block (and this context only), ``module(x)`` returns ``table[module](x)``.

    Nested blocks merge, the inner one winning. Modules must have been :func:`instrument`-ed.
    """
    for mod in table:
        if not (is_instrumented(mod) or getattr(mod, "_tda_norm_instrumented", False)):
            raise RuntimeError("linear_overrides: the model was not instrumented (tda.models.dispatch)")
    current = dict(_OVERRIDES.get() or {})
    current.update({id(m): fn for m, fn in table.items()})
    token = _OVERRIDES.set(current)
    try:
        yield
    finally:
        _OVERRIDES.reset(token)


def module_weight(mod: nn.Module) -> torch.Tensor:
    """A linear module's weight as ``[d_out, d_in]`` (GPT-2 Conv1D stores ``[d_in, d_out]``).

    The real tensor on the module's execution device, also when accelerate offloaded it
    (:func:`tda.models.placement.layer_weight`).
    """
    from tda.models import placement

    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        Conv1D = ()  # noqa: N806
    w = placement.layer_weight(mod)
    return w.T if isinstance(mod, Conv1D) else w


def weight_numel(mod: nn.Module) -> int:
    """A linear module's number of weights, without materialising a quantized weight's values."""
    from tda.models.quant import QuantLinear

    if isinstance(mod, QuantLinear):
        return mod.out_features * mod.in_features
    return module_weight(mod).numel()


def linear_modules(model: nn.Module) -> list[nn.Module]:
    """Every instrumented linear module of ``model`` (each once)."""
    seen, out = set(), []
    for mod in model.modules():
        if is_instrumented(mod) and id(mod) not in seen:
            seen.add(id(mod))
            out.append(mod)
    return out
