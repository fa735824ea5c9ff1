"""Sparse linear kernels for token-wise activation sparsity (TEAL, CATS, TT).

``y = W @ x`` reading only the weight data that belongs to the active entries:

* **input-sparse** -- ``y[..., :] = sum_{i active} x[..., i] * W[:, i]`` (the down projection in
  TT/CATS, every linear in TEAL/WINA). The weight is held transposed, ``W_t[d_in, d_out]``
  contiguous, so that each active input reads one contiguous row; the same ``W_t`` also serves
  the dense product (:func:`input_dense`), so only one copy of a weight is ever held.
* **output-sparse** -- ``y[..., j] = W[idx[j], :] . x`` for an active set of output neurons (the
  CATS up projection), in the standard ``W[d_out, d_in]`` layout; the result is the compact
  ``[..., k]`` tensor (scatter it with ``zeros(..., d_out).index_copy_(-1, idx, y)`` if needed).

Batches (``x[..., d_in]`` with more than one row) share one active set: the UNION of the rows'
sets. :func:`input_sparse` takes that union ``idx`` and uses ``x`` as given, so a row whose own
set is smaller must have its non-active entries zeroed by the caller (:func:`mask_inactive`) to
get exactly ``W @ x_row_masked``; :func:`input_sparse_threshold` does both steps itself.
:func:`output_sparse` computes every union index for every row (mask the result if needed).

Backends: a small C++ kernel (fp32 / bf16 / fp16 with fp32 accumulation, OpenMP threads through
``at::parallel_for``), compiled on first use into ``$TDA_CACHE_DIR/kernels`` (default
``~/.cache/tda-workbench/kernels``; :mod:`tda.engine.kernel_build`), and a pure-torch path (``embedding_bag`` / ``index_select``)
used for large batches, with autograd, and whenever the build fails.
:func:`backend` says which one CPU calls get; ``TDA_KERNELS_BACKEND=torch|cpp|auto`` forces it
(``cpp`` makes a failed build an error instead of a fallback). Every function also takes
``backend="auto"|"cpp"|"torch"|"triton"`` for one call.

CUDA tensors (small batches, no autograd) go to the Triton kernels of
:mod:`tda.engine.triton_kernels` when ``triton`` imports, else to the torch path; the choice is
:mod:`tda.engine.triton_backend`'s. ``backend="triton"`` forces them, on CPU tensors too under
Triton's interpreter (``TRITON_INTERPRET=1``: how the tests run them). Dense products stay with
cuBLAS.

Active indices must be unique and in range (checked; a duplicate would be counted twice).
The threshold rule is ``|x_i| >= t`` (``t`` a float, or one threshold per input), compared in
fp32 for bf16/fp16 inputs (the threshold is never rounded to the input dtype).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from tda.engine import triton_backend as _triton

__all__ = [
    "SparseLinear",
    "active_indices",
    "argmax_last",
    "topk_sorted",
    "backend",
    "backend_info",
    "build",
    "cpp_ops",
    "dense",
    "input_dense",
    "input_sparse",
    "input_sparse_threshold",
    "input_sparse_topk",
    "mask_inactive",
    "output_sparse",
]

# Batches up to this many rows go to the C++ kernels (GEMV-like loops); larger ones use torch's
# GEMM on the gathered weight rows, which wins once the weight is reused across enough rows
# (measured at Llama-1B shapes, 2 threads: C++ faster at 16 rows, even at 32).
CPP_MAX_ROWS = 16
# The C++ dense GEMVs (x @ W_t, and x @ W.T row-major) beat oneDNN only at small batches
# (measured: faster up to 4 rows; at 1 row 19-27 GB/s against oneDNN's 15-21 on Gemma shapes).
CPP_DENSE_MAX_ROWS = 4
# Torch path: embedding_bag up to this many rows, GEMM on the gathered rows above (measured).
_EB_MAX_ROWS = 4

CPP_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what the C++ kernels take
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_INDEX_DTYPES = (torch.int64, torch.int32)
# The build machinery lives in tda.engine.kernel_build; re-exported for callers and tests.
from tda.engine.kernel_build import (  # noqa: E402, F401
    _BACKENDS,
    _cache_key,
    _compile_flags,
    _cpu_flags,
    _ops,
    _State,
    backend,
    build,
)


def backend_info() -> dict:
    """The backend, why the C++ one is missing (if it is), build time, flags and library path."""
    b = backend()
    return {"backend": b, "error": _State.error, "build_seconds": _State.build_seconds,
            "flags": list(_State.flags), "library": _State.library,
            "cpp_max_rows": CPP_MAX_ROWS, "cpp_dense_max_rows": CPP_DENSE_MAX_ROWS}


# ---------------------------------------------------------------------------------------------
# Argument checks (cheap attribute checks only; index ranges are checked in the kernels)
# ---------------------------------------------------------------------------------------------


def _check_weight(w: torch.Tensor, what: str) -> None:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(w).__name__}")
    if w.dim() != 2:
        raise ValueError(f"{what} must be 2-D, got shape {tuple(w.shape)}")
    if w.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{what} must be floating point (fp32/bf16/fp16/fp64), got {w.dtype}")
    if not w.is_contiguous():
        raise ValueError(f"{what} must be contiguous (make it once with .contiguous(); "
                         "the kernels never copy a weight per call)")


def _check_bias(bias: torch.Tensor | None, w: torch.Tensor, n: int) -> torch.Tensor | None:
    if bias is None:
        return None
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
    if bias.shape != (n,):
        raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    if bias.dtype != w.dtype:
        raise TypeError(f"bias dtype {bias.dtype} does not match the weight dtype {w.dtype}")
    if bias.device != w.device:
        raise ValueError(f"bias is on {bias.device}, the weight on {w.device}")
    return bias if bias.is_contiguous() else bias.contiguous()


def _flat_x(x: torch.Tensor, w: torch.Tensor, d_in: int) -> torch.Tensor:
    """``x[..., d_in]`` as a contiguous 2-D ``[N, d_in]`` tensor, after checking it."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] != d_in:
        raise ValueError(f"x must have shape [..., {d_in}], got {tuple(x.shape)}")
    if x.dtype != w.dtype:
        raise TypeError(f"x dtype {x.dtype} does not match the weight dtype {w.dtype}")
    if x.device != w.device:
        raise ValueError(f"x is on {x.device}, the weight on {w.device}")
    if x.dim() == 2 and x.is_contiguous():
        return x
    x2 = x.reshape(-1, d_in)
    return x2 if x2.is_contiguous() else x2.contiguous()


