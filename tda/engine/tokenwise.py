"""Token-wise sparse linears: a new selection of inputs (or outputs) at every decode step.

Each builder returns ``fn(x[..., d_in]) -> y[..., d_out]`` for a linear override that

1. selects the active entries of each row of ``x`` (a magnitude threshold, per-entry cut-offs
   or a per-row top-k of a score);
2. takes the **union** of the rows' active sets (batch decode: one index list ``idx[k]``),
   zeroing in each row the entries that are active only in other rows — so every row gets
   exactly what it would get alone;
3. multiplies with the sparse kernel (:mod:`tda.engine.kernels`) that reads only the weight rows
   of ``W_t[d_in, d_out]`` (:func:`tda.engine.layouts.input_major`) at ``idx``. A threshold
   rule goes through the fused kernel (:func:`tda.engine.kernels.input_sparse_threshold`:
   selection and product in one call, no index list built in Python).

When every input is active the dense function is called instead (identical results to dense
at density 1.0). A :class:`Counter` accumulates the kept fraction per module without syncs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tda.engine import kernels
from tda.models.quant import QuantWeightT

LinearFn = Callable[[torch.Tensor], torch.Tensor]


class Counter:
    """Kept and total input entries (weight rows) of one module over the decode, and ``also_read``:
    the entries not kept whose weights a kernel read all the same (a decode row multiplied on the
    dense tiles: :func:`quant_threshold_linear`, :func:`sparse_product`)."""

    __slots__ = ("kept", "total", "also_read")

    def __init__(self):
        self.kept = 0
        self.total = 0
        self.also_read = 0

    def add(self, kept, total: int) -> None:
        """``kept``: an int, or a 0-d tensor (summed lazily: no device sync per step)."""
        self.kept = self.kept + kept
        self.total += total

    def accumulator(self, device) -> torch.Tensor:
        """An int64 ``[1]`` tensor that kernels add the kept count to in place (``kernels``'
        ``count=``); it becomes this counter's ``kept``. Callers still add ``total`` per call."""
        self.kept = torch.zeros(1, dtype=torch.long, device=device)
        return self.kept

    def also_read_accumulator(self, device) -> torch.Tensor:
        """As :meth:`accumulator`, for :attr:`also_read`."""
        self.also_read = torch.zeros(1, dtype=torch.long, device=device)
        return self.also_read

    @property
    def fraction(self) -> float:
        """The kept fraction of the inputs (the method's density)."""
        return float(self.kept) / self.total if self.total else float("nan")

    @property
    def read(self) -> float:
        """The fraction of the weight rows read: :attr:`fraction`, plus :attr:`also_read`."""
        return self.fraction + float(self.also_read) / self.total if self.total else float("nan")


def sparse_product(x: torch.Tensor, x2: torch.Tensor, keep: torch.Tensor | None, wt, bias, dense: LinearFn,
                   counter: Counter | None, *, idx: torch.Tensor | None = None) -> torch.Tensor:
    """``keep[N, d_in]`` (bool) -> the sparse product of the kept entries, shaped like ``x``. ``wt``:
    ``W_t[d_in, d_out]``, or a quantized weight's input-major repack
    (:class:`~tda.models.quant.QuantWeightT`: :func:`tda.engine.quant_kernels.input_sparse`; one row
    keeping at least :func:`~tda.engine.quant_kernels.dense_from` of its inputs, where ``dense`` reads
    integer tiles: those tiles with the other inputs zeroed). One row may come as its kept indices
    ``idx`` (ascending) instead of ``keep``."""
    d_in = x2.shape[1]
    if idx is None:
        idx = torch.nonzero(keep[0] if x2.shape[0] == 1 else keep.any(dim=0)).flatten()
    elif x2.shape[0] != 1:
        raise ValueError("sparse_product: kept indices stand for one row's mask only")
    k = int(idx.numel())
    if counter is not None:
        counter.add(k, d_in)
    if k == d_in and (keep is None or bool(keep.all())):
        return dense(x)
    xs = x2 if x2.shape[0] == 1 else x2 * keep
    if isinstance(wt, QuantWeightT):
        from tda.engine import quant_kernels

        tiles = getattr(dense, "tda_tiles", None)
        if (tiles is not None and x2.shape[0] == 1 and k >= quant_kernels.dense_from() * d_in
                and (bias is None or (bias.dtype is torch.float32 and bias.is_contiguous()))):
            # a decode row keeping many inputs: the dense tiles, its other inputs zeroed (as quant_threshold_linear)
            xm = torch.zeros_like(xs).index_copy_(1, idx, xs.index_select(1, idx))
            y = quant_kernels.quant_ops().vnni_gemv_threshold(xm, tiles.packed, tiles.st, tiles.mt, tiles.qtype, bias,
                                                              0.0, None, None, None, 0.0)
            if y.numel():
                if counter is not None:
                    counter.also_read += d_in - k  # in place where a kernel adds to it too
                return y.to(x.dtype).view(*x.shape[:-1], wt.shape[0])
        return quant_kernels.input_sparse(xs, wt, idx, bias).to(x.dtype).view(*x.shape[:-1], wt.shape[0])
    return kernels.input_sparse(xs, idx, wt, bias).view(*x.shape[:-1], wt.shape[1])


