"""Triton kernels for sparse decode on CUDA: the GPU side of :mod:`tda.engine.kernels`.

Three kernel families, all accumulating in fp32 and rounding once on output (fp32, bf16, fp16),
for small batches that share one active set (the union rule of :mod:`tda.engine.kernels`; every
row sits in one program, so the dispatcher sends at most ``triton_backend.MAX_ROWS`` rows):

* :func:`input_sparse` -- ``y[n, :] = sum_{j} x[n, idx[j]] * w_t[idx[j], :] (+ bias)`` for an
  index list (CATS down, predictors); ``x`` is used as given (the caller zeroes a row's extras).
* :func:`input_sparse_threshold` -- the same product over the inputs with ``|x[n, i]| >= t``
  (TEAL / TT / CHESS): selection and product in one kernel, no index list. A weight row
  ``w_t[i, :]`` is loaded only when input ``i`` is active in some row (the union), and each row's
  own inactive entries count as zero. ``t`` is a float or one threshold per input, compared in
  fp32. :func:`input_sparse_topk` (WINA's per-row top-k of ``|x_i| * scale_i``) selects with
  ``torch.topk`` and runs the same kernel on the keep mask (no host sync, no index list).
* :func:`output_sparse` -- ``y[n, j] = w[idx[j], :] . x[n, :] (+ bias[idx[j]])`` (CATS up), the
  compact ``[N, k]`` result.

Input-sparse kernels tile the output columns and split the reduction over the inputs
(``splits`` programs per column tile, fp32 partials summed after) so that a GEMV with a few
thousand outputs still fills the GPU. Each program handles every row of the batch, so a weight
tile is read once for all of them.

Callers go through :mod:`tda.engine.kernels` (which checks arguments and picks this module for
CUDA tensors). On a machine without a GPU the kernels run on CPU tensors through Triton's
interpreter when ``TRITON_INTERPRET=1`` was set before this module was imported (the tests do);
:data:`INTERPRETED` says which mode the kernels were built in. Block sizes are first guesses,
not yet tuned on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["INTERPRETED", "check_device", "compile_for", "input_sparse", "input_sparse_threshold",
           "input_sparse_topk", "output_sparse"]

_BLOCK_N = 128  # output columns per program (input-sparse)
_BLOCK_J = 16  # active outputs per program (output-sparse)
_TILE = 8192  # elements of the [rows, k, n] product tile per step (registers per program)
_SELECT_SCALAR, _SELECT_VECTOR, _SELECT_MASK = 0, 1, 2


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _tile(pid_n, n_rows, d_out, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Every row of the batch and column tile ``pid_n``, with their in-range masks."""
    rows = tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return rows, cols, rows < n_rows, cols < d_out