def _check_idx(idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if not isinstance(idx, torch.Tensor):
        raise TypeError(f"idx must be a torch.Tensor of indices, got {type(idx).__name__}")
    if idx.dtype not in _INDEX_DTYPES:
        raise TypeError(f"idx must be int64 or int32, got {idx.dtype}")
    if idx.dim() != 1:
        raise ValueError(f"idx must be 1-D, got shape {tuple(idx.shape)}")
    if idx.device != w.device:
        raise ValueError(f"idx is on {idx.device}, the weight on {w.device}")
    if idx.dtype != torch.int64:
        idx = idx.long()
    return idx if idx.is_contiguous() else idx.contiguous()


def _check_range(idx: torch.Tensor, n: int, *, unique: bool) -> None:
    """Torch-path index check (the C++ kernels check while they gather)."""
    if idx.numel() == 0:
        return
    lo, hi = (int(v) for v in torch.aminmax(idx))
    if lo < 0 or hi >= n:
        bad = lo if lo < 0 else hi
        raise ValueError(f"active index {bad} out of range [0, {n})")
    if unique and int(torch.bincount(idx, minlength=n).max()) > 1:
        raise ValueError("active indices repeated (indices must be unique)")


def _check_threshold(threshold, x: torch.Tensor, d_in: int):
    """A float threshold, or one per input as a tensor ``[d_in]`` (fp32 on x's device)."""
    if isinstance(threshold, torch.Tensor):
        if threshold.dim() == 0:
            threshold = float(threshold)
        else:
            if threshold.shape != (d_in,):
                raise ValueError(f"per-input thresholds must have shape ({d_in},), "
                                 f"got {tuple(threshold.shape)}")
            if not threshold.is_floating_point():
                raise TypeError(f"thresholds must be floating point, got {threshold.dtype}")
            return threshold.to(device=x.device, dtype=torch.float32).contiguous()
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a number or a tensor, got {type(threshold).__name__}")
    threshold = float(threshold)
    if not threshold >= 0.0:  # also rejects NaN
        raise ValueError(f"threshold must be a non-negative number, got {threshold}")
    return threshold


def _check_count(count, w: torch.Tensor) -> None:
    """``count`` (the accumulator of active-input counts) is None or an int64 ``[1]`` tensor on
    ``w``'s device."""
    if count is not None and not (isinstance(count, torch.Tensor) and count.dtype == torch.int64
                                  and count.numel() == 1 and count.device == w.device):
        raise ValueError("count must be an int64 tensor of one element on the weight's device")


def _use_cpp(backend: str | None, w: torch.Tensor, x2: torch.Tensor, max_rows: int) -> bool:
    if backend is None or backend == "auto":
        return (w.is_cpu and w.dtype in CPP_DTYPES and x2.shape[0] <= max_rows
                and not (x2.requires_grad or w.requires_grad)
                and (_State.ops is not None or _ops() is not None))
    if backend == "torch":
        return False
    if backend == "triton":
        return False
    if backend == "cpp":
        if not w.is_cpu:
            raise ValueError(f"the cpp backend runs on CPU tensors only, got {w.device}")
        if w.dtype not in CPP_DTYPES:
            raise TypeError(f"the cpp backend supports fp32/bf16/fp16, got {w.dtype}")
        if _ops() is None:
            raise RuntimeError(f"the cpp backend is unavailable: {_State.error}")
        return True
    raise ValueError(f"backend must be one of {(*_BACKENDS, 'triton')}, got {backend!r}")


def _out(y: torch.Tensor, x: torch.Tensor, n: int) -> torch.Tensor:
    return y if x.dim() == 2 else y.view(*x.shape[:-1], n)


# ---------------------------------------------------------------------------------------------
# Torch implementations
# ---------------------------------------------------------------------------------------------


def _torch_in_sparse(x2: torch.Tensor, idx: torch.Tensor, w_t: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
    n, k, d_out = x2.shape[0], idx.numel(), w_t.shape[1]
    if k == 0 or n == 0:
        y = x2.new_zeros(n, d_out)
    elif n <= _EB_MAX_ROWS:
        # embedding_bag reads only the active rows of w_t; on CPU each row's indices are split
        # into one bag per thread (embedding_bag parallelizes over bags), the bags summed after.
        xs = x2.index_select(1, idx).reshape(-1)
        nb = 1
        if x2.is_cpu:
            nb = max(1, min(torch.get_num_threads(), k // 256))
        starts = torch.arange(n, device=idx.device).mul_(k).view(n, 1)
        splits = torch.tensor([k * s // nb for s in range(nb)], device=idx.device)
        offsets = (starts + splits).view(-1)
        y = F.embedding_bag(idx.repeat(n) if n > 1 else idx, w_t, offsets, mode="sum",
                            per_sample_weights=xs)
        if nb > 1:
            y = y.view(n, nb, d_out).sum(1)
    elif k == w_t.shape[0] and _is_arange(idx):  # every input active (a long batch): no gathered copy
        y = rows_times_input_major(x2.contiguous(), w_t.contiguous())  # the same operands, bit for bit, as the gathered ones
    else:
        y = rows_times_input_major(x2.index_select(1, idx), w_t.index_select(0, idx))
    return y if bias is None else y.add_(bias)


def vocab_shaped(weight: torch.Tensor) -> bool:
    """An lm_head's shape: ``W[d_out, d_in]`` with at least 32000 outputs and four per input (a
    vocabulary; no model's FFN is that wide for its width).

    Many rows of x times such a weight (prefill, scoring) go through oneDNN in fp32 on the CPU
    (:func:`rows_times_input_major`), also where a method made it input-major (the lm_head
    option): oneDNN reads the transposed view as it is, with the same bits as on the row-major
    weight, where MKL's ``mm`` on the input-major one ran at 92 against oneDNN's 169 GFLOP/s on an
    AMD EPYC (Gemma 3 270M's 262144 x 640 head, 256 rows, 2026-12-06). The layers keep ``mm``:
    their outputs feed the methods' token-wise selections, whose near-ties then fall as before
    (tests/test_scoring.py compares batched and per-token scoring of every method)."""
    d_out, d_in = weight.shape
    return d_out >= 32000 and d_out >= 4 * d_in


def rows_times_input_major(x2: torch.Tensor, w_t: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x2[n, d_in] @ w_t[d_in, d_out] (+ bias)``: oneDNN on the transposed view for an fp32 CPU
    vocabulary-shaped weight (:func:`vocab_shaped`), else ``mm`` / ``addmm``."""
    lin = onednn_linear() if x2.dtype is torch.float32 and w_t.dtype is torch.float32 else None
    if lin is not None and x2.is_cpu and w_t.is_cpu and vocab_shaped(w_t.t()):
        b = None if bias is None else bias.to(torch.float32).contiguous()
        return lin(x2 if x2.is_contiguous() else x2.contiguous(), w_t.t(), b, "none", [], "")
    return torch.mm(x2, w_t) if bias is None else torch.addmm(bias, x2, w_t)


@functools.lru_cache(maxsize=1)
def onednn_linear():
    """oneDNN's fp32 linear (``torch.ops.mkldnn._linear_pointwise``) where this torch build has it, else
    None; looked up once per process (every GEMM of a vocabulary-shaped head asks)."""
    try:
        if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
            return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # pragma: no cover - exotic builds
        pass
    return None


def _is_arange(idx: torch.Tensor) -> bool:
    """Is ``idx`` strictly ascending (so, with ``len(idx)`` indices in ``range(len(idx))``, the
    identity)?"""
    return idx.numel() < 2 or bool((idx[1:] > idx[:-1]).all())


def _threshold_mask(x2: torch.Tensor, threshold) -> torch.Tensor:
    """``|x| >= t`` compared in fp32 (at least), as the C++ kernel does: comparing a bf16/fp16
    tensor with a Python float would round the threshold to that dtype first."""
    a = x2.abs()
    if a.dtype in (torch.float16, torch.bfloat16):
        a = a.float()
    return a >= threshold


def _fast_linear(x2: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x2 @ w.T + bias`` for ``w[d_out, d_in]`` (possibly a transposed view): oneDNN for fp32
    CPU (the project's fast path, multi-threaded at batch 1), ``F.linear`` otherwise."""
    if x2.is_cpu and w.dtype == torch.float32 and _mkldnn_ok():
        return torch.ops.mkldnn._linear_pointwise(x2, w, bias, "none", [], "")
    return F.linear(x2, w, bias)


_MKLDNN: list[bool] = []


def _mkldnn_ok() -> bool:
    if not _MKLDNN:
        try:
            ok = bool(torch.backends.mkldnn.is_available()) and hasattr(
                torch.ops.mkldnn, "_linear_pointwise")
        except (AttributeError, RuntimeError):  # pragma: no cover - exotic builds
            ok = False
        _MKLDNN.append(ok)
    return _MKLDNN[0]


# ---------------------------------------------------------------------------------------------
# Public functional API
# ---------------------------------------------------------------------------------------------


def active_indices(x: torch.Tensor, threshold) -> torch.Tensor:
    """Sorted int64 indices ``i`` with ``|x[..., i]| >= threshold`` in ANY row (the union).

    ``threshold`` is a non-negative float or a tensor ``[d_in]`` of per-input thresholds. Contiguous
    fp32 CPU input: one C++ pass (``threshold_indices``)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError("x must have at least one dimension")
    d_in = x.shape[-1]
    t = _check_threshold(threshold, x, d_in)
    ops = _ops() if x.device.type == "cpu" else None
    if ops is not None and x.dtype == torch.float32 and x.is_contiguous() and hasattr(ops, "threshold_indices"):
        tensor = isinstance(t, torch.Tensor)  # _check_threshold made it fp32 on x's device
        return ops.threshold_indices(x.reshape(-1, d_in), 0.0 if tensor else t, t if tensor else None)
    mask = _threshold_mask(x.reshape(-1, d_in), t)
    act = mask[0] if mask.shape[0] == 1 else mask.any(0)
    return act.nonzero().squeeze(1)


def mask_inactive(x: torch.Tensor, threshold) -> torch.Tensor:
    """``x`` with each row's entries below threshold (``|x_i| < t``) set to zero (a new tensor)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError("x must have at least one dimension")
    t = _check_threshold(threshold, x, x.shape[-1])
    return x.masked_fill(~_threshold_mask(x, t), 0)


def input_sparse(x: torch.Tensor, idx: torch.Tensor, w_t: torch.Tensor,
                 bias: torch.Tensor | None = None, *, backend: str | None = None) -> torch.Tensor:
    """``y[..., :] = sum_{i in idx} x[..., i] * w_t[i, :] (+ bias)`` -> ``[..., d_out]``.

    ``w_t`` is the transposed weight ``[d_in, d_out]`` (contiguous); ``idx`` unique int indices
    (the union over rows for a batch; entries of ``x`` outside ``idx`` are ignored, entries inside
    are used as given -- zero a row's own inactive entries first for per-row exactness).
    """
    _check_weight(w_t, "w_t")
    d_in, d_out = w_t.shape
    x2 = _flat_x(x, w_t, d_in)
    idx = _check_idx(idx, w_t)
    bias = _check_bias(bias, w_t, d_out)
    return _out(_input_sparse(x2, idx, w_t, bias, backend), x, d_out)


def _input_sparse(x2, idx, w_t, bias, backend):
    if _use_cpp(backend, w_t, x2, CPP_MAX_ROWS):
        return _State.ops.input_sparse(x2, idx, w_t, bias)
    _check_range(idx, w_t.shape[0], unique=True)
    if _triton.use(backend, w_t, x2):
        return _triton.kernels().input_sparse(x2, idx, w_t, bias)
    return _torch_in_sparse(x2, idx, w_t, bias)


def input_sparse_threshold(x: torch.Tensor, threshold, w_t: torch.Tensor,
                           bias: torch.Tensor | None = None, *,
                           backend: str | None = None, count: torch.Tensor | None = None) -> torch.Tensor:
    """``W @ x`` over the inputs with ``|x_i| >= threshold`` -> ``[..., d_out]``.

    A batch reads the weight rows of the union of its rows' active sets, and each row's own
    inactive entries count as zero: row ``b`` gets exactly ``W @ mask_inactive(x[b], t)``.
    ``count`` (an int64 ``[1]`` tensor on ``w_t``'s device) gets the union's size added.
    """
    _check_weight(w_t, "w_t")
    d_in, d_out = w_t.shape
    x2 = _flat_x(x, w_t, d_in)
    bias = _check_bias(bias, w_t, d_out)
    t = _check_threshold(threshold, x2, d_in)
    _check_count(count, w_t)
    return _out(_input_sparse_threshold(x2, t, w_t, bias, backend, count), x, d_out)


def _input_sparse_threshold(x2, t, w_t, bias, backend, count=None):
    if _use_cpp(backend, w_t, x2, CPP_MAX_ROWS):
        if isinstance(t, torch.Tensor):
            return _State.ops.input_sparse_threshold(x2, w_t, bias, 0.0, t, count)
        return _State.ops.input_sparse_threshold(x2, w_t, bias, t, None, count)
    if _triton.use(backend, w_t, x2):
        return _triton.kernels().input_sparse_threshold(x2, t, w_t, bias, count)
    mask = _threshold_mask(x2, t)
    act = mask[0] if mask.shape[0] == 1 else mask.any(0)
    if count is not None:
        count.add_(act.sum())
    idx = act.nonzero().squeeze(1)
    return _torch_in_sparse(x2.masked_fill(~mask, 0), idx, w_t, bias)


def input_sparse_topk(x: torch.Tensor, scale: torch.Tensor, k: int, w_t: torch.Tensor,
                      bias: torch.Tensor | None = None, *, backend: str | None = None,
                      count: torch.Tensor | None = None) -> torch.Tensor:
    """``W @ x`` over, per row, the ``k`` inputs with the largest ``|x_i|·scale[i]`` (WINA's rule)
    -> ``[..., d_out]``. A batch reads the union of its rows' sets, each row masked to its own;
    one row goes to the C++ kernel (selection and product in one call). ``count`` as in
    :func:`input_sparse_threshold` (the union's size is added)."""
    _check_weight(w_t, "w_t")
    d_in, d_out = w_t.shape
    x2 = _flat_x(x, w_t, d_in)
    bias = _check_bias(bias, w_t, d_out)
    if not (isinstance(scale, torch.Tensor) and scale.shape == (d_in,)):
        raise ValueError(f"scale must be a [{d_in}] tensor")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_in:
        raise ValueError(f"k must be an integer in [1, {d_in}], got {k!r}")
    _check_count(count, w_t)
    if _triton.use(backend, w_t, x2):
        sc = scale.to(device=w_t.device, dtype=torch.float32)
        return _out(_triton.kernels().input_sparse_topk(x2, sc, k, w_t, bias, count), x, d_out)
    if x2.shape[0] == 1 and _use_cpp(backend, w_t, x2, 1):
        sc = scale.to(device=w_t.device, dtype=torch.float32).contiguous()
        return _out(_State.ops.input_sparse_topk(x2, w_t, bias, sc, k, count), x, d_out)
    score = x2.abs().float() * scale.to(x2.device, torch.float32)  # fp32, as the C++ kernel
    top = torch.topk(score, k, dim=1).indices
    keep = torch.zeros_like(x2, dtype=torch.bool).scatter_(1, top, True)
    act = keep[0] if keep.shape[0] == 1 else keep.any(0)
    idx = act.nonzero().squeeze(1)
    if count is not None:
        count.add_(idx.numel())
    return _out(_input_sparse(x2.masked_fill(~keep, 0), idx, w_t, bias, backend), x, d_out)


def input_dense(x: torch.Tensor, w_t: torch.Tensor, bias: torch.Tensor | None = None, *,
                backend: str | None = None) -> torch.Tensor:
    """``x @ w_t (+ bias)`` for the transposed weight ``w_t[d_in, d_out]`` -> ``[..., d_out]``."""
    _check_weight(w_t, "w_t")
    d_in, d_out = w_t.shape
    x2 = _flat_x(x, w_t, d_in)
    bias = _check_bias(bias, w_t, d_out)
    return _out(_input_dense(x2, w_t, bias, backend), x, d_out)


def _input_dense(x2, w_t, bias, backend):
    if _use_cpp(backend, w_t, x2, CPP_DENSE_MAX_ROWS):
        return _State.ops.input_dense(x2, w_t, bias)
    return _fast_linear(x2, w_t.t(), bias)


def dense(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, *,
          backend: str | None = None) -> torch.Tensor:
    """``x @ w.T (+ bias)`` for ``w[d_out, d_in]`` -> ``[..., d_out]``: the C++ row-major GEMV
    up to :data:`CPP_DENSE_MAX_ROWS` rows, oneDNN (fp32 CPU) or ``F.linear`` above."""
    _check_weight(w, "w")
    d_out, d_in = w.shape
    x2 = _flat_x(x, w, d_in)
    bias = _check_bias(bias, w, d_out)
    return _out(_row_dense(x2, w, bias, backend), x, d_out)


def _row_dense(x2, w, bias, backend):
    if w.is_contiguous() and _use_cpp(backend, w, x2, CPP_DENSE_MAX_ROWS):
        return _State.ops.row_dense(x2, w, bias)
    return _fast_linear(x2, w, bias)


def cpp_ops():
    """``torch.ops.tda_kernels`` when the C++ kernels are built and enabled, else None — for hot
    paths that validated their tensors once and call the ops directly (see
    :mod:`tda.engine.fastpath`)."""
    return _ops()


def argmax_last(scores: torch.Tensor) -> torch.Tensor:
    """``torch.argmax(scores, dim=-1)`` for ``scores[B, V]``: the C++ ``argmax_rows`` on every
    thread for contiguous fp32 CPU rows (the same index: first maximum, first NaN), else torch's."""
    ops = _ops() if scores.device.type == "cpu" else None
    if (ops is not None and scores.dim() == 2 and scores.dtype == torch.float32 and scores.is_contiguous()
            and scores.shape[1] > 0 and hasattr(ops, "argmax_rows") and not scores.requires_grad):
        return ops.argmax_rows(scores)
    return torch.argmax(scores, dim=-1)


def topk_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``idx[B, k]``: each row's ``k`` largest scores' indices, ascending (``scores[B, n]``). The
    C++ ``topk_rows_sorted`` for contiguous fp32 CPU rows (ties at the k-th value keep the lower
    indices; NaN ranks first, as in ``torch.topk``), else ``torch.topk`` and a sort."""
    if scores.dim() != 2 or not 0 <= k <= scores.shape[1]:
        raise ValueError(f"topk_sorted: scores must be [rows, n] and k in [0, n]; got {tuple(scores.shape)}, k={k}")
    ops = _ops() if scores.device.type == "cpu" else None
    if (ops is not None and scores.dtype == torch.float32 and scores.is_contiguous() and not scores.requires_grad
            and hasattr(ops, "topk_rows_sorted")):
        return ops.topk_rows_sorted(scores, k)
    return torch.topk(scores, k, dim=1, sorted=False).indices.sort(dim=1).values


def output_sparse(x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor,
                  bias: torch.Tensor | None = None, *, backend: str | None = None) -> torch.Tensor:
    """``y[..., j] = w[idx[j], :] . x[..., :] (+ bias[idx[j]])`` -> compact ``[..., k]``.

    ``w`` is the standard ``[d_out, d_in]`` weight (contiguous). For a batch every row gets all
    of ``idx`` (the union); repeated indices are allowed here (they just repeat outputs).
    """
    _check_weight(w, "w")
    d_out, d_in = w.shape
    x2 = _flat_x(x, w, d_in)
    idx = _check_idx(idx, w)
    bias = _check_bias(bias, w, d_out)
    return _out(_output_sparse(x2, idx, w, bias, backend), x, idx.numel())


def _output_sparse(x2, idx, w, bias, backend):
    if _use_cpp(backend, w, x2, CPP_MAX_ROWS):
        return _State.ops.output_sparse(x2, idx, w, bias)
    _check_range(idx, w.shape[0], unique=False)
    if _triton.use(backend, w, x2):
        return _triton.kernels().output_sparse(x2, idx, w, bias)
    if idx.numel() == w.shape[0] and _is_arange(idx):  # every row: no gathered copy (the same bits)
        y = x2 @ w.contiguous().t()
        return y if bias is None else y.add_(bias)
    y = x2 @ w.index_select(0, idx).t()
    return y if bias is None else y.add_(bias.index_select(0, idx))


# ---------------------------------------------------------------------------------------------
# One weight, one layout
# ---------------------------------------------------------------------------------------------


class SparseLinear:
    """A linear layer ``y = W x + b`` holding ONE copy of its weight in one layout.

    ``layout="in"`` stores ``W_t = W.T`` contiguous ``[d_in, d_out]`` (input-sparse + dense);
    ``layout="out"`` stores ``W[d_out, d_in]`` (output-sparse + dense). Inference only: weights
    are detached; the C++ kernels have no autograd (inputs that require grad use torch ops).
    """

    __slots__ = ("layout", "weight", "bias", "in_features", "out_features")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                 layout: str = "in"):
        """``weight`` is already in ``layout`` form: ``[d_in, d_out]`` for "in", else
        ``[d_out, d_in]``; use :meth:`from_linear` to start from a standard weight."""
        if layout not in ("in", "out"):
            raise ValueError(f"layout must be 'in' or 'out', got {layout!r}")
        _check_weight(weight, "weight")
        self.layout = layout
        self.weight = weight
        if layout == "in":
            self.in_features, self.out_features = weight.shape
        else:
            self.out_features, self.in_features = weight.shape
        self.bias = _check_bias(bias, weight, self.out_features)

    @classmethod
    def from_linear(cls, weight, bias: torch.Tensor | None = None, *,
                    layout: str = "in") -> SparseLinear:
        """From ``weight[d_out, d_in]`` (or an ``nn.Linear``, whose bias is then used).

        ``layout="in"`` makes the one transposed copy (drop the original to free it);
        ``layout="out"`` shares the given weight's storage when it is already contiguous.
        """
        if isinstance(weight, torch.nn.Linear):
            if bias is not None:
                raise ValueError("pass either an nn.Linear or weight and bias, not both")
            weight, bias = weight.weight, weight.bias
        if not isinstance(weight, torch.Tensor):
            raise TypeError("weight must be a torch.Tensor or nn.Linear, "
                            f"got {type(weight).__name__}")
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D [d_out, d_in], got shape {tuple(weight.shape)}")
        if layout not in ("in", "out"):
            raise ValueError(f"layout must be 'in' or 'out', got {layout!r}")
        w = weight.detach()
        w = w.t().contiguous() if layout == "in" else w.contiguous()
        b = None if bias is None else bias.detach().contiguous()
        return cls(w, b, layout=layout)

    def __repr__(self) -> str:
        return (f"SparseLinear(in={self.in_features}, out={self.out_features}, "
                f"layout={self.layout!r}, dtype={self.weight.dtype}, device={self.weight.device}, "
                f"bias={self.bias is not None})")

    def _need(self, layout: str, what: str) -> None:
        if self.layout != layout:
            raise ValueError(f"{what} needs layout={layout!r}; this SparseLinear holds "
                             f"layout={self.layout!r} (build it with from_linear(..., "
                             f"layout={layout!r}))")

    def dense(self, x: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
        """``W x + b`` for every input -> ``[..., d_out]`` (either layout)."""
        x2 = _flat_x(x, self.weight, self.in_features)
        if self.layout == "in":
            y = _input_dense(x2, self.weight, self.bias, backend)
        else:
            y = _row_dense(x2, self.weight, self.bias, backend)
        return _out(y, x, self.out_features)

    def input_sparse(self, x: torch.Tensor, idx: torch.Tensor, *,
                     backend: str | None = None) -> torch.Tensor:
        """``sum_{i in idx} x[..., i] W[:, i] + b`` -> ``[..., d_out]`` (layout "in")."""
        self._need("in", "input_sparse")
        x2 = _flat_x(x, self.weight, self.in_features)
        idx = _check_idx(idx, self.weight)
        return _out(_input_sparse(x2, idx, self.weight, self.bias, backend), x, self.out_features)

    def input_sparse_threshold(self, x: torch.Tensor, threshold, *,
                               backend: str | None = None) -> torch.Tensor:
        """The product over inputs with ``|x_i| >= threshold`` (per row) -> ``[..., d_out]``."""
        self._need("in", "input_sparse_threshold")
        x2 = _flat_x(x, self.weight, self.in_features)
        t = _check_threshold(threshold, x2, self.in_features)
        return _out(_input_sparse_threshold(x2, t, self.weight, self.bias, backend), x,
                    self.out_features)

    def output_sparse(self, x: torch.Tensor, idx: torch.Tensor, *,
                      backend: str | None = None) -> torch.Tensor:
        """``W[idx, :] x + b[idx]`` -> compact ``[..., k]`` (layout "out")."""
        self._need("out", "output_sparse")
        x2 = _flat_x(x, self.weight, self.in_features)
        idx = _check_idx(idx, self.weight)
        return _out(_output_sparse(x2, idx, self.weight, self.bias, backend), x, idx.numel())