def _keep_all(d_in: int, dense: LinearFn, counter: Counter | None) -> LinearFn:
    """Every input kept: the dense function, counted as read."""

    def keep_all(x):
        if counter is not None:
            counter.add(d_in, d_in)
        return dense(x)

    return keep_all


def threshold_linear(wt: torch.Tensor, bias, cut, dense: LinearFn, counter: Counter | None = None) -> LinearFn:
    """Keep ``|x_i| ≥ cut`` (``cut`` a float, or a ``[d_in]`` tensor of per-entry cut-offs).

    Exact zeros are never kept (they add nothing: a ReLU's half-zero input at threshold 0 reads
    only the non-zero rows). ``cut=None`` keeps everything: the dense function, counted as read.
    """
    if cut is None:
        return _keep_all(wt.shape[0], dense, counter)
    tiny = torch.finfo(torch.float32).tiny
    if isinstance(cut, torch.Tensor):
        cut = cut.to(device=wt.device, dtype=torch.float32).clamp_min(tiny).contiguous()
    else:
        cut = max(float(cut), tiny)
    b = None if bias is None else bias.detach()
    d_in, d_out = wt.shape
    # The kernel counts the active inputs itself (one int64 accumulator, read when reported).
    count = counter.accumulator(wt.device) if counter is not None else None
    # Decode steps call the C++ op directly: the weight, bias and cut-offs are checked here once;
    # per call only x's rows, dtype and contiguity (anything else takes the checked public path).
    ops = kernels.cpp_ops() if wt.is_cpu and wt.is_contiguous() and wt.dtype in kernels.CPP_DTYPES else None
    if b is not None and not (b.is_contiguous() and b.dtype == wt.dtype and b.device == wt.device):
        ops = None
    t_scalar, t_vec = (0.0, cut) if isinstance(cut, torch.Tensor) else (cut, None)
    max_rows = kernels.CPP_MAX_ROWS
    wdt, lim = wt.dtype, (max_rows * d_in if ops is not None else -1)

    def fn(x):
        if counter is not None:
            counter.total += d_in
        if x.numel() <= lim and x.dtype is wdt and x.is_contiguous() and not x.requires_grad:
            return ops.input_sparse_threshold(x, wt, b, t_scalar, t_vec, count)  # a decode step: x as it is
        x2 = x.reshape(-1, d_in)
        if (ops is not None and x2.shape[0] <= max_rows and x2.dtype == wt.dtype
                and x2.is_contiguous() and not x2.requires_grad):
            y = ops.input_sparse_threshold(x2, wt, b, t_scalar, t_vec, count)
        else:
            y = kernels.input_sparse_threshold(x2, cut, wt, b, count=count)
        return y.view(*x.shape[:-1], d_out)

    return fn


def quant_threshold_linear(qwt, bias, cut, dense: LinearFn, counter: Counter | None = None) -> LinearFn:
    """:func:`threshold_linear` over the quantized format: keep ``|x_i| ≥ cut`` (exact zeros never),
    the union of the rows' sets, each row's own inactive inputs zeroed, then the input-sparse kernel
    over the input-major repack ``qwt`` (:func:`tda.engine.quant_kernels.input_sparse`) — only the kept
    inputs' int8 rows are read. All inputs kept: the dense function. A decode row that keeps at least
    :func:`~tda.engine.quant_kernels.dense_from` of its inputs, where ``dense`` reads integer tiles,
    is multiplied on those tiles with its inactive inputs zeroed instead (``vnni_gemv_threshold``:
    the same product to fp32 rounding, faster there on the CPUs measured)."""
    from tda.engine import quant_kernels

    d_out, d_in = qwt.shape
    tiny = torch.finfo(torch.float32).tiny
    b = None if bias is None else bias.detach()
    if cut is None:
        return _keep_all(d_in, dense, counter)
    cut_t = cut.to(torch.float32).clamp_min(tiny).contiguous() if isinstance(cut, torch.Tensor) \
        else max(float(cut), tiny)
    ops = quant_kernels.quant_ops() if qwt.qt.device.type == "cpu" else None
    t_scalar, t_vec = (0.0, cut_t) if isinstance(cut_t, torch.Tensor) else (cut_t, None)
    count = counter.accumulator(qwt.qt.device) if counter is not None and ops is not None else None
    tiles = getattr(dense, "tda_tiles", None) if ops is not None and hasattr(ops, "vnni_gemv_threshold") else None
    also = counter.also_read_accumulator(qwt.qt.device) if counter is not None and tiles is not None else None
    dense_from = quant_kernels.dense_from()

    def fn(x):
        if ops is not None:  # selection and product in one C++ call
            if counter is not None:
                counter.total += d_in
            x32 = x if x.dtype is torch.float32 and x.is_contiguous() else x.to(torch.float32).contiguous()
            if tiles is not None and x32.numel() == d_in:  # a decode row keeping many inputs: the dense tiles
                y = ops.vnni_gemv_threshold(x32, tiles.packed, tiles.st, tiles.mt, tiles.qtype, b, t_scalar, t_vec,
                                            count, also, dense_from)
                if y.numel():
                    return y.to(x.dtype)
            if (y := quant_kernels.vnni_input_sparse(ops, x32, qwt, b, t=t_scalar, tvec=t_vec, count=count)) is not None:
                return y.to(x.dtype)
            return ops.quant_input_sparse_threshold(x32, qwt.qt, qwt.st, qwt.mt, b, t_scalar, t_vec, count, qwt.sd, qwt.md).to(x.dtype)
        x2 = x.reshape(-1, d_in).to(torch.float32)
        keep = (x2.abs() >= (cut_t.to(x2.device) if isinstance(cut_t, torch.Tensor) else cut_t)) & (x2 != 0)
        return sparse_product(x, x2, keep, qwt, b, dense, counter)

    return fn