@triton.jit
def _store_rows(acc, y_ptr, bias_ptr, rows, cols, row_ok, col_ok, n_cols,
                HAS_BIAS: tl.constexpr, FINAL: tl.constexpr):
    """Write ``acc[rows, cols]`` to ``y[rows, cols]``: the finished output (bias added, rounded
    to ``y``'s dtype) when FINAL, else this split's fp32 partial sums."""
    if FINAL:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        acc = acc.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + rows[:, None] * n_cols + cols[None, :], acc,
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _in_sparse_idx_kernel(x_ptr, idx_ptr, w_ptr, bias_ptr, y_ptr, n_rows, n_idx, d_in, d_out,
                          per_split, HAS_BIAS: tl.constexpr, FINAL: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """``y[s, n, c] = sum_{j in split s} x[n, idx[j]] * w[idx[j], c]`` for one column tile."""
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rows, cols, row_ok, col_ok = _tile(pid_n, n_rows, d_out, BLOCK_M, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    lo = split * per_split
    hi = tl.minimum(lo + per_split, n_idx)
    for j0 in range(lo, hi, BLOCK_K):
        js = j0 + tl.arange(0, BLOCK_K)
        j_ok = js < hi
        i = tl.load(idx_ptr + js, mask=j_ok, other=0).to(tl.int64)
        xv = tl.load(x_ptr + rows[:, None] * d_in + i[None, :],
                     mask=row_ok[:, None] & j_ok[None, :], other=0.0).to(tl.float32)
        w = tl.load(w_ptr + i[:, None] * d_out + cols[None, :],
                    mask=j_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(xv[:, :, None] * w[None, :, :], axis=1)
    y_split = y_ptr + split * n_rows * d_out  # split is 0 when FINAL (one split)
    _store_rows(acc, y_split, bias_ptr, rows, cols, row_ok, col_ok, d_out, HAS_BIAS, FINAL)


@triton.jit
def _in_sparse_select_kernel(x_ptr, t_ptr, keep_ptr, w_ptr, bias_ptr, y_ptr, count_ptr, t_scalar,
                             n_rows, d_in, d_out, per_split, SELECT: tl.constexpr,
                             COUNT: tl.constexpr, HAS_BIAS: tl.constexpr, FINAL: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                             BLOCK_N: tl.constexpr):
    """Input-sparse product over the selected inputs of each row; weight rows of the union only.

    SELECT 0: ``|x| >= t_scalar``; 1: ``|x[n, i]| >= t[i]``; 2: ``keep[n, i] != 0``. With COUNT
    the column tile 0 adds the union's size (over this split's inputs) to ``count[0]``.
    """
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rows, cols, row_ok, col_ok = _tile(pid_n, n_rows, d_out, BLOCK_M, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    n_active = tl.zeros((BLOCK_K,), dtype=tl.int32)
    lo = split * per_split
    hi = tl.minimum(lo + per_split, d_in)
    for k0 in range(lo, hi, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < hi
        x_ok = row_ok[:, None] & k_ok[None, :]
        x_offs = rows[:, None] * d_in + ks[None, :]
        xv = tl.load(x_ptr + x_offs, mask=x_ok, other=0.0).to(tl.float32)
        if SELECT == 0:
            keep = tl.abs(xv) >= t_scalar
        elif SELECT == 1:
            t = tl.load(t_ptr + ks, mask=k_ok, other=float("inf"))
            keep = tl.abs(xv) >= t[None, :]
        else:
            keep = tl.load(keep_ptr + x_offs, mask=x_ok, other=0) != 0
        keep = keep & x_ok
        xv = tl.where(keep, xv, 0.0)
        active = tl.max(keep.to(tl.int32), axis=0) > 0  # the union over rows, [BLOCK_K]
        w = tl.load(w_ptr + ks.to(tl.int64)[:, None] * d_out + cols[None, :],
                    mask=active[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(xv[:, :, None] * w[None, :, :], axis=1)
        n_active += active.to(tl.int32)
    if COUNT:
        if pid_n == 0:
            tl.atomic_add(count_ptr, tl.sum(n_active).to(tl.int64))
    y_split = y_ptr + split * n_rows * d_out  # split is 0 when FINAL (one split)
    _store_rows(acc, y_split, bias_ptr, rows, cols, row_ok, col_ok, d_out, HAS_BIAS, FINAL)


@triton.jit
def _out_sparse_kernel(x_ptr, idx_ptr, w_ptr, bias_ptr, y_ptr, n_rows, n_idx, d_in,
                       HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_J: tl.constexpr,
                       BLOCK_D: tl.constexpr):
    """``y[n, j] = w[idx[j], :] . x[n, :] (+ bias[idx[j]])`` for one tile of active outputs."""
    pid = tl.program_id(0)
    rows = tl.arange(0, BLOCK_M)
    js = pid * BLOCK_J + tl.arange(0, BLOCK_J)
    row_ok = rows < n_rows
    j_ok = js < n_idx
    o = tl.load(idx_ptr + js, mask=j_ok, other=0).to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_J), dtype=tl.float32)
    for d0 in range(0, d_in, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        d_ok = ds < d_in
        xv = tl.load(x_ptr + rows[:, None] * d_in + ds[None, :],
                     mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        w = tl.load(w_ptr + o[:, None] * d_in + ds[None, :],
                    mask=j_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(xv[:, None, :] * w[None, :, :], axis=2)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + o, mask=j_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rows[:, None] * n_idx + js[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=row_ok[:, None] & j_ok[None, :])


INTERPRETED = type(_in_sparse_idx_kernel).__name__ == "InterpretedFunction"


# ---------------------------------------------------------------------------------------------
# Launchers (arguments are checked by tda.engine.kernels; these only size the grids)
# ---------------------------------------------------------------------------------------------


def check_device(w: torch.Tensor) -> None:
    """Raise ValueError when the kernels cannot run on ``w``'s device."""
    if w.is_cuda or (w.is_cpu and INTERPRETED):
        return
    if w.is_cpu:
        raise ValueError("the triton backend runs CPU tensors only under Triton's interpreter: set "
                         "TRITON_INTERPRET=1 before tda.engine.triton_kernels is imported")
    raise ValueError(f"the triton backend runs on CUDA tensors, got {w.device}")


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _blocks(n_rows: int, d_out: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_K, BLOCK_N): every row in one program, the product tile under _TILE."""
    bm = max(2, _pow2(n_rows))
    bn = min(_BLOCK_N, max(16, _pow2(d_out)))
    bk = max(8, min(64, _TILE // (bm * bn)))
    return bm, bk, bn


def _out_blocks(n_rows: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_D) of the output-sparse kernel (BLOCK_J is fixed)."""
    bm = max(2, _pow2(n_rows))
    return bm, max(16, min(128, _TILE // (bm * _BLOCK_J)))


_SMS: dict = {}


def _split_count(work: int, block_k: int, col_tiles: int, device: torch.device) -> int:
    """Splits of the reduction so that about two programs run per streaming multiprocessor."""
    if device.type != "cuda":
        return 1
    if device not in _SMS:
        _SMS[device] = torch.cuda.get_device_properties(device).multi_processor_count
    want = -(-2 * _SMS[device] // col_tiles)
    return max(1, min(want, -(-work // (4 * block_k))))  # at least 4 steps of work per split


def input_sparse(x2: torch.Tensor, idx: torch.Tensor, w_t: torch.Tensor,
                 bias: torch.Tensor | None, *, splits: int | None = None) -> torch.Tensor:
    """``x2[N, d_in]``, unique ``idx[k]`` (int64), ``w_t[d_in, d_out]`` -> ``y[N, d_out]``."""
    n, d_in = x2.shape
    d_out = w_t.shape[1]
    k = idx.numel()
    if k == 0:
        y = x2.new_zeros(n, d_out)
        return y if bias is None else y.add_(bias)
    bm, bk, bn = _blocks(n, d_out)
    tiles = triton.cdiv(d_out, bn)
    per_split, s = _per_split(k, bk, splits or _split_count(k, bk, tiles, x2.device))
    y = _output(s, n, d_out, x2)
    _in_sparse_idx_kernel[(tiles, s)](
        x2, idx, w_t, bias if bias is not None else y, y, n, k, d_in, d_out, per_split,
        HAS_BIAS=bias is not None, FINAL=s == 1, BLOCK_M=bm, BLOCK_K=bk, BLOCK_N=bn)
    return _finish(y, bias, x2.dtype)


def input_sparse_threshold(x2: torch.Tensor, threshold, w_t: torch.Tensor,
                           bias: torch.Tensor | None, count: torch.Tensor | None = None, *,
                           splits: int | None = None) -> torch.Tensor:
    """``threshold`` a float or an fp32 ``[d_in]`` tensor; ``count`` an int64 ``[1]`` tensor
    that gets the union's size added."""
    if isinstance(threshold, torch.Tensor):
        return _select(x2, _SELECT_VECTOR, 0.0, threshold, None, w_t, bias, count, splits)
    return _select(x2, _SELECT_SCALAR, float(threshold), None, None, w_t, bias, count, splits)


def input_sparse_topk(x2: torch.Tensor, scale: torch.Tensor, k: int, w_t: torch.Tensor,
                      bias: torch.Tensor | None, count: torch.Tensor | None = None, *,
                      splits: int | None = None) -> torch.Tensor:
    """Per row the ``k`` inputs with the largest ``|x_i| * scale[i]`` (fp32 scores; ties as
    ``torch.topk`` breaks them), then the mask kernel: the union's weight rows, rows masked."""
    score = x2.abs().float() * scale
    top = torch.topk(score, k, dim=1, sorted=False).indices
    keep = torch.zeros(x2.shape, dtype=torch.uint8, device=x2.device).scatter_(1, top, 1)
    return _select(x2, _SELECT_MASK, 0.0, None, keep, w_t, bias, count, splits)


def _select(x2, mode, t_scalar, t_vec, keep, w_t, bias, count, splits):
    n, d_in = x2.shape
    d_out = w_t.shape[1]
    bm, bk, bn = _blocks(n, d_out)
    tiles = triton.cdiv(d_out, bn)
    per_split, s = _per_split(d_in, bk, splits or _split_count(d_in, bk, tiles, x2.device))
    y = _output(s, n, d_out, x2)
    _in_sparse_select_kernel[(tiles, s)](
        x2, t_vec if t_vec is not None else x2, keep if keep is not None else x2, w_t,
        bias if bias is not None else y, y, count if count is not None else y, t_scalar,
        n, d_in, d_out, per_split, SELECT=mode, COUNT=count is not None,
        HAS_BIAS=bias is not None, FINAL=s == 1, BLOCK_M=bm, BLOCK_K=bk, BLOCK_N=bn)
    return _finish(y, bias, x2.dtype)


def output_sparse(x2: torch.Tensor, idx: torch.Tensor, w: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """``x2[N, d_in]``, ``idx[k]`` (int64, repeats allowed), ``w[d_out, d_in]`` -> ``y[N, k]``."""
    n, d_in = x2.shape
    k = idx.numel()
    y = torch.empty(n, k, dtype=x2.dtype, device=x2.device)
    if k == 0:
        return y
    bm, bd = _out_blocks(n)
    _out_sparse_kernel[(triton.cdiv(k, _BLOCK_J),)](
        x2, idx, w, bias if bias is not None else y, y, n, k, d_in,
        HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_J=_BLOCK_J, BLOCK_D=bd)
    return y


def _per_split(work: int, block_k: int, splits: int) -> tuple[int, int]:
    """(entries per split, a multiple of block_k; the number of splits that leaves)."""
    per = triton.cdiv(triton.cdiv(work, max(1, splits)), block_k) * block_k
    return per, max(1, triton.cdiv(work, per))


def _output(splits: int, n: int, d_out: int, x2: torch.Tensor) -> torch.Tensor:
    """The final ``[N, d_out]`` output (one split), else fp32 partials ``[splits, N, d_out]``."""
    if splits == 1:
        return torch.empty(n, d_out, dtype=x2.dtype, device=x2.device)
    return torch.empty(splits, n, d_out, dtype=torch.float32, device=x2.device)


def _finish(y: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Sum the partials of a split reduction (+ bias) in fp32 and round once to ``dtype``."""
    if y.dim() == 2:
        return y
    y = y.sum(0)
    if bias is not None:
        y += bias.float()
    return y.to(dtype)


def compile_for(arch: int = 90, dtype: str = "bf16", rows: int = 8,
                d_out: int = 2048) -> dict[str, int]:
    """Build every kernel, with the block sizes its launcher picks for ``rows`` rows, for CUDA
    compute capability ``arch`` (90: H100/H200, 80: A100) -- no GPU needed. The interpreter
    accepts code that the GPU compiler rejects; this is the check. Returns cubin sizes (bytes)."""
    if INTERPRETED:
        raise RuntimeError("compile_for needs the compiled kernels: import this module without "
                           "TRITON_INTERPRET=1")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    bm, bk, bn = _blocks(rows, d_out)
    p = f"*{dtype}"
    sizes = {"n_rows": "i32", "d_in": "i32", "d_out": "i32", "per_split": "i32"}
    idx_args = {"x_ptr": p, "idx_ptr": "*i64", "w_ptr": p, "bias_ptr": p, "y_ptr": "*fp32",
                "n_rows": "i32", "n_idx": "i32", "d_in": "i32", "d_out": "i32", "per_split": "i32"}
    tiles = {"HAS_BIAS": True, "BLOCK_M": bm, "BLOCK_K": bk, "BLOCK_N": bn}

    def select(t_ptr, keep_ptr, mode, final):
        args = {"x_ptr": p, "t_ptr": t_ptr, "keep_ptr": keep_ptr, "w_ptr": p, "bias_ptr": p,
                "y_ptr": p if final else "*fp32", "count_ptr": "*i64", "t_scalar": "fp32", **sizes}
        return (_in_sparse_select_kernel, args,
                {"SELECT": mode, "COUNT": True, "FINAL": final, **tiles})

    obm, obd = _out_blocks(rows)
    jobs = {
        "input_sparse": (_in_sparse_idx_kernel, idx_args, {"FINAL": False, **tiles}),
        "input_sparse_threshold": select(p, p, _SELECT_SCALAR, True),
        "input_sparse_threshold_per_input": select("*fp32", p, _SELECT_VECTOR, False),
        "input_sparse_topk": select(p, "*u8", _SELECT_MASK, False),
        "output_sparse": (_out_sparse_kernel,
                          {"x_ptr": p, "idx_ptr": "*i64", "w_ptr": p, "bias_ptr": p, "y_ptr": p,
                           "n_rows": "i32", "n_idx": "i32", "d_in": "i32"},
                          {"HAS_BIAS": True, "BLOCK_M": obm, "BLOCK_J": _BLOCK_J,
                           "BLOCK_D": obd}),
    }
    target = GPUTarget("cuda", arch, 32)
    out = {}
    for name, (fn, args, consts) in jobs.items():
        src = ASTSource(fn, {**args, **dict.fromkeys(consts, "constexpr")}, constexprs=consts)
        out[name] = len(triton.compile(src, target=target).asm["cubin"])
    return out
