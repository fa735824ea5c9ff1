"""Sparse FFNs as linear overrides: physically sliced weights, or TT's per-token threshold.

Sliced FFN (griffin, tda, static, random): for each layer the kept rows of ``W_gate``/``W_up``
(``W_in``) and the kept columns of ``W_down`` are copied once into contiguous tensors. The input
projections are overridden to return only the kept neurons' pre-activations ``[..., k]``, the
element-wise activation runs on those, and the output projection consumes ``a[..., k]``. Since
the activation is element-wise this equals the dense FFN with the other neurons' ``a_i`` set
to zero, for every family (biases sliced with the rows; the output bias kept whole).

Batches (``B`` rows, each with its own mask), two layouts:
- ``union`` (default): slice the union of the rows' masks, then zero each row's non-kept
  neurons with a 0/1 row mask ``[B, k_union]``; reads ``k_union ≤ B·k`` weight rows per step;
- ``rows``: one slice per row, padded to the largest ``k`` with zero rows/columns (padded
  neurons contribute exactly 0), applied with ``bmm``; reads ``B·k_max`` rows per step.
At batch 1 both are the plain slice.

TT: the input projections stay dense; the output projection zeroes ``|a_i| < t_L/‖W_down[:, i]‖``
per token before the dense ``W_down``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tda.engine.fastpath import linear_fn
from tda.models import hugepages

LinearFn = Callable[[torch.Tensor], torch.Tensor]
BATCH_MODES = ("union", "rows")


@dataclass
class LayerSlice:
    """One layer's sliced weights. ``in_w[j]``: ``[k, d_model]`` (or ``[B, k, d_model]`` in rows
    mode), ``in_b[j]``: ``[k]``/``[B, k]``/None, ``down_w``: ``[d_model, k]`` (``[B, d_model, k]``),
    ``down_b``: ``[d_model]``/None, ``row_mask``: ``[B, k]`` 0/1 in union mode with B>1, else None.
    """

    in_w: list[torch.Tensor]
    in_b: list[torch.Tensor | None]
    down_w: torch.Tensor
    down_b: torch.Tensor | None
    idx: torch.Tensor
    row_mask: torch.Tensor | None = None
    rows: bool = False

    @property
    def k(self) -> int:
        return int(self.down_w.shape[-1])

    def weight_bytes(self) -> int:
        ts = [*self.in_w, *(b for b in self.in_b if b is not None), self.down_w]
        return sum(t.numel() * t.element_size() for t in ts)


@dataclass
class QuantLayerSlice:
    """One layer's slice in the quantized format: ``in_qw[j]`` the kept rows of gate/up (their own
    blocks, ``[k, d_model]``), the down projection read through its input-major repack at ``idx``
    (only the kept inputs' rows; the repack is the module's, shared). Union batches only."""

    in_qw: list
    in_b: list[torch.Tensor | None]
    down_qwt: object
    down_b: torch.Tensor | None
    idx: torch.Tensor
    row_mask: torch.Tensor | None = None
    rows: bool = False

    @property
    def k(self) -> int:
        return int(self.idx.numel())


def slice_layer_quant(ffn, layer: int, idx: torch.Tensor) -> QuantLayerSlice:
    """The kept neurons ``idx[k]`` (ascending) of a quantized ``layer``: gate/up rows copied from their
    blocks, the down projection's input-major repack made once per module."""
    from tda.engine.layouts import quant_input_major
    from tda.models.quant import QuantWeight

    idx = torch.sort(idx.long()).values
    ins = []
    for m in ffn.in_modules(layer):
        qw = m.qweight
        ins.append(QuantWeight(hugepages.index_select(qw.q, 0, idx), qw.scale.index_select(0, idx).contiguous(),
                               None if qw.min is None else qw.min.index_select(0, idx).contiguous(), qw.qtype))
    in_b = [None if m.bias is None else m.bias.detach().index_select(0, idx) for m in ffn.in_modules(layer)]
    down = ffn.out_module(layer)
    return QuantLayerSlice(ins, in_b, quant_input_major(down), None if down.bias is None else down.bias.detach(), idx)


def slice_layer(ffn, layer: int, idx: torch.Tensor) -> LayerSlice:
    """Copy the kept neurons ``idx[k]`` of ``layer`` into contiguous tensors (one mask)."""
    dev = ffn.down_weight(layer).device
    idx = idx.to(dev)
    in_w = [hugepages.index_select(w.detach(), 0, idx) for w in ffn.in_weights(layer)]  # streamed: huge pages
    in_b = [None if b is None else b.detach().index_select(0, idx).contiguous() for b in ffn.in_biases(layer)]
    down_w = hugepages.index_select(ffn.down_weight(layer).detach(), 1, idx)
    down_b = ffn.down_bias(layer)
    return LayerSlice(in_w, in_b, down_w, None if down_b is None else down_b.detach(), idx)