def quant_topk_linear(qwt, bias, col_scale: torch.Tensor, k: int, dense: LinearFn,
                      counter: Counter | None = None) -> LinearFn:
    """:func:`topk_linear` over the quantized format: per row the ``k`` inputs with the largest
    ``|x_i|·col_scale[i]`` (:func:`tda.engine.kernels.topk_sorted`; ties at the k-th score go to the lower index), the union
    of the rows' sets with each row's own others zeroed, then the input-sparse quantized kernel
    (:func:`sparse_product`). A decode row keeping at least :func:`~tda.engine.quant_kernels.dense_from`
    of its inputs, where ``dense`` reads integer tiles: the same selection and the tiles with the
    other inputs zeroed, in one C++ call (``vnni_gemv_topk``)."""
    from tda.engine import quant_kernels

    d_out, d_in = qwt.shape
    b = None if bias is None else bias.detach()
    k = max(1, min(int(k), d_in))
    if k >= d_in:
        return _keep_all(d_in, dense, counter)
    scale = col_scale.to(torch.float32).contiguous()
    ops = quant_kernels.quant_ops() if qwt.qt.device.type == "cpu" else None
    tiles = getattr(dense, "tda_tiles", None) if ops is not None and hasattr(ops, "vnni_gemv_topk") else None
    if tiles is not None and (k < quant_kernels.dense_from() * d_in or scale.device.type != "cpu"
                              or (b is not None and (b.dtype is not torch.float32 or not b.is_contiguous()))):
        tiles = None

    def fn(x):
        x2 = x.reshape(-1, d_in).to(torch.float32)
        if tiles is not None and x2.shape[0] == 1:  # a decode row keeping many inputs: selection and tiles in one call
            y = ops.vnni_gemv_topk(x2.contiguous(), scale, k, tiles.packed, tiles.st, tiles.mt, tiles.qtype, b)
            if y.numel():
                if counter is not None:
                    counter.add(k, d_in)
                    counter.also_read += d_in - k
                return y.to(x.dtype).view(*x.shape[:-1], d_out)
        top = kernels.topk_sorted(x2.abs() * scale, k)  # [N, k], ascending
        if x2.shape[0] == 1:
            return sparse_product(x, x2, None, qwt, b, dense, counter, idx=top[0])
        keep = torch.zeros_like(x2, dtype=torch.bool).scatter_(1, top, True)
        return sparse_product(x, x2, keep, qwt, b, dense, counter)

    return fn


def topk_linear(wt: torch.Tensor, bias, col_scale: torch.Tensor, k: int, dense: LinearFn,
                counter: Counter | None = None) -> LinearFn:
    """Keep, per row, the ``k`` inputs with the largest ``|x_i|·col_scale[i]`` (WINA's rule):
    selection and product in one call (:func:`tda.engine.kernels.input_sparse_topk`)."""
    b = None if bias is None else bias.detach()
    d_in = wt.shape[0]
    k = max(1, min(int(k), d_in))
    scale = col_scale.to(device=wt.device, dtype=torch.float32).contiguous()
    count = counter.accumulator(wt.device) if counter is not None else None

    def fn(x):
        if counter is not None:
            counter.total += d_in
        if k >= d_in:
            if count is not None:
                count.add_(d_in)
            return dense(x)
        return kernels.input_sparse_topk(x, scale, k, wt, b, count=count)

    return fn


def masked_linear(cut, dense: LinearFn, counter: Counter | None = None) -> LinearFn:
    """The same selection as :func:`threshold_linear`, applied as a 0/1 mask before the dense
    function (no time saved): for modules whose weights cannot be read in place (offloaded)."""
    tiny = torch.finfo(torch.float32).tiny

    def fn(x):
        if cut is None:
            keep = torch.ones_like(x, dtype=torch.bool)
        else:
            c = cut.to(x.device).clamp_min(tiny) if isinstance(cut, torch.Tensor) else max(float(cut), tiny)
            keep = x.abs() >= c
        if counter is not None:
            k2 = keep.reshape(-1, x.shape[-1])
            counter.add((k2[0] if k2.shape[0] == 1 else k2.any(dim=0)).sum(), x.shape[-1])
        return dense(x * keep)

    return fn
