"""Dense linears over the quantized weight format (:mod:`tda.models.quant`): the C++ kernels of
``csrc/quant_gemv.h`` on CPU, the module's own pure-torch forward elsewhere.

:func:`linear_fn` gives ``fn(x[..., d_in]) -> y[..., d_out]`` for a
:class:`~tda.models.quant.QuantLinear`: up to 8 rows (decode steps, small batches) one
multi-threaded pass over the int8 rows, each weight rebuilt exactly (``scale * q - min``) and
multiplied with fp32 activations into fp32 accumulators; more rows (prefill) dequantised tiles
through ``at::mm``. Either way the result equals ``F.linear`` on the de-quantised weights to fp32
rounding (tests/test_quant_kernels.py). Activations of another dtype are computed in fp32 and
cast back.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Callable
from typing import NamedTuple

import torch

from tda.models import hugepages, quant
from tda.models.quant import BlockWeight, QuantLinear, QuantWeight, QuantWeightT

LinearFn = Callable[[torch.Tensor], torch.Tensor]


def quant_ops():
    """``torch.ops.tda_kernels`` when the C++ kernels (with the quantized ops) are built, else None."""
    from tda.engine import kernels

    ops = kernels.cpp_ops()
    return ops if ops is not None and hasattr(ops, "quant_linear") else None


def _blocks_unpack(blocks: torch.Tensor, qtype: str):
    ops = quant_ops()
    return None if ops is None or not hasattr(ops, "quant_blocks_unpack") else \
        ops.quant_blocks_unpack(blocks, qtype, 0, blocks.shape[0])


def _blocks_linear(x2: torch.Tensor, blocks: torch.Tensor, qtype: str, bias):
    ops = quant_ops()
    return None if ops is None or not hasattr(ops, "quant_blocks_linear") else ops.quant_blocks_linear(x2, blocks, qtype, bias)


# QuantLinear's own forward (a prefill through Hugging Face's forward) and the repack's unpacking use
# the C++ kernels from the moment the engine is imported (the models stage cannot import it)
quant.register_unpacker(_blocks_unpack, _blocks_linear)


def _head_tiler(blocks: torch.Tensor, qtype: str):
    """:func:`tda.models.quant.head_tiles_of`: the tiles of an lm_head's blocks under
    :func:`head_tiles` (made from ``blocks`` as they are: a loader passes the file's map), else None."""
    ops = quant_ops()
    if ops is None or qtype not in quant.BLOCKS or blocks.dim() != 2 or blocks.device.type != "cpu":
        return None
    per, size, _ = quant.BLOCKS[qtype]
    bw = BlockWeight(blocks, qtype, blocks.shape[1] // size * per)
    if not _tiles_only(bw, decode_kernel(ops)):
        return None
    return quant.TileWeight.from_blocks(blocks, ops.gemv_tiles_pack)


quant.register_head_tiler(_head_tiler)


def linear(x: torch.Tensor, qw: QuantWeight, bias: torch.Tensor | None = None, *, backend: str = "auto") -> torch.Tensor:
    """``x @ W.T + bias`` for a :class:`~tda.models.quant.QuantWeight` ``W`` (``backend``: auto,
    cpp or torch — the torch path de-quantises the whole weight, for tests and fallbacks)."""
    if x.shape[-1] != qw.shape[1]:
        raise ValueError(f"x must have shape [..., {qw.shape[1]}], got {tuple(x.shape)}")
    ops = _cpp(backend, x, qw.q)
    if ops is not None:
        x32 = x if x.dtype == torch.float32 and x.is_contiguous() else x.to(torch.float32).contiguous()
        y = ops.quant_linear(x32, qw.q, qw.scale, qw.min, bias)
        return y if y.dtype == x.dtype else y.to(x.dtype)
    y = torch.nn.functional.linear(x.to(torch.float32), qw.dequantize().to(x.device), bias)
    return y.to(x.dtype)


def _cpp(backend: str, *tensors: torch.Tensor):
    ops = quant_ops() if backend in ("auto", "cpp") else None
    if backend == "cpp" and ops is None:
        raise RuntimeError("the C++ quantized kernels are not available")
    return ops if ops is not None and all(t.device.type == "cpu" for t in tensors) else None


def _index(idx: torch.Tensor, n: int, what: str) -> torch.Tensor:
    if not isinstance(idx, torch.Tensor) or idx.dim() != 1 or idx.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{what} must be a 1-D int64 tensor of indices")
    idx = idx.long().contiguous()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"{what}: an index is out of range [0, {n})")
    return idx


def rows(x: torch.Tensor, qw: QuantWeight, idx: torch.Tensor, bias: torch.Tensor | None = None, *,
         backend: str = "auto") -> torch.Tensor:
    """Output-sparse ``y[..., k] = x @ W[idx, :].T (+ bias[idx])``: only the kept rows are read."""
    idx = _index(idx, qw.shape[0], "idx")
    if x.shape[-1] != qw.shape[1]:
        raise ValueError(f"x must have shape [..., {qw.shape[1]}], got {tuple(x.shape)}")
    ops = _cpp(backend, x, qw.q)
    x32 = x.to(torch.float32).contiguous()
    if ops is not None:
        return ops.quant_rows(x32, qw.q, qw.scale, qw.min, idx, bias).to(x.dtype)
    sub = QuantWeight(qw.q[idx], qw.scale[idx], None if qw.min is None else qw.min[idx], qw.qtype)
    return torch.nn.functional.linear(x32, sub.dequantize(), None if bias is None else bias[idx]).to(x.dtype)


def input_sparse(x: torch.Tensor, qwt: QuantWeightT, idx: torch.Tensor, bias: torch.Tensor | None = None, *,
                 compact: bool = False, backend: str = "auto") -> torch.Tensor:
    """Input-sparse ``y[..., d_out] = x[..., idx] @ W[:, idx].T (+ bias)`` over the input-major repack:
    only the active inputs' rows of ``qt`` are read. ``idx`` is sorted here (any order, unique);
    inputs of ``x`` outside ``idx`` are ignored (for a batch: the union of the rows' sets — zero a
    row's own inactive inputs first to get that row's masked product). ``compact``: ``x[..., k]``
    holds just the inputs ``idx`` in that order (which must then be ascending)."""
    d_out, d_in = qwt.shape
    idx = _index(idx, d_in, "idx")
    if x.shape[-1] != (idx.numel() if compact else d_in):
        raise ValueError(f"x must have shape [..., {idx.numel() if compact else d_in}], got {tuple(x.shape)}")
    if compact:
        if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
            raise ValueError("idx: a compact input needs ascending, unique indices")
        if _cpp(backend, x, qwt.qt) is None:  # the torch path: scatter into the full input
            full = torch.zeros(*x.shape[:-1], d_in, dtype=x.dtype, device=x.device)
            full[..., idx] = x
            return input_sparse(full, qwt, idx, bias, backend=backend)
    idx = torch.sort(idx).values
    if idx.numel() > 1 and bool((idx[1:] == idx[:-1]).any()):
        raise ValueError("idx: active indices repeated (indices must be unique)")
    ops = _cpp(backend, x, qwt.qt)
    x32 = x.to(torch.float32).contiguous()
    if ops is not None:
        if (y := vnni_input_sparse(ops, x32, qwt, bias, idx=idx)) is not None:
            return y.to(x.dtype)
        return ops.quant_input_sparse(x32, qwt.qt, qwt.st, qwt.mt, idx, bias, compact, qwt.sd, qwt.md).to(x.dtype)
    mask = torch.zeros(d_in, dtype=torch.float32, device=x.device)
    mask[idx] = 1.0
    w = qwt.row_major().dequantize()
    return torch.nn.functional.linear(x32 * mask, w, bias).to(x.dtype)


def vnni_columns_wanted(qwt: QuantWeightT) -> bool:
    """Whether an input-major repack also keeps its values as VNNI columns
    (:func:`tda.models.quant.vnni_columns`) for :func:`vnni_input_sparse`: with ``TDA_VNNI_SPARSE=1``
    (opt-in), where the C++ kernels and AVX512-VNNI are there, for a CPU weight whose outputs are
    whole blocks. A second copy of the values (counted in its ``nbytes``).

    Opt-in because it did not pay on the machine it was built on (an AMD EPYC, AVX-512 on 256-bit
    units): its integer products need three VPDPBUSD per four inputs and 64 outputs plus the byte
    interleaves of four lines, which cost about what the fp32 input-major kernel's multiply-adds
    do. ``python benchmarks/vnni_sparse.py --qtype Q4_K --layers 22 --density 0.5`` (a llama-1b
    step's linears, cold weights, rounds alternating): dense 23.8 ms, the input-major kernel 0.93x
    of dense, these columns 0.94x; with one layer (in cache) at density 1.0: 0.61x and 0.59x."""
    ops = quant_ops()
    if os.environ.get("TDA_VNNI_SPARSE") != "1" or ops is None or not hasattr(ops, "vnni_input_sparse"):
        return False
    d_out, _ = qwt.shape
    ob = 128 if quant.vnni_column_bits(qwt.qtype) == 4 else 64
    return (qwt.qt.device.type == "cpu" and qwt.qtype in quant.VNNI_OFFSET and not d_out % ob
            and ops.vnni_gemv_ready())


def vnni_input_sparse(ops, x: torch.Tensor, qwt: QuantWeightT, bias: torch.Tensor | None, *,
                      idx: torch.Tensor | None = None, t: float = 0.0, tvec: torch.Tensor | None = None,
                      count: torch.Tensor | None = None) -> torch.Tensor | None:
    """One decode row's input-sparse product on the repack's VNNI columns (``csrc/vnni_sparse.h``):
    the inputs ``idx`` (ascending, unique) or, without it, ``x_i != 0`` and ``|x_i| >= tvec[i]``
    (or ``t``); ``count`` grows by their number. None where the repack has no columns, ``x`` is not
    one fp32 contiguous row, or some ``x`` is not finite: the caller takes the input-major kernel."""
    d_in = qwt.qt.shape[0]
    if qwt.vq is None or x.dtype is not torch.float32 or not x.is_contiguous() or x.numel() != d_in or x.shape[-1] != d_in:
        return None
    y = ops.vnni_input_sparse(x, qwt.vq, quant.vnni_column_bits(qwt.qtype), quant.VNNI_OFFSET[qwt.qtype], qwt.group,
                              qwt.st, qwt.mt, qwt.sd, qwt.md, idx, bias, t, tvec, count)
    return y if y.numel() else None


def blocks_linear(x: torch.Tensor, bw: BlockWeight, bias: torch.Tensor | None = None, *,
                  backend: str = "auto") -> torch.Tensor:
    """``x @ W.T + bias`` straight from a weight's GGUF blocks (``backend``: auto, cpp or torch —
    the torch path unpacks and de-quantises the whole weight, for tests and fallbacks)."""
    if x.shape[-1] != bw.shape[1]:
        raise ValueError(f"x must have shape [..., {bw.shape[1]}], got {tuple(x.shape)}")
    ops = _cpp(backend, x, bw.blocks)
    if ops is not None:
        x32 = x if x.dtype == torch.float32 and x.is_contiguous() else x.to(torch.float32).contiguous()
        y = ops.quant_blocks_linear(x32, bw.blocks, bw.qtype, bias)
        return y if y.dtype == x.dtype else y.to(x.dtype)
    return torch.nn.functional.linear(x.to(torch.float32), bw.dequantize().to(x.device), bias).to(x.dtype)


TILE_GEMV_TYPES = ("Q8_0", "Q5_0", "Q4_0", "Q4_K", "Q6_K")  # what csrc/int8_tiles.h lays out
AMX_GEMV_MIN_WEIGHTS = 1 << 19  # smaller weights (Gemma 3 270M's k/v projections) ran slower on AMX
# larger weights (lm_heads: Gemma 3 270M's is 262144 x 640 in Q8_0) stay on the blocks' GEMV, which
# read that one faster than its tiles did on a Sapphire Rapids Xeon (6.4-6.7 against 7.6-8.0 ms,
# alternating calls), and a second layout would hold the largest weight of the model twice -- except
# where head_tiles() (AMD CPUs, or TDA_HEAD_TILES=1): on an AMD EPYC the tiles read it faster (8.8
# against 11.1 ms), and a Q8_0 head then keeps its tiles only
TILE_GEMV_MAX_WEIGHTS = 1 << 25
_TILE_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> (blocks, (packed, st, mt))


def decode_kernel(ops=None) -> str | None:
    """The integer-tile GEMV that decode steps of a quantized weight's blocks take (``csrc/int8_tiles.h``:
    the weights as small integers in VNNI order, the activations as exact 23-bit integers in three
    int8 limbs per group): ``"amx"`` (AMX-INT8 tiles) with ``TDA_AMX_GEMV=1`` — opt-in, as a whole
    decode step measured slower with it on the machine it was built on (see ``csrc/amx_gemv.h``) —
    else ``"vnni"`` (AVX512-VNNI, ``csrc/vnni_gemv.h``) where the CPU has it, unless
    ``TDA_NO_VNNI_GEMV=1``; None: the blocks' own GEMV. Both give the same bits."""
    ops = ops if ops is not None else quant_ops()
    if ops is None or not hasattr(ops, "vnni_gemv_ready"):
        return None
    if os.environ.get("TDA_AMX_GEMV") == "1" and ops.amx_gemv_ready():
        return "amx"
    if os.environ.get("TDA_NO_VNNI_GEMV") != "1" and ops.vnni_gemv_ready():
        return "vnni"
    return None


def head_tiles(qtype: str = "Q8_0") -> bool:
    """Whether weights above :data:`TILE_GEMV_MAX_WEIGHTS` (an lm_head) of block type ``qtype`` take
    the integer tiles too. ``TDA_HEAD_TILES=1`` / ``0`` decides; unset, a Q8_0 one does on AMD CPUs
    (:func:`cpu_vendor`), other types do not (their tiles would be a second copy).

    A Q8_0 one (Gemma's tied embedding) then keeps its tiles only
    (:class:`~tda.models.quant.TileWeight`: made from the GGUF file's map at load, or from its
    blocks when the engine first builds its product, which are then let go); other types keep a
    second copy beside their blocks. Measured on Gemma 3 270M (``benchmarks/decode_kernels.py``):
    on an AMD EPYC (AVX-512 on 256-bit units, where the blocks' fp32 GEMV is bound by its work per
    weight) a gguf step went 20.2 → 13.0 ms; on a Sapphire Rapids Xeon the blocks read the lm_head
    faster than its tiles (6.4–6.7 against 7.6–8.0 ms)."""
    env = os.environ.get("TDA_HEAD_TILES")
    if env in ("0", "1"):
        return env == "1"
    return qtype == "Q8_0" and cpu_vendor() == "AuthenticAMD"


@functools.cache
def cpu_vendor() -> str:
    """The CPU's ``vendor_id`` (``/proc/cpuinfo``; "" where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _tiles_only(bw: BlockWeight, kernel: str | None) -> bool:
    """Whether a weight's blocks give way to its decode tiles (:class:`~tda.models.quant.TileWeight`):
    a Q8_0 weight above :data:`TILE_GEMV_MAX_WEIGHTS` (an lm_head) under :func:`head_tiles`; other
    types keep their blocks beside the tiles."""
    n, d = bw.shape
    return bw.qtype == "Q8_0" and n * d > TILE_GEMV_MAX_WEIGHTS and _takes_tiles(bw, kernel)


def _takes_tiles(bw: BlockWeight, kernel: str | None) -> bool:
    n, d = bw.shape
    return (kernel is not None and bw.qtype in TILE_GEMV_TYPES and not n % 16 and not d % 64
            and bw.blocks.device.type == "cpu" and (n * d <= TILE_GEMV_MAX_WEIGHTS or head_tiles(bw.qtype))
            and (kernel != "amx" or n * d >= AMX_GEMV_MIN_WEIGHTS))


def tile_nbytes(qtype: str, d_out: int, d_in: int) -> int:
    """Bytes of a weight's integer-tile layout (``csrc/int8_tiles.h``): the tiles (1024 bytes for
    Q8_0, 512 + 128 per bit above four for the others, per 16 rows x 64 inputs) and the fp32 scales
    (and Q4_K's minimums) of each group."""
    bits = {"Q8_0": 8, "Q5_0": 5, "Q4_0": 5, "Q4_K": 4, "Q6_K": 6}[qtype]
    group = 16 if qtype == "Q6_K" else 32
    tile = 1024 if bits == 8 else 512 + 128 * (bits - 4)
    return d_out // 16 * (d_in // 64) * tile + 4 * d_out * (d_in // group) * (2 if qtype == "Q4_K" else 1)


def decode_nbytes(mod: QuantLinear) -> int:
    """Bytes a decode step's dense product of ``mod`` reads: its integer tiles where
    :func:`tile_layout` gives it them (they hold a little more than the file's blocks), else
    :attr:`~tda.models.quant.QuantLinear.decode_nbytes` (the blocks or the repack)."""
    bw = mod.block_weight
    if bw is not None and mod.storage.device.type == "cpu" and _takes_tiles(bw, decode_kernel()):
        return tile_nbytes(bw.qtype, *bw.shape)
    return mod.decode_nbytes


def tile_layout(bw: BlockWeight, ops=None, owner=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """The integer-tile decode layout of a weight's blocks (16 rows x 64 inputs a tile; 4-, 5- or
    6-bit values, int8 for Q8_0; scales and Q4_K's minimums transposed): ``(packed, st, mt or
    None)``, made once per ``owner`` module (while it holds the same blocks) and kept beside them;
    None where :func:`decode_kernel` gives none, for a weight not on the CPU, of another type,
    whose shape is not whole tiles or that has more than :data:`TILE_GEMV_MAX_WEIGHTS` values (an
    lm_head; unless :func:`head_tiles`), and on AMX for weights under :data:`AMX_GEMV_MIN_WEIGHTS`."""
    ops = ops if ops is not None else quant_ops()
    if not _takes_tiles(bw, decode_kernel(ops)):
        return None
    kept = _TILE_LAYOUTS.get(owner) if owner is not None else None
    if kept is not None and kept[0] is bw.blocks:
        return kept[1]
    parts = [hugepages.copy(p) for p in ops.gemv_tiles_pack(bw.blocks, bw.qtype)]  # streamed by every step
    got = (parts[0], parts[1], parts[2] if len(parts) > 2 else None)
    if owner is not None:
        _TILE_LAYOUTS[owner] = (bw.blocks, got)
    return got


class TileSpec(NamedTuple):
    """The integer tiles a dense decode function reads (its ``tda_tiles`` attribute, set by
    :func:`linear_fn` on AVX512-VNNI): what a threshold rule's decode row may be multiplied on
    (:func:`tda.engine.tokenwise.quant_threshold_linear`)."""

    packed: torch.Tensor
    st: torch.Tensor
    mt: torch.Tensor | None
    qtype: str


def _tiles_only_fn(mod: QuantLinear, tw, ops, kernel: str, bias) -> LinearFn:
    """A tiles-only weight (:class:`~tda.models.quant.TileWeight`): a decode row with finite values
    on the integer-tile GEMV; more rows (prefill) and rows with inf/nan through the module's own
    forward (its rows de-quantised a tile at a time, then ``mm``: the IEEE result)."""
    tkernel = ops.amx_gemv if kernel == "amx" else ops.vnni_gemv
    none_blocks = tw.no_blocks()
    d_in = tw.shape[1]

    def fn(x: torch.Tensor) -> torch.Tensor:
        if x.dtype is torch.float32 and x.is_contiguous() and x.numel() == d_in and bool(torch.isfinite(x).all()):
            return tkernel(x, tw.packed, tw.st, None, none_blocks, tw.qtype, bias)
        return QuantLinear.forward(mod, x)  # the class's own: the instance's forward may be this fn

    if kernel == "vnni":  # the lm_head option's decode rows may read them too (tokenwise.quant_threshold_linear)
        fn.tda_tiles = TileSpec(tw.packed, tw.st, None, tw.qtype)
    return fn


DENSE_FROM = 0.25  # kept fraction of a decode row's inputs from which a threshold rule reads the dense tiles


def dense_from() -> float:
    """The kept fraction of a decode row's inputs from which an input-sparse product over quantized
    weights (a threshold rule's, or an index list's: :func:`tda.engine.tokenwise.sparse_product`) runs
    on the dense integer tiles with the inactive inputs zeroed (``vnni_gemv_threshold``) instead of
    reading the kept inputs' rows (``TDA_QUANT_DENSE_FROM``, default :data:`DENSE_FROM`;
    above 1: never).

    Measured on an AMD EPYC (2 threads, Gemma 3 270M's block linears on the GGUF's blocks, every
    layer's in turn, cold; ``python benchmarks/vnni_sparse.py --model gemma-3-270m``, rounds
    alternating): TEAL's threshold rule keeping half the inputs took 0.53x dense's speed on the fp32
    input-major kernel, 0.47x on the VNNI columns and 0.88x on the dense tiles (the mask pass and a
    call's overhead); keeping 15%, 0.84x, 0.66x and 0.88x. Each kept weight is converted and
    multiplied on its own in the input-sparse kernels, 2-3x the work per weight of the tiles' integer
    dot products, and the GEMVs of this format are bound by that work on this CPU. So no input-sparse
    product over quantized weights beat dense decode there at any density measured: a sparse method
    on this format saves no time on that CPU, and this choice keeps it from losing time."""
    env = os.environ.get("TDA_QUANT_DENSE_FROM", "").strip()
    if not env:
        return DENSE_FROM
    try:
        v = float(env)
    except ValueError:
        v = -1.0
    if not v >= 0:
        from tda.common.errors import BadInput

        raise BadInput(f"TDA_QUANT_DENSE_FROM must be a number >= 0 (a kept fraction; above 1: never), got {env!r}")
    return v


def linear_fn(mod: QuantLinear) -> LinearFn:
    """The fast dense ``fn(x)`` of a :class:`~tda.models.quant.QuantLinear` (its own forward
    where the C++ kernels or a CPU weight are missing): on the file's blocks when the module holds
    them (a decode step on the weight's integer tiles where :func:`tile_layout` gives them), else
    on the int8 repack."""
    ops = quant_ops()
    if ops is None or mod.storage.device.type != "cpu":
        from tda.models.dispatch import original_forward

        return original_forward(mod)
    bias = None if mod.bias is None else mod.bias.detach()
    bw, kernel = mod.block_weight, decode_kernel(ops)
    if bw is not None and _tiles_only(bw, kernel):  # the blocks go, the tiles stay
        mod.keep_tiles_only(quant.TileWeight.from_blocks(bw.blocks, ops.gemv_tiles_pack))
        bw = None
    tw = mod.tile_weight
    if tw is not None and kernel is not None:
        return _tiles_only_fn(mod, tw, ops, kernel, bias)
    if bw is not None:
        blocks, qtype, bkernel = bw.blocks, bw.qtype, ops.quant_blocks_linear
        tiles = tile_layout(bw, ops, owner=mod)
        if tiles is not None:  # one row (a decode step) on the integer tiles, more rows on the blocks
            packed, st, mt = tiles
            tkernel, d_in = ops.amx_gemv if kernel == "amx" else ops.vnni_gemv, bw.shape[1]

            def fn_tiles(x: torch.Tensor) -> torch.Tensor:
                if x.dtype is torch.float32 and x.is_contiguous():
                    if x.numel() == d_in:
                        return tkernel(x, packed, st, mt, blocks, qtype, bias)
                    return bkernel(x, blocks, qtype, bias)
                return fn_tiles(x.to(torch.float32).contiguous()).to(x.dtype)

            if kernel == "vnni":  # a threshold rule's product may read them too (tokenwise.quant_threshold_linear)
                fn_tiles.tda_tiles = TileSpec(packed, st, mt, qtype)
            return fn_tiles

        def fn_blocks(x: torch.Tensor) -> torch.Tensor:
            if x.dtype is torch.float32 and x.is_contiguous():
                return bkernel(x, blocks, qtype, bias)
            return bkernel(x.to(torch.float32).contiguous(), blocks, qtype, bias).to(x.dtype)

        return fn_blocks
    q, scale, qmin = mod.q, mod.scale, mod.qmin
    kernel = ops.quant_linear

    def fn(x: torch.Tensor) -> torch.Tensor:
        if x.dtype is torch.float32 and x.is_contiguous():
            return kernel(x, q, scale, qmin, bias)
        return kernel(x.to(torch.float32).contiguous(), q, scale, qmin, bias).to(x.dtype)

    return fn
