"""Which sparse-kernel calls go to Triton (:mod:`tda.engine.triton_kernels`), without importing
``triton`` until a call needs it.

Auto: CUDA tensors in fp32/bf16/fp16 with 1 to :data:`MAX_ROWS` rows and no autograd, when
``triton`` imports (and ``TDA_KERNELS_BACKEND`` is not ``torch``); anything else keeps the
other backends. ``backend="triton"`` forces the kernels and fails loud when they cannot run
(no triton, a CPU tensor without Triton's interpreter, another dtype, too many rows).
"""

from __future__ import annotations

import os

import torch

MAX_ROWS = 8  # rows per launch: each program holds an accumulator for every row
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class _State:
    tried = False
    mod = None  # tda.engine.triton_kernels once imported
    error: str | None = None


def kernels():
    """:mod:`tda.engine.triton_kernels` (imported on first use), or None without triton."""
    if not _State.tried:
        if os.environ.get("TDA_KERNELS_BACKEND", "").strip().lower() == "torch":
            _State.error = "disabled by TDA_KERNELS_BACKEND=torch"
        else:
            try:
                from tda.engine import triton_kernels
                _State.mod = triton_kernels
            except Exception as e:  # noqa: BLE001 - no (working) triton means "use torch"
                _State.error = f"{type(e).__name__}: {e}"
        _State.tried = True
    return _State.mod


def use(backend: str | None, w: torch.Tensor, x2: torch.Tensor) -> bool:
    """True when this call (weight ``w``, input rows ``x2[N, d_in]``) runs the Triton kernels."""
    if backend == "triton":
        tk = kernels()
        if tk is None:
            raise RuntimeError(f"the triton backend is unavailable: {_State.error}")
        tk.check_device(w)
        if w.dtype not in DTYPES:
            raise TypeError(f"the triton backend supports fp32/bf16/fp16, got {w.dtype}")
        if not 1 <= x2.shape[0] <= MAX_ROWS:
            raise ValueError(f"the triton backend takes 1 to {MAX_ROWS} rows, got {x2.shape[0]}")
        return True
    return (w.is_cuda and (backend is None or backend == "auto") and w.dtype in DTYPES
            and 1 <= x2.shape[0] <= MAX_ROWS and not (x2.requires_grad or w.requires_grad)
            and kernels() is not None)


def info() -> dict:
    """Whether CUDA calls get the Triton kernels: triton's version, interpreter mode, the reason
    when unavailable, and the row limit."""
    tk = kernels()
    return {"available": tk is not None, "version": tk.triton.__version__ if tk else None,
            "interpreted": bool(tk and tk.INTERPRETED), "error": _State.error,
            "max_rows": MAX_ROWS}
