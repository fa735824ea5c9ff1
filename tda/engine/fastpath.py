"""The fast dense path: fp32 and bf16 CPU linears through multi-threaded GEMVs (fp32 accumulation)
instead of MKL's one-thread sgemv (fp32) or oneDNN's bf16 GEMV, and fused RMSNorms.

Stock ``F.linear`` at batch 1 on these CPUs runs a single-threaded sgemv. Decode steps (up to
``kernels.CPP_DENSE_MAX_ROWS`` rows) go to the C++ GEMVs of :mod:`tda.engine.kernels` (measured
on Gemma 3 270M, 2 threads: lm_head 26-28 GB/s, the layers' linears 19-24 GB/s, against
oneDNN's 15-21), larger batches (prefill) to ``torch.ops.mkldnn._linear_pointwise(x, W, None,
"none", [], "")``, which also uses every core (ENGINEERING-NOTES: 2.0x faster dense decode than
stock, same tokens). Without the C++ kernels decode steps use oneDNN too. This module builds linear
functions ``fn(x[..., d_in]) -> y[..., d_out]`` for a weight ``W[d_out, d_in]`` (either path),
and a per-model table ``{module: fn}`` for :func:`tda.models.dispatch.linear_overrides` that routes
every linear of a model (the lm_head included) through them. The model is never mutated.

Whether the fast path is used for a model is decided once per model by a probe: a forward pass
with and without the table must give allclose logits and the same top-1 token.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tda.engine import quant_kernels
from tda.models import placement
from tda.models.dispatch import (
    is_instrumented,
    linear_modules,
    linear_overrides,
    module_weight,
    norm_modules,
    original_forward,
)
from tda.models.quant import QuantLinear

LinearFn = Callable[[torch.Tensor], torch.Tensor]

_PROBE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> bool
_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {module: fn}
_LOCK = threading.Lock()


def mkldnn_available() -> bool:
    """True when this torch build has oneDNN and its pointwise linear op."""
    from tda.engine import kernels

    return kernels.onednn_linear() is not None


FAST_DTYPES = (torch.float32, torch.bfloat16)  # what the fast dense path takes


def applicable(weight: torch.Tensor) -> bool:
    """The fast path exists for fp32 CPU weights (oneDNN for prefill, C++ GEMVs for decode) and
    bf16 CPU weights (C++ GEMVs with fp32 accumulation for decode when they are built; bf16
    ``F.linear`` already runs oneDNN on every core for prefill)."""
    if weight.device.type != "cpu":
        return False
    if weight.dtype == torch.float32:
        return mkldnn_available()
    return weight.dtype == torch.bfloat16


def linear_fn(weight: torch.Tensor, bias: torch.Tensor | None = None, *, fast: bool = False) -> LinearFn:
    """``fn(x[..., d_in]) = x @ weight.T + bias`` with ``weight[d_out, d_in]`` (made contiguous).

    ``fast`` (fp32 or bf16 CPU, see :func:`applicable`; silently ignored otherwise) runs batches of up to
    ``kernels.CPP_DENSE_MAX_ROWS`` rows (decode steps) through the C++ GEMVs of
    :mod:`tda.engine.kernels` — row-major, or input-major for weights that
    :mod:`tda.engine.layouts` converted — and larger ones (prefill) through oneDNN / ``mm``; both
    use every core, where stock ``F.linear`` runs MKL's one-thread sgemv. Either way the input is
    flattened to 2-D first: a strided 3-D view (``logits_to_keep=1``) makes bf16 ``F.linear``
    copy the whole weight on every call (ENGINEERING-NOTES, bf16 prefill pitfall).
    """
    w = weight.detach()
    b = None if bias is None else bias.detach().contiguous()
    d_out = w.shape[0]
    input_major = not w.is_contiguous() and w.t().is_contiguous()  # tda.engine.layouts: no copy
    if not input_major:
        w = w if w.is_contiguous() else w.contiguous()
    use_fast = fast and applicable(w)
    ops = None
    if use_fast:
        from tda.engine import kernels

        ops, max_rows = kernels.cpp_ops(), kernels.CPP_DENSE_MAX_ROWS
        if b is not None and b.dtype != w.dtype:  # the C++ GEMVs take a bias of the weight's dtype
            ops = None
    if input_major:
        wt = w.t()
        wdt, lim = wt.dtype, (max_rows * wt.shape[0] if ops is not None else -1)

        def fn_t(x: torch.Tensor) -> torch.Tensor:
            if x.numel() <= lim and x.dtype is wdt and x.is_contiguous():  # a decode step: x[..., d_in] as it is
                return ops.input_dense(x, wt, b)
            x2 = x.reshape(-1, x.shape[-1])
            if ops is not None and x2.shape[0] <= max_rows and x2.dtype == wt.dtype:
                y = ops.input_dense(x2 if x2.is_contiguous() else x2.contiguous(), wt, b)
            elif use_fast:  # an lm_head through oneDNN (kernels.vocab_shaped), else mm
                y = kernels.rows_times_input_major(x2, wt, b)
            else:
                y = torch.mm(x2, wt) if b is None else torch.addmm(b, x2, wt)
            return y.view(*x.shape[:-1], d_out)

        return fn_t
    if use_fast:
        # prefill: oneDNN's fp32 linear (stock fp32 F.linear is one-thread MKL); bf16 F.linear is oneDNN
        big = (lambda x2: torch.ops.mkldnn._linear_pointwise(x2, w, b, "none", [], "")) \
            if w.dtype == torch.float32 else (lambda x2: F.linear(x2, w, b))

        wdt, lim = w.dtype, (max_rows * w.shape[1] if ops is not None else -1)

        def fn(x: torch.Tensor) -> torch.Tensor:
            if x.numel() <= lim and x.dtype is wdt and x.is_contiguous():  # a decode step: x[..., d_in] as it is
                return ops.row_dense(x, w, b)
            x2 = x.reshape(-1, x.shape[-1])
            if not x2.is_contiguous():
                x2 = x2.contiguous()
            if ops is not None and x2.shape[0] <= max_rows and x2.dtype == w.dtype:
                y = ops.row_dense(x2, w, b)
            else:
                y = big(x2)
            return y.view(*x.shape[:-1], d_out)
    else:

        def fn(x: torch.Tensor) -> torch.Tensor:
            x2 = x.reshape(-1, x.shape[-1])
            return F.linear(x2, w, b).view(*x.shape[:-1], d_out)

    return fn


def norm_fn(mod: nn.Module) -> LinearFn | None:
    """One fused call for an fp32 or bf16 CPU RMSNorm module (HF's forward takes ~8 small ops,
    ~30 us; ~110 norms per Gemma decode step), or None when its variant is not known or the fused
    result differs from the module's own (checked here on a random input).

    Gemma's norms scale by ``1 + w`` (in fp32), Llama-style ones by ``w`` (in bf16 after rounding
    the normalised input to bf16: HF's ``weight * h.to(input_dtype)``). fp32: the C++ ``rms_norm``
    kernel when built, else ``F.rms_norm``; bf16: the C++ ``rms_norm_bf16`` kernel (no fusion
    without it).
    """
    w = mod.weight.detach()
    if w.device.type != "cpu" or w.dtype not in FAST_DTYPES or placement.is_offloaded(mod):
        return None
    gemma = type(mod).__name__.startswith("Gemma") and hasattr(mod, "eps")
    if gemma:
        scale, eps = (1.0 + w.float()).contiguous(), float(mod.eps)
    elif hasattr(mod, "variance_epsilon"):
        scale, eps = w.float().contiguous(), float(mod.variance_epsilon)
    else:
        return None
    from tda.engine import kernels

    ops, d, dtype = kernels.cpp_ops(), scale.shape[0], w.dtype
    original = original_forward(mod)
    if dtype == torch.bfloat16:
        if ops is None or not hasattr(ops, "rms_norm_bf16"):
            return None
        fused = functools.partial(ops.rms_norm_bf16, w=scale, eps=eps, round_normed=not gemma)
    else:
        fused = (functools.partial(ops.rms_norm, w=scale, eps=eps) if ops is not None
                 else functools.partial(F.rms_norm, normalized_shape=(d,), weight=scale, eps=eps))

    def fn(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != dtype or x.device.type != "cpu" or x.shape[-1] != d:
            return original(x)
        return fused(x if x.is_contiguous() else x.contiguous())

    if ops is not None:  # what tda.engine.decoder's fused residual_norm needs to compute the same norm
        fn.tda_norm = (scale, eps, dtype == torch.bfloat16 and not gemma, dtype)

    with torch.inference_mode():
        x = torch.randn(3, d, generator=torch.Generator().manual_seed(0)).to(dtype)
        got, ref = fn(x).float(), original(x).float()
    ok = torch.allclose(got, ref, rtol=1e-5, atol=1e-5) if dtype == torch.float32 else \
        bool(((got - ref).abs() <= 1e-2 * ref.abs() + 1e-3).all())  # bf16: one rounding step at most
    return fn if ok else None


def module_fn(mod: nn.Module, *, fast: bool = False) -> LinearFn:
    """The dense ``fn(x)`` of a linear module: :func:`linear_fn` of its weight — or, for a module
    whose weights are offloaded (device map), its own forward, whose hook loads them just in time
    (no full copy of an offloaded model's weights is kept); a quantized linear's kernels
    (:func:`tda.engine.quant_kernels.linear_fn`)."""
    if isinstance(mod, QuantLinear):
        return quant_kernels.linear_fn(mod)
    if placement.is_offloaded(mod):
        return original_forward(mod)
    return linear_fn(module_weight(mod), placement.layer_weight(mod, "bias"), fast=fast)


def dense_table(model: nn.Module, *, fast: bool) -> dict[nn.Module, LinearFn]:
    """``{module: fn}`` for every linear of ``model`` (cached per model for ``fast=True``), and
    with ``fast=True`` a fused function for each RMSNorm (:func:`norm_fn`).

    With ``fast=False`` only the output embedding gets a (2-D reshaping) override.
    """
    if not fast:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is None or not is_instrumented(head):
            return {}
        return {head: module_fn(head)}
    with _LOCK:
        table = _TABLES.get(model)
        if table is None:
            table = {m: module_fn(m, fast=True) for m in linear_modules(model)}
            for m in norm_modules(model):
                fn = norm_fn(m)
                if fn is not None:
                    table[m] = fn
            _TABLES[model] = table
    return table


def refresh_module(module: nn.Module) -> None:
    """Rebuild cached dense functions of ``module`` (its weight changed layout, not values)."""
    with _LOCK:
        for table in list(_TABLES.values()):
            if module in table:
                table[module] = module_fn(module, fast=True)


def probe(lm) -> bool:
    """Once per model: does the fast table give the same logits (:func:`logits_agree`)?"""
    model = lm.model
    with _LOCK:
        if model in _PROBE:
            return _PROBE[model]
    ok = False
    if lm.device.type == "cpu" and lm.dtype in FAST_DTYPES and applicable(next(model.parameters())):
        ids = torch.tensor([[i % 50 + 3 for i in range(7)]], device=lm.device)
        with torch.inference_mode():
            ref = model(input_ids=ids, use_cache=False).logits.float()
            with linear_overrides(dense_table(model, fast=True)):
                got = model(input_ids=ids, use_cache=False).logits.float()
        ok = logits_agree(got, ref, lm.dtype)
    with _LOCK:
        _PROBE[model] = ok
    return ok


def logits_agree(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> bool:
    """``got`` and ``ref`` logits ``[..., vocab]`` agree: allclose at the dtype's precision (fp32:
    1e-3 relative; bf16: summation-order differences grow through the layers, 5e-2) and, at every
    position, ``got``'s top-1 is ``ref``'s (fp32) or within the tolerance of ``ref``'s maximum
    (bf16 logits tie at its 8-bit precision)."""
    scale = float(ref.abs().max().clamp_min(1.0))
    if dtype == torch.float32:
        return bool(torch.allclose(got, ref, rtol=1e-3, atol=1e-4 * scale)) and bool(
            (got.argmax(-1) == ref.argmax(-1)).all())
    tol = 5e-2 * scale
    if not torch.allclose(got, ref, rtol=5e-2, atol=tol):
        return False
    top = ref.gather(-1, got.argmax(-1, keepdim=True)).squeeze(-1)
    return bool((top >= ref.amax(-1) - tol).all())


def use_fast(lm, fast: bool | None = True) -> bool:
    """Whether to route ``lm``'s linears through the fast dense path (fp32 or bf16 on CPU): asked
    for, applicable and probed equal."""
    if fast is False:
        return False
    return (lm.device.type == "cpu" and lm.dtype in FAST_DTYPES and not placement.has_offload(lm.model)
            and probe(lm))