def slice_layer_batch(ffn, layer: int, keep_rows: torch.Tensor, mode: str = "union") -> LayerSlice:
    """Slices for a batch: ``keep_rows[B, d_ff]`` (bool), one row per sequence."""
    if mode not in BATCH_MODES:
        raise ValueError(f"batch mode must be one of {BATCH_MODES}")
    from tda.models.quant import QuantLinear

    if isinstance(ffn.out_module(layer), QuantLinear):  # the quantized format: slices of its blocks
        B = keep_rows.shape[0]
        if B > 1 and mode == "rows" and not bool((keep_rows == keep_rows[0]).all()):
            from tda.common.errors import BadInput

            raise BadInput("batch mode 'rows' does not run on the gguf format; use the union mode")
        union = keep_rows.any(dim=0)
        sl = slice_layer_quant(ffn, layer, torch.nonzero(union).flatten())
        if B > 1 and not bool((keep_rows == union).all()):
            sl.row_mask = keep_rows[:, sl.idx].to(torch.float32)
        return sl
    keep_rows = keep_rows.to(ffn.down_weight(layer).device)
    B = keep_rows.shape[0]
    if B == 1 or mode == "union" or bool((keep_rows == keep_rows[0]).all()):
        union = keep_rows.any(dim=0)
        idx = torch.nonzero(union).flatten()
        sl = slice_layer(ffn, layer, idx)
        if B > 1 and not bool((keep_rows == union).all()):
            sl.row_mask = keep_rows[:, idx].to(sl.down_w.dtype)
        return sl
    k_max = int(keep_rows.sum(dim=1).max())
    parts = []
    for b in range(B):
        idx = torch.nonzero(keep_rows[b]).flatten()
        pad = k_max - idx.numel()
        s = slice_layer(ffn, layer, idx)
        if pad:
            s.in_w = [torch.nn.functional.pad(w, (0, 0, 0, pad)) for w in s.in_w]
            s.in_b = [None if bb is None else torch.nn.functional.pad(bb, (0, pad)) for bb in s.in_b]
            s.down_w = torch.nn.functional.pad(s.down_w, (0, pad))
        parts.append(s)
    return LayerSlice(
        in_w=[torch.stack([p.in_w[j] for p in parts]) for j in range(len(parts[0].in_w))],
        in_b=[None if parts[0].in_b[j] is None else torch.stack([p.in_b[j] for p in parts])
              for j in range(len(parts[0].in_b))],
        down_w=torch.stack([p.down_w for p in parts]),
        down_b=parts[0].down_b,
        idx=torch.nonzero(keep_rows.any(dim=0)).flatten(),
        rows=True,
    )


def _rows_view(x: torch.Tensor, B: int) -> torch.Tensor:
    """``x[B, T, d]`` or OPT's flattened ``x[B*T, d]`` -> ``[B, T, d]``."""
    return x.reshape(B, -1, x.shape[-1])


def _quant_sliced_fns(sl: QuantLayerSlice) -> tuple[list[LinearFn], LinearFn]:
    from tda.engine import quant_kernels

    def make_in(qw, b):
        return lambda x: quant_kernels.linear(x, qw, b)

    rm = sl.row_mask

    def out(a):
        if rm is not None:
            B = rm.shape[0]
            a = (_rows_view(a, B) * rm[:, None, :]).reshape(a.shape)
        return quant_kernels.input_sparse(a, sl.down_qwt, sl.idx, sl.down_b, compact=True)

    return [make_in(q, b) for q, b in zip(sl.in_qw, sl.in_b)], out


def sliced_fns(sl: LayerSlice, *, fast: bool) -> tuple[list[LinearFn], LinearFn]:
    """``([fn_in_j(x[..., d_model]) -> [..., k]], fn_out(a[..., k]) -> [..., d_model])``."""
    if isinstance(sl, QuantLayerSlice):
        return _quant_sliced_fns(sl)
    if sl.rows:
        B = sl.down_w.shape[0]

        def make_in(w, b):
            wt = w.transpose(1, 2)  # [B, d_model, k]

            def fn(x):
                y = torch.bmm(_rows_view(x, B), wt)
                if b is not None:
                    y = y + b[:, None, :]
                return y.reshape(*x.shape[:-1], y.shape[-1])
            return fn

        dt = sl.down_w.transpose(1, 2)  # [B, k, d_model]

        def out(a):
            y = torch.bmm(_rows_view(a, B), dt)
            if sl.down_b is not None:
                y = y + sl.down_b
            return y.reshape(*a.shape[:-1], y.shape[-1])

        return [make_in(w, b) for w, b in zip(sl.in_w, sl.in_b)], out

    ins = [linear_fn(w, b, fast=fast) for w, b in zip(sl.in_w, sl.in_b)]
    down = linear_fn(sl.down_w, sl.down_b, fast=fast)
    if sl.row_mask is None:
        return ins, down
    rm = sl.row_mask
    B = rm.shape[0]

    def out_masked(a):
        return down((_rows_view(a, B) * rm[:, None, :]).reshape(a.shape))

    return ins, out_masked


def tt_out_fn(down_w: torch.Tensor, down_b: torch.Tensor | None, cutoff: torch.Tensor, *, fast: bool,
              counter: list | None = None) -> LinearFn:
    """TT's output projection: ``a_i`` zeroed where ``|a_i| < cutoff[i]`` (``cutoff = t_L/‖W_down[:,i]‖``).

    ``counter`` (``[kept tensor, total int]``) accumulates the kept fraction without a sync.
    """
    down = linear_fn(down_w, down_b, fast=fast)
    cut = cutoff.to(device=down_w.device, dtype=down_w.dtype)

    def fn(a):
        keep = a.abs() >= cut
        if counter is not None:
            counter[0] += keep.sum()
            counter[1] += keep.numel()
        return down(a * keep)

    return fn


def ffn_apply(ffn, layer: int, x: torch.Tensor) -> torch.Tensor:
    """Run ``layer``'s FFN through its own modules (so active overrides apply): ``x[..., d_model]``."""
    parts = [m(x) for m in ffn.in_modules(layer)]
    act = ffn.act_fn(layer)
    a = act(parts[0]) * parts[1] if ffn.gated else act(parts[0])
    return ffn.out_module(layer)(a)


def masked_dense_ffn(ffn, layer: int, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Reference: the dense FFN with neurons outside ``keep[d_ff]`` zeroed (no slicing)."""
    a = ffn.activations(layer, x) * keep.to(x.dtype)
    y = a @ ffn.down_weight(layer).T
    b = ffn.down_bias(layer)
    return y if b is None else y + b
