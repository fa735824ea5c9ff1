"""The quantized weight format (``--dtype gguf``): a GGUF file's own blocks, repacked exactly.

Every block type of the embedded Gemma 3 270M file (Q8_0, Q5_0, Q4_K, Q6_K) and Q4_0 stores a
weight as small integers times per-block scales (Q4_K also subtracts per-sub-block minimums).
:func:`unpack` turns a tensor's raw blocks into a :class:`QuantWeight`:

- ``q[d_out, d_in]`` int8 — the blocks' integers with their offsets applied (Q5_0: ``q - 16``,
  Q6_K: ``q - 32``, Q4_0: ``q - 8``; Q4_K's 0..15 as they are);
- ``scale[d_out, d_in / G]`` fp32 — one per group of ``G`` inputs (G = 32; Q6_K's sub-blocks are
  16 long): the block's fp16 ``d`` (Q8_0/Q5_0/Q4_0) or ``d · sc`` (Q4_K, Q6_K), computed in fp32
  exactly as gguf's dequantiser computes it;
- ``min[d_out, d_in / G]`` fp32 — Q4_K's ``dmin · m``, else None;

so that ``W[j, i] = scale[j, i // G] * q[j, i] - min[j, i // G]`` is bit for bit the file's
dequantised value (``gguf.quants.dequantize``, which transformers uses to load a GGUF: the products
are exact in fp32 and Q4_K's difference is rounded once, as there). This repack is one byte per
weight plus 4 bytes per group: 1.125 (Q8_0, 34 bytes per 32 in the file), 1.64 (Q5_0, 22), 1.78
(Q4_K, 144 per 256), 1.22 (Q6_K, 210 per 256) times the file's bytes — the price of kernels that
rebuild each weight with one multiply (``csrc/quant_gemv.h``) instead of bit unpacking.

:func:`quantize` makes the same structure from an fp32 weight (Q8_0, Q4_0, Q4_K: for timing the
``random:*`` shapes in this format). :class:`QuantLinear` and :class:`QuantEmbedding` are the
modules that hold them: a linear keeps no full-precision copy (``.weight`` dequantises on access,
for code that needs the values), and its own ``forward`` is a pure-torch fallback that dequantises
tiles of rows per call; the engine's kernels (:mod:`tda.engine.quant_kernels`) replace it on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tda.models import hugepages
from tda.models.quant_types import BLOCKS, QUANTIZABLE, file_bytes  # noqa: F401 (re-exported)

TILE_BYTES = 8 << 20  # the torch fallback dequantises this much fp32 at a time


@dataclass
class QuantWeight:
    """``W[d_out, d_in] = scale[:, g] * q - min[:, g]`` (see the module docstring)."""

    q: torch.Tensor  # int8 [d_out, d_in]
    scale: torch.Tensor  # fp32 [d_out, d_in / G]
    min: torch.Tensor | None  # fp32 [d_out, d_in / G] or None
    qtype: str

    def __post_init__(self):
        if self.q.dtype != torch.int8 or self.q.dim() != 2:
            raise ValueError(f"q must be a 2-D int8 tensor, got {self.q.dtype} {tuple(self.q.shape)}")
        d_out, d_in = self.q.shape
        if self.scale.dtype != torch.float32 or self.scale.dim() != 2 or self.scale.shape[0] != d_out \
                or self.scale.shape[1] == 0 or d_in % self.scale.shape[1]:
            raise ValueError(f"scale must be fp32 [{d_out}, {d_in} / G], got {tuple(self.scale.shape)}")
        if self.min is not None and (self.min.shape != self.scale.shape or self.min.dtype != torch.float32):
            raise ValueError("min must be fp32 and shaped like scale")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)

    @property
    def group(self) -> int:
        return self.q.shape[1] // self.scale.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes this repack holds (and a dense product reads)."""
        return sum(t.numel() * t.element_size() for t in (self.q, self.scale, self.min) if t is not None)

    @property
    def file_bytes(self) -> int:
        """Bytes of the same weight in the GGUF block type it came from."""
        return file_bytes(self.qtype, self.q.numel())

    def dequantize(self, r0: int = 0, r1: int | None = None, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """The exact fp32 values of rows ``[r0, r1)``: ``W[r1 - r0, d_in]`` (written into ``out``'s
        first ``(r1 - r0) * d_in`` values when given: one buffer for every tile of a loop)."""
        r1 = self.q.shape[0] if r1 is None else r1
        q = self.q[r0:r1]
        n, d = q.shape
        g = self.group
        if out is None:
            w = q.to(torch.float32).view(n, d // g, g)
        else:
            w = out.view(-1)[:n * d].view(n, d // g, g)
            w.copy_(q.view(n, d // g, g))
        if self.min is None:
            w.mul_(self.scale[r0:r1].unsqueeze(-1))
        else:  # one rounding, as gguf: fl(fl(d*sc) * q - fl(dmin*m)), the product being exact
            w.mul_(self.scale[r0:r1].unsqueeze(-1)).sub_(self.min[r0:r1].unsqueeze(-1))
        return w.view(n, d)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """The exact fp32 values of rows ``idx[n]`` (an embedding gather): ``[n, d_in]``."""
        sub = QuantWeight(self.q.index_select(0, idx), self.scale.index_select(0, idx),
                          None if self.min is None else self.min.index_select(0, idx), self.qtype)
        return sub.dequantize()

    def input_major(self, *, compact: bool = True) -> QuantWeightT:
        """The same weight input-major (for input-sparse products): ``qt[d_in, d_out]`` and the
        group scales/minimums as ``[d_in / G, d_out]``. ``compact`` (default): the scales as
        compact as the blocks hold them, where they factor exactly — Q4_K packed (:func:`pack_q4k`),
        Q6_K's int8 factors times an fp16 ``d`` (:func:`factor_q6k`), fp16 scales for Q8_0, Q5_0 and
        Q4_0 (the blocks' ``d``); else (or with ``compact=False``) int8 values and fp32 scales."""
        if compact and (p := pack_q4k(self) or factor_q6k(self)) is not None:
            return p
        st = self.scale.t().contiguous()
        if compact and self.min is None and torch.equal(st.half().float(), st):  # Q8_0/Q5_0/Q4_0: the blocks' fp16 d
            st = st.half()
        return QuantWeightT(self.q.t().contiguous(), st, None if self.min is None else self.min.t().contiguous(), self.qtype)

    def permute_rows(self, order: torch.Tensor) -> QuantWeight:
        """The same weight with its rows in ``order`` (blocks run along a row, so they stay whole)."""
        return QuantWeight(self.q[order].contiguous(), self.scale[order].contiguous(),
                           None if self.min is None else self.min[order].contiguous(), self.qtype)


@dataclass
class QuantWeightT:
    """A :class:`QuantWeight` input-major: ``W[j, i] = st[i // G, j] * qt[i, j] - mt[i // G, j]``,
    so that an active input ``i`` reads one contiguous row ``qt[i, :]`` (input-sparse methods).
    ``st`` is fp16 where the scales are fp16 values (Q8_0, Q5_0, Q4_0), else fp32.

    Factored scales (``sd`` given): Q6_K (:func:`factor_q6k`) keeps int8 values and ``st`` as int8
    factors of the fp16 ``sd``. Packed (Q4_K; :func:`pack_q4k`): ``qt[d_in, d_out / 2]`` uint8 holds the 4-bit
    values two a byte (per 64 outputs of an input, 32 bytes: low nibbles the first 32 outputs, high
    nibbles the next 32), ``st``/``mt`` ``[d_in / G, d_out]`` uint8 the sub-block scales and minimums
    and ``sd``/``md`` ``[d_in / G / R, d_out]`` fp16 the super-block factors: the scale is
    ``sd * st`` and the minimum ``md * mt``, exact in fp32 — the same values in fewer bytes."""

    qt: torch.Tensor  # int8 [d_in, d_out]; packed: uint8 [d_in, d_out / 2]
    st: torch.Tensor  # fp32 or fp16 [d_in / G, d_out]; packed: uint8
    mt: torch.Tensor | None
    qtype: str
    sd: torch.Tensor | None = None  # factored scales: fp16 [d_in / G / R, d_out]
    md: torch.Tensor | None = None
    vq: torch.Tensor | None = None  # the same values as VNNI columns (:func:`vnni_columns`), where kept

    @property
    def group(self) -> int:
        return self.qt.shape[0] // self.st.shape[0]

    @property
    def packed(self) -> bool:
        """Scales factored as the blocks hold them (``sd`` given; Q4_K's values also two a byte)."""
        return self.sd is not None

    @property
    def shape(self) -> tuple[int, int]:
        """``(d_out, d_in)``, as the row-major weight's."""
        return self.st.shape[1], self.qt.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qt, self.st, self.mt, self.sd, self.md, self.vq)
                   if t is not None)

    def row_major(self) -> QuantWeight:
        if self.packed:
            d_out, d_in = self.shape
            if self.qt.dtype == torch.uint8:  # 4-bit values two a byte
                b = self.qt.view(d_in, d_out // 64, 1, 32)
                q = torch.cat([b & 0x0F, b >> 4], dim=2).reshape(d_in, d_out).to(torch.int8)
            else:
                q = self.qt
            rep = self.st.shape[0] // self.sd.shape[0]
            two = lambda f, v: (f.to(torch.float32).repeat_interleave(rep, 0) * v.to(torch.float32))  # noqa: E731
            mins = None if self.mt is None else two(self.md, self.mt)
            return QuantWeightT(q, two(self.sd, self.st), mins, self.qtype).row_major()
        return QuantWeight(self.qt.t().contiguous(), self.st.t().to(torch.float32).contiguous(),
                           None if self.mt is None else self.mt.t().contiguous(), self.qtype)


#: The offset that makes a type's integers unsigned in :func:`vnni_columns` (u = q + off).
VNNI_OFFSET = {"Q8_0": 128, "Q5_0": 16, "Q4_0": 16, "Q6_K": 32, "Q4_K": 0}


def vnni_column_bits(qtype: str) -> int:
    """Bits a value takes in :func:`vnni_columns`: 4 for Q4_K (q in 0..15), else 8."""
    return 4 if qtype == "Q4_K" else 8


def vnni_columns(qw: QuantWeight) -> torch.Tensor | None:
    """The values of ``qw`` as "VNNI columns" for input-sparse decode steps
    (``csrc/vnni_sparse.h``): ``vq[d_in, d_out / OB, 64]`` uint8 — per input and block of ``OB``
    outputs (64; 128 for Q4_K, two 4-bit values a byte: the low nibble output ``o`` of the block,
    the high nibble ``o + 64``) one 64-byte line holding ``u = q + VNNI_OFFSET[qtype]``; byte
    ``p = 16 L + 4 k + d`` of a line holds output ``16 k + 4 L + d`` (the order in which the
    kernel's byte and word interleaves of four lines leave each output's four values in one dword).
    An input's lines are contiguous, so a step reads whole runs of the kept inputs only — except
    where there are more output blocks than groups of inputs (an lm_head): then each block's lines
    are contiguous (``vq[d_out / OB, d_in, 64]``), and the kernel reads block by block, its sums in
    registers.
    None for a type without an offset or a ``d_out`` that is not whole blocks."""
    off = VNNI_OFFSET.get(qw.qtype)
    bits = vnni_column_bits(qw.qtype)
    ob = 128 if bits == 4 else 64
    n, d = qw.q.shape
    if off is None or n % ob:
        return None
    u = (qw.q.to(torch.int16) + off).to(torch.uint8)
    p = torch.arange(64)
    perm = 16 * ((p % 16) // 4) + 4 * (p // 16) + p % 4  # the output held at byte p
    if bits == 8:
        lines = u.view(n // 64, 64, d)[:, perm, :]  # [block, byte, input]
    else:
        v = u.view(n // 128, 2, 64, d)[:, :, perm, :]
        lines = v[:, 0] | (v[:, 1] << 4)
    if n // ob > d // qw.group:  # more output blocks than input groups (an lm_head): block-major
        return lines.transpose(1, 2).contiguous()  # [block, input, byte]
    return lines.permute(2, 0, 1).contiguous()  # [input, block, byte]


def _factor(vals: torch.Tensor, per: int, kmax: int, *, signed: bool = False) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``vals[n, ng] = d[n, ng / per] * k[n, ng]`` exactly, ``d`` fp16 and ``k`` integers: in [0, kmax]
    (Q4_K's scales: the super-block's fp16 ``d`` times 6-bit sub-block factors; a negative ``d``
    gives every factor its sign), or with ``signed`` in [-kmax, kmax - 1] and ``d`` of either sign
    (Q6_K's int8 factors: llama.cpp maps the largest to -128, so ``d`` has the opposite sign to it).
    ``k`` is uint8, or int8 when ``signed``; None when no such factoring exists."""
    n, ng = vals.shape
    if ng % per or not bool(torch.isfinite(vals).all()):
        return None
    v = vals.view(n, ng // per, per)
    neg = torch.zeros(v.shape[:2], dtype=torch.bool) if signed else (v < 0).any(-1)
    if not signed:
        if bool((neg & (v > 0).any(-1)).any()):
            return None
        v = v.abs()
    top = v.abs().amax(-1)
    lo, hi = (-kmax, kmax - 1) if signed else (0, kmax)
    d = torch.zeros_like(top)
    k = torch.zeros_like(v)
    todo = top > 0
    for kk in range(kmax, 0, -1):  # the largest factor is kmax for blocks made the usual way: one pass
        if not bool(todo.any()):
            break
        cand = top / kk  # exact when top = d * kk
        kq = (v / cand.clamp_min(torch.finfo(torch.float32).tiny)[..., None]).round()
        exact = todo & (cand.half().float() == cand) & (kq * cand[..., None] == v).all(-1)
        ok = exact & ((kq >= lo) & (kq <= hi)).all(-1)
        flip = exact & ~ok & ((-kq >= lo) & (-kq <= hi)).all(-1) if signed else torch.zeros_like(ok)  # d < 0
        d = torch.where(ok, cand, torch.where(flip, -cand, d))
        k = torch.where(ok[..., None], kq, torch.where(flip[..., None], -kq, k))
        todo &= ~(ok | flip)
    if bool(todo.any()):
        return None
    return k.to(torch.int8 if signed else torch.uint8).view(n, ng), torch.where(neg, -d, d).half()


def factor_q6k(qw: QuantWeight) -> QuantWeightT | None:
    """Q6_K input-major with its scales factored as the blocks hold them (int8 sub-block factors,
    fp16 super-block d: 1.1 bytes per 16 weights instead of 4), or None where they do not factor."""
    if qw.qtype != "Q6_K" or qw.min is not None or qw.q.device.type != "cpu" or qw.group != 16:
        return None
    f = _factor(qw.scale, 16, 128, signed=True)
    if f is None:
        return None
    return QuantWeightT(qw.q.t().contiguous(), f[0].t().contiguous(), None, qw.qtype, f[1].t().contiguous())


def pack_q4k(qw: QuantWeight) -> QuantWeightT | None:
    """The packed input-major layout of a Q4_K weight (see :class:`QuantWeightT`), or None where it
    does not apply: another block type, outputs not whole 64s, or scales that do not factor exactly."""
    d_out, d_in = qw.shape
    if qw.qtype != "Q4_K" or d_out % 64 or qw.group != 32 or qw.q.device.type != "cpu" \
            or int(qw.q.min()) < 0 or int(qw.q.max()) > 15:
        return None
    sc = _factor(qw.scale, 8, 63)
    mn = None if qw.min is None else _factor(qw.min, 8, 63)
    if sc is None or (qw.min is not None and mn is None):
        return None
    v = qw.q.t().contiguous().view(d_in, d_out // 64, 2, 32).to(torch.uint8)
    q4 = (v[:, :, 0] | (v[:, :, 1] << 4)).reshape(d_in, d_out // 2).contiguous()
    tr = lambda t: t.t().contiguous()  # noqa: E731
    return QuantWeightT(q4, tr(sc[0]), None if mn is None else tr(mn[0]), qw.qtype, tr(sc[1]),
                        None if mn is None else tr(mn[1]))


_UNPACKER: list = [None]  # fn(blocks, qtype) -> [q, scale, min?] or None: set by the engine (its C++ kernels)
_BLOCKS_LINEAR: list = [None]  # fn(x2[n, d_in] fp32, blocks, qtype, bias) -> y[n, d_out] or None: likewise


_HEAD_TILER: list = [None]  # fn(blocks[d_out, row_bytes] uint8, qtype) -> TileWeight or None: set by the engine


def register_head_tiler(fn) -> None:
    """Let a loader hand an lm_head's blocks to the engine, which may keep its decode tiles only."""
    _HEAD_TILER[0] = fn


def head_tiles_of(blocks: torch.Tensor, qtype: str) -> TileWeight | None:
    """The decode tiles an lm_head keeps instead of its ``blocks`` (e.g. a view of a GGUF file's
    map: then no copy of the blocks is made at all) where the engine chooses them
    (:func:`tda.engine.quant_kernels.head_tiles`), else None."""
    fn = _HEAD_TILER[0]
    return None if fn is None else fn(blocks, qtype)


def register_unpacker(fn, blocks_linear=None) -> None:
    """Let :meth:`BlockWeight.unpack` use a faster exact unpacker (the engine's C++ one) than numpy's,
    and :meth:`QuantLinear.forward` the engine's product on blocks (``blocks_linear``); either may
    return None (kernels unavailable), and then the pure-torch/numpy path runs."""
    _UNPACKER[0] = fn
    if blocks_linear is not None:
        _BLOCKS_LINEAR[0] = blocks_linear


@dataclass
class BlockWeight:
    """A weight in its GGUF file's own blocks: ``blocks[d_out, row_bytes]`` uint8, each row
    ``d_in / per`` whole blocks of ``qtype`` (the bytes as the file stores them, rows in the model's
    order). The dense kernels (``csrc/quant_blocks.h``) read these bytes and nothing else; the
    :class:`QuantWeight` repack is made from them on demand (:meth:`unpack`: for the sparse methods'
    layouts, the torch fallback's tiles and the embedding's gathered rows)."""

    blocks: torch.Tensor  # uint8 [d_out, row_bytes]
    qtype: str
    d_in: int

    def __post_init__(self):
        if self.qtype not in BLOCKS:
            raise ValueError(f"no kernels for block type {self.qtype}; known: {', '.join(BLOCKS)}")
        per, size, _ = BLOCKS[self.qtype]
        if self.blocks.dtype != torch.uint8 or self.blocks.dim() != 2:
            raise ValueError(f"blocks must be a 2-D uint8 tensor, got {self.blocks.dtype} {tuple(self.blocks.shape)}")
        if self.d_in % per or self.blocks.shape[1] != self.d_in // per * size:
            raise ValueError(f"{self.qtype}: rows of {self.blocks.shape[1]} bytes do not hold {self.d_in} values")

    @property
    def shape(self) -> tuple[int, int]:
        return self.blocks.shape[0], self.d_in

    @property
    def nbytes(self) -> int:
        """Bytes a dense product reads: the file's own."""
        return self.blocks.numel()

    @property
    def file_bytes(self) -> int:
        return self.nbytes

    def unpack(self, r0: int = 0, r1: int | None = None) -> QuantWeight:
        """Rows ``[r0, r1)`` as the exact int8 repack (the C++ unpacker when built, else numpy's)."""
        r1 = self.shape[0] if r1 is None else r1
        sub = self.blocks[r0:r1]
        parts = _UNPACKER[0](sub.contiguous(), self.qtype) if sub.device.type == "cpu" and _UNPACKER[0] else None
        if parts is not None:  # the engine's C++ unpacker
            return QuantWeight(parts[0], parts[1], parts[2] if len(parts) > 2 else None, self.qtype)
        qw = unpack(sub.cpu().numpy(), self.qtype, (r1 - r0, self.d_in))
        if sub.device.type == "cpu":
            return qw
        return QuantWeight(qw.q.to(sub.device), qw.scale.to(sub.device),
                           None if qw.min is None else qw.min.to(sub.device), self.qtype)

    def dequantize(self, r0: int = 0, r1: int | None = None, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """The exact fp32 values of rows ``[r0, r1)`` (see :meth:`QuantWeight.dequantize`)."""
        return self.unpack(r0, r1).dequantize(out=out)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """The exact fp32 values of rows ``idx[n]`` (an embedding gather): only those rows unpacked."""
        sub = BlockWeight(self.blocks.index_select(0, idx.to(self.blocks.device)), self.qtype, self.d_in)
        return sub.dequantize()

    def permute_rows(self, order: torch.Tensor) -> BlockWeight:
        return BlockWeight(self.blocks[order].contiguous(), self.qtype, self.d_in)


TILE_ROWS, TILE_INPUTS = 16, 64  # csrc/int8_tiles.h: a tile holds 16 weight rows x 64 inputs


@dataclass
class TileWeight:
    """A Q8_0 weight held **only** in the integer-tile decode layout of ``csrc/int8_tiles.h``, with
    no file blocks beside it: an lm_head where :func:`tda.engine.quant_kernels.head_tiles` (AMD
    CPUs, or ``TDA_HEAD_TILES=1``), whose decode rows read the tiles.

    ``packed`` uint8 ``[d_out / 16 * d_in / 64 * 1024]``: tile (row tile t, input chunk c) at
    ``(t * d_in / 64 + c) * 1024``, byte ``k % 4`` of dword ``n`` of its row ``k / 4`` holding weight
    row ``16 t + n``, input ``64 c + k`` (the blocks' int8 values); ``st`` fp32 ``[d_out / 16,
    d_in / 32, 16]``: the blocks' fp16 scales (exact). The repack, rows and dequantised values read
    them through strided views: the same bits as :class:`BlockWeight`'s."""

    packed: torch.Tensor
    st: torch.Tensor
    qtype: str = "Q8_0"

    def __post_init__(self):
        if self.qtype != "Q8_0":
            raise ValueError(f"a tiles-only weight is Q8_0, got {self.qtype}")
        if self.st.dtype != torch.float32 or self.st.dim() != 3 or self.st.shape[2] != TILE_ROWS or self.st.shape[1] % 2:
            raise ValueError(f"st must be fp32 [d_out / 16, d_in / 32, 16], got {self.st.dtype} {tuple(self.st.shape)}")
        n_t, n_c = self.st.shape[0], self.st.shape[1] // 2
        if self.packed.dtype != torch.uint8 or self.packed.shape != (n_t * n_c * TILE_ROWS * TILE_INPUTS,):
            raise ValueError(f"packed must be uint8 [{n_t * n_c * TILE_ROWS * TILE_INPUTS}], got {tuple(self.packed.shape)}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.st.shape[0] * TILE_ROWS, self.st.shape[1] * 32

    @property
    def nbytes(self) -> int:
        """Bytes a decode step reads: the tiles and their fp32 scales."""
        return self.packed.numel() + self.st.numel() * 4

    def no_blocks(self) -> torch.Tensor:
        """The file-blocks argument of the tile GEMVs (``vnni_gemv``/``amx_gemv``) for this weight: empty
        uint8 ``[0, d_in / 32 * 34]``, as there are no blocks (the GEMV's fallback to them is not taken)."""
        return torch.empty(0, self.shape[1] // 32 * 34, dtype=torch.uint8)

    @property
    def file_bytes(self) -> int:
        return file_bytes(self.qtype, self.shape[0] * self.shape[1])

    def _q(self) -> torch.Tensor:
        """The int8 values as ``[row tile, input chunk, k / 4, n, k % 4]`` (a view)."""
        n_t, n_c = self.st.shape[0], self.st.shape[1] // 2
        return self.packed.view(torch.int8).view(n_t, n_c, TILE_INPUTS // 4, TILE_ROWS, 4)

    def unpack(self, r0: int = 0, r1: int | None = None) -> QuantWeight:
        """Rows ``[r0, r1)`` as the exact int8 repack."""
        n, d = self.shape
        r1 = n if r1 is None else r1
        if not 0 <= r0 <= r1 <= n:
            raise ValueError(f"rows [{r0}, {r1}) of a weight of {n}")
        if r0 % TILE_ROWS or r1 % TILE_ROWS:
            return self._take(torch.arange(r0, r1))
        t0, t1 = r0 // TILE_ROWS, r1 // TILE_ROWS
        q = self._q()[t0:t1].permute(0, 3, 1, 2, 4).reshape(r1 - r0, d)
        return QuantWeight(q, self.st[t0:t1].permute(0, 2, 1).reshape(r1 - r0, -1), None, self.qtype)

    def _take(self, idx: torch.Tensor) -> QuantWeight:
        t, n = idx // TILE_ROWS, idx % TILE_ROWS  # advanced indices around slices: their dim goes first
        q = self._q()[t, :, :, n, :].reshape(idx.numel(), self.shape[1])
        return QuantWeight(q, self.st[t, :, n].contiguous(), None, self.qtype)

    def dequantize(self, r0: int = 0, r1: int | None = None, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """The exact fp32 values of rows ``[r0, r1)`` (see :meth:`QuantWeight.dequantize`)."""
        return self.unpack(r0, r1).dequantize(out=out)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """The exact fp32 values of rows ``idx[n]`` (an embedding gather): only those rows read."""
        return self._take(idx.to(self.packed.device).reshape(-1)).dequantize()

    def take(self, idx: torch.Tensor) -> TileWeight:
        """A tiles-only weight of rows ``idx[n]`` (``n`` a multiple of 16), in this layout: its row
        ``i`` holds the same int8 values and scales as row ``idx[i]`` here, so a GEMV over it gives
        that row's output bit for bit (e.g. a speculative step's draft lm_head over a vocabulary)."""
        idx = idx.to(self.packed.device).reshape(-1)
        if idx.numel() == 0 or idx.numel() % TILE_ROWS:
            raise ValueError(f"take needs a positive multiple of {TILE_ROWS} rows, got {idx.numel()}")
        if int(idx.min()) < 0 or int(idx.max()) >= self.shape[0]:
            raise ValueError(f"row indices must lie in [0, {self.shape[0]})")
        qw = self._take(idx)
        n, d = qw.q.shape
        n_t, n_c = n // TILE_ROWS, d // TILE_INPUTS
        packed = hugepages.empty((n_t * n_c * TILE_ROWS * TILE_INPUTS,), torch.uint8)
        packed.view(torch.int8).view(n_t, n_c, TILE_INPUTS // 4, TILE_ROWS, 4).copy_(
            qw.q.view(n_t, TILE_ROWS, n_c, TILE_INPUTS // 4, 4).permute(0, 2, 3, 1, 4))
        st = hugepages.empty((n_t, self.st.shape[1], TILE_ROWS), torch.float32)
        st.copy_(qw.scale.view(n_t, TILE_ROWS, -1).permute(0, 2, 1))
        return TileWeight(packed, st, self.qtype)

    @classmethod
    def from_blocks(cls, blocks: torch.Tensor, pack, rows_per_chunk: int = 2048) -> TileWeight:
        """The tiles of Q8_0 ``blocks[d_out, row_bytes]`` (e.g. a view of a GGUF file's map), made
        ``rows_per_chunk`` rows at a time by ``pack(blocks, qtype) -> [packed, st]`` (the C++
        ``gemv_tiles_pack``) straight into huge-page-advised memory: no copy of the whole weight is
        made beside them."""
        d_out, row_bytes = blocks.shape
        per, size, _ = BLOCKS["Q8_0"]
        d_in = row_bytes // size * per
        if d_out % TILE_ROWS or d_in % TILE_INPUTS or row_bytes % size:
            raise ValueError(f"Q8_0 blocks [{d_out}, {row_bytes}] are not whole tiles of 16 x 64")
        step = max(TILE_ROWS, rows_per_chunk // TILE_ROWS * TILE_ROWS)
        tile_bytes = (d_in // TILE_INPUTS) * TILE_ROWS * TILE_INPUTS  # one row tile's values
        packed = hugepages.empty((d_out // TILE_ROWS * tile_bytes,), torch.uint8)
        st = hugepages.empty((d_out // TILE_ROWS, d_in // 32, TILE_ROWS), torch.float32)
        for r0 in range(0, d_out, step):
            r1 = min(d_out, r0 + step)
            p, s = pack(blocks[r0:r1].contiguous(), "Q8_0")[:2]
            packed[r0 // TILE_ROWS * tile_bytes:r1 // TILE_ROWS * tile_bytes] = p
            st[r0 // TILE_ROWS:r1 // TILE_ROWS] = s
        return cls(packed, st)


# ---------------------------------------------------------------------------------------------
# GGUF blocks -> QuantWeight
# ---------------------------------------------------------------------------------------------


def _f16(b: np.ndarray) -> np.ndarray:
    """Little-endian fp16 bytes ``[..., 2]`` -> fp32 ``[..., 1]``."""
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def _nibbles(b: np.ndarray) -> np.ndarray:
    """``[nb, k, 32]`` bytes -> ``[nb, k, 2, 32]``: low nibbles first, then high ones."""
    return np.stack([b & 0x0F, b >> 4], axis=-2)


def _unpack_blocks(blocks: np.ndarray, qtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``blocks[nb, bytes]`` uint8 -> ``q[nb, per]`` int8, ``scale[nb, per / G]``, ``min`` or None."""
    nb = blocks.shape[0]
    if qtype == "Q8_0":
        return blocks[:, 2:].view(np.int8), _f16(blocks[:, :2]), None
    if qtype == "Q4_0":
        q = _nibbles(blocks[:, 2:].reshape(nb, 1, 16)).reshape(nb, 32).astype(np.int8) - 8
        return q, _f16(blocks[:, :2]), None
    if qtype == "Q5_0":
        qh = np.ascontiguousarray(blocks[:, 2:6]).view(np.uint32)  # bit i: the 5th bit of value i
        high = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
        low = _nibbles(blocks[:, 6:].reshape(nb, 1, 16)).reshape(nb, 32)
        return (low | (high << 4)).astype(np.int8) - 16, _f16(blocks[:, :2]), None
    if qtype == "Q4_K":
        d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
        s = blocks[:, 4:16]
        lo, mid, hi = s[:, 0:4], s[:, 4:8], s[:, 8:12]  # 6-bit scales and minimums of 8 sub-blocks
        sc = np.concatenate([lo & 0x3F, (hi & 0x0F) | ((lo >> 2) & 0x30)], axis=1).astype(np.float32)
        m = np.concatenate([mid & 0x3F, (hi >> 4) | ((mid >> 2) & 0x30)], axis=1).astype(np.float32)
        q = _nibbles(blocks[:, 16:].reshape(nb, 4, 32)).reshape(nb, 256).astype(np.int8)
        return q, d * sc, dmin * m
    if qtype == "Q6_K":
        ql, qh = blocks[:, :128].reshape(nb, 2, 64), blocks[:, 128:192].reshape(nb, 2, 32)
        sc, d = blocks[:, 192:208].view(np.int8).astype(np.float32), _f16(blocks[:, 208:210])
        low = np.stack([ql & 0x0F, ql >> 4], axis=2).reshape(nb, 2, 4, 32)  # per half: 4 runs of 32
        high = np.stack([(qh >> s) & 3 for s in (0, 2, 4, 6)], axis=2)  # [nb, 2, 4, 32]
        q = (low | (high << 4)).reshape(nb, 256).astype(np.int8) - 32
        return q, d * sc, None
    raise ValueError(f"no repack for block type {qtype}; known: {', '.join(BLOCKS)}")


def unpack(raw: np.ndarray, qtype: str, shape: tuple[int, int]) -> QuantWeight:
    """A GGUF tensor's raw bytes (any shape holding ``d_out · d_in / per`` blocks) -> QuantWeight of ``shape``."""
    if qtype not in BLOCKS:
        raise ValueError(f"no repack for block type {qtype}; known: {', '.join(BLOCKS)}")
    per, size, _ = BLOCKS[qtype]
    d_out, d_in = shape
    if d_in % per:
        raise ValueError(f"{qtype}: rows of {d_in} values are not whole blocks of {per}")
    blocks = np.ascontiguousarray(raw).view(np.uint8).reshape(-1, size)
    if blocks.shape[0] != d_out * d_in // per:
        raise ValueError(f"{qtype}: {blocks.shape[0]} blocks for a [{d_out}, {d_in}] weight")
    q, scale, mins = _unpack_blocks(blocks, qtype)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=a.dtype))  # noqa: E731
    return QuantWeight(t(q).reshape(d_out, d_in), t(scale.astype(np.float32)).reshape(d_out, -1),
                       None if mins is None else t(mins.astype(np.float32)).reshape(d_out, -1), qtype)


# ---------------------------------------------------------------------------------------------
# fp32 -> QuantWeight (the random:* shapes)
# ---------------------------------------------------------------------------------------------


def _fp16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float16).to(torch.float32)


def quantize(w: torch.Tensor, qtype: str = "Q8_0") -> QuantWeight:
    """Blocks of ``qtype`` (one of :data:`QUANTIZABLE`) for an fp32 weight ``w[d_out, d_in]``, as a
    :class:`QuantWeight` whose values are what the blocks dequantise to (round-to-nearest within each
    block; scales rounded to fp16 as the format stores them)."""
    if qtype not in QUANTIZABLE:
        raise ValueError(f"cannot quantize to {qtype}; use one of {', '.join(QUANTIZABLE)}")
    per = BLOCKS[qtype][0]
    w = w.detach().to(torch.float32)
    d_out, d_in = w.shape
    if d_in % per:
        raise ValueError(f"{qtype} needs rows that are whole blocks of {per}; this weight has {d_in}")
    b = w.reshape(d_out, d_in // 32, 32)
    if qtype == "Q8_0":
        d = _fp16(b.abs().amax(-1) / 127)
        q = torch.where(d[..., None] > 0, b / d[..., None], 0.0).round().clamp(-127, 127)
        return QuantWeight(q.to(torch.int8).reshape(d_out, d_in), d.contiguous(), None, qtype)
    if qtype == "Q4_0":
        amax = b.gather(-1, b.abs().argmax(-1, keepdim=True)).squeeze(-1)  # signed, largest magnitude
        d = _fp16(amax / -8)
        q = torch.where(d[..., None] != 0, b / d[..., None], 0.0)
        q = torch.trunc(q + 8.5).clamp(0, 15) - 8
        return QuantWeight(q.to(torch.int8).reshape(d_out, d_in), d.contiguous(), None, qtype)
    # Q4_K: 8 sub-blocks of 32 per 256, each w ~ d*sc*q - dmin*m with 6-bit sc, m and 4-bit q
    lo = b.amin(-1).clamp(max=0.0)
    step = (b.amax(-1) - lo) / 15  # [d_out, n_sub]
    sup = lambda t: t.reshape(d_out, d_in // 256, 8)  # noqa: E731
    d = _fp16(sup(step).amax(-1) / 63)  # [d_out, n_super]
    dmin = _fp16(sup(-lo).amax(-1) / 63)
    sc = torch.where(d[..., None] > 0, sup(step) / d[..., None], 0.0).round().clamp(0, 63)
    m = torch.where(dmin[..., None] > 0, sup(-lo) / dmin[..., None], 0.0).round().clamp(0, 63)
    scale = (d[..., None] * sc).reshape(d_out, -1)
    mins = (dmin[..., None] * m).reshape(d_out, -1)
    q = torch.where(scale[..., None] > 0, (b + mins[..., None]) / scale[..., None], 0.0)
    q = q.round().clamp(0, 15)
    return QuantWeight(q.to(torch.int8).reshape(d_out, d_in), scale.contiguous(), mins.contiguous(), qtype)


def _f16_bytes(t: torch.Tensor) -> torch.Tensor:
    """fp16 values ``[...]`` -> their little-endian bytes ``[..., 2]`` uint8."""
    return t.to(torch.float16).contiguous().view(torch.uint8).view(*t.shape, 2)


def to_blocks(qw: QuantWeight) -> BlockWeight | None:
    """The GGUF blocks that de-quantise to exactly ``qw``'s values (Q8_0, Q4_0, Q4_K: what
    :func:`quantize` makes), or None when they cannot hold them (another type, a scale that is no
    fp16 value, Q4_K scales that no fp16 ``d`` times 6-bit factors make)."""
    d_out, d_in = qw.shape
    per, size, _ = BLOCKS.get(qw.qtype, (0, 0, 0))
    if qw.qtype not in QUANTIZABLE or qw.q.device.type != "cpu" or d_in % per:
        return None
    nb = d_in // per
    if qw.qtype in ("Q8_0", "Q4_0"):
        d = qw.scale  # [d_out, nb]: the block's fp16 d
        if not torch.equal(d.half().float(), d):
            return None
        if qw.qtype == "Q8_0":
            vals = qw.q.view(d_out, nb, 32).view(torch.uint8)
        else:
            if int(qw.q.min()) < -8 or int(qw.q.max()) > 7:
                return None
            n = (qw.q.view(d_out, nb, 2, 16) + 8).to(torch.uint8)  # values 0..15, then 16..31
            vals = n[:, :, 0] | (n[:, :, 1] << 4)
        blocks = torch.cat([_f16_bytes(d), vals], dim=-1)
    else:  # Q4_K
        if qw.min is None or int(qw.q.min()) < 0 or int(qw.q.max()) > 15:
            return None
        sc, m = _factor(qw.scale, 8, 63), _factor(qw.min, 8, 63)
        if sc is None or m is None:
            return None
        k = sc[0].view(d_out, nb, 8)
        mk = m[0].view(d_out, nb, 8)
        packed_scales = torch.cat([k[..., :4] | ((k[..., 4:] >> 4) << 6), mk[..., :4] | ((mk[..., 4:] >> 4) << 6),
                                   (k[..., 4:] & 15) | ((mk[..., 4:] & 15) << 4)], dim=-1)  # the 12 bytes
        n = qw.q.view(d_out, nb, 4, 2, 32).to(torch.uint8)  # per 64 values: low nibbles, then high
        vals = (n[..., 0, :] | (n[..., 1, :] << 4)).reshape(d_out, nb, 128)
        blocks = torch.cat([_f16_bytes(sc[1].view(d_out, nb)), _f16_bytes(m[1].view(d_out, nb)), packed_scales, vals], -1)
    return BlockWeight(blocks.reshape(d_out, nb * size).contiguous(), qw.qtype, d_in)


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


class QuantLinear(nn.Module):
    """``y = x @ W.T + bias`` over a GGUF file's own blocks (a :class:`BlockWeight`, buffer
    ``blocks``) or a :class:`QuantWeight` (buffers ``q``, ``scale``, ``qmin``; for a module on
    blocks, unpacked from them the first time they are asked for).

    ``forward`` is the pure-torch fallback (dequantised tiles of :data:`TILE_BYTES`); on CPU the
    engine's fast path routes the module to ``torch.ops.tda_kernels.quant_blocks_linear`` (or
    ``quant_linear`` on the repack). ``weight``
    dequantises the whole matrix on every access (a full-precision copy only while the caller holds it).
    """

    def __init__(self, qw: QuantWeight | BlockWeight | TileWeight, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = qw.shape
        self.qtype = qw.qtype
        if isinstance(qw, BlockWeight):  # the file's blocks; the int8 repack made when first asked for
            self.register_buffer("blocks", qw.blocks)
        elif isinstance(qw, TileWeight):  # the decode tiles only (an lm_head: TDA_HEAD_TILES=1)
            self.register_buffer("tiles", qw.packed)
            self.register_buffer("tiles_st", qw.st)
        else:
            self._set_repack(qw)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(torch.float32), requires_grad=False)

    def _set_repack(self, qw: QuantWeight) -> None:
        self._buffers.update(q=qw.q, scale=qw.scale, qmin=qw.min)  # register_buffer's checks would recurse

    def __getattr__(self, name: str):
        # q / scale / qmin of a module holding file blocks: the repack, unpacked on first use (a
        # sparse method's layout, the torch fallback); the dense kernels read the blocks only
        if name in ("q", "scale", "qmin"):
            buffers = self.__dict__.get("_buffers", {})
            if ("blocks" in buffers or "tiles" in buffers) and "q" not in buffers:
                own = self.block_weight or self.tile_weight
                self._set_repack(hugepages.copy_fields(own.unpack()))  # read by output-sparse steps
                return buffers[name]
        return super().__getattr__(name)

    @property
    def block_weight(self) -> BlockWeight | None:
        """The file's own blocks, or None for a weight held in the int8 repack only."""
        b = self._buffers.get("blocks")
        return None if b is None else BlockWeight(b, self.qtype, self.in_features)

    def keep_tiles_only(self, tw: TileWeight) -> None:
        """Hold ``tw`` (the decode tiles of this module's own blocks) instead of the blocks, which
        are let go: the embedding gathers, prefill and repack read the tiles from then on."""
        if "blocks" not in self._buffers or tuple(tw.shape) != (self.out_features, self.in_features) \
                or tw.qtype != self.qtype:
            raise ValueError("keep_tiles_only: the tiles of this module's own blocks are needed")
        del self._buffers["blocks"]
        self.register_buffer("tiles", tw.packed)
        self.register_buffer("tiles_st", tw.st)

    @property
    def tile_weight(self) -> TileWeight | None:
        """The decode tiles of a weight held in them only (:class:`TileWeight`), else None."""
        t = self._buffers.get("tiles")
        return None if t is None else TileWeight(t, self._buffers["tiles_st"], self.qtype)

    @property
    def blocks_only(self) -> BlockWeight | TileWeight | None:
        """The blocks (or the tiles of a tiles-only weight) while no repack has been unpacked from
        them (then a product reads them), else None."""
        return None if "q" in self._buffers else (self.block_weight or self.tile_weight)

    @property
    def qweight(self) -> QuantWeight:
        """The int8 repack (unpacked from the blocks and kept, the first time a caller asks)."""
        return QuantWeight(self.q, self.scale, self.qmin, self.qtype)

    @property
    def storage(self) -> torch.Tensor:
        """The tensor a dense product streams: the blocks when held, else the int8 values."""
        for name in ("blocks", "tiles"):
            b = self._buffers.get(name)
            if b is not None:
                return b
        return self.q

    @property
    def decode_nbytes(self) -> int:
        """Bytes a dense product reads per call: the file's blocks, the tiles of a tiles-only weight,
        or the repack's values and scales."""
        own = self.block_weight or self.tile_weight
        return own.nbytes if own is not None else self.qweight.nbytes

    @property
    def weight(self) -> torch.Tensor:
        bw = self.blocks_only
        return bw.dequantize() if bw is not None else self.qweight.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bw = self.blocks_only
        x2 = x.reshape(-1, self.in_features).to(torch.float32)
        if isinstance(bw, BlockWeight) and bw.blocks.device.type == "cpu":
            y = None
            if _BLOCKS_LINEAR[0] is not None:  # the engine's kernels on the blocks (prefill included)
                y = _BLOCKS_LINEAR[0](x2.contiguous(), bw.blocks, self.qtype, None if self.bias is None else self.bias.detach())
            if y is not None:
                return y.view(*x.shape[:-1], self.out_features).to(x.dtype)
            qw = bw  # tiles unpacked and de-quantised per call: no repack kept
        elif isinstance(bw, TileWeight):
            qw = bw  # a tiles-only weight: its rows de-quantised per tile of the loop below
        else:
            qw = self.qweight  # on a GPU: the repack, unpacked once and kept
        tile = min(self.out_features, max(1, TILE_BYTES // (4 * self.in_features)))
        if isinstance(qw, TileWeight):  # whole row tiles: their rows are strided views, no gather
            tile = max(TILE_ROWS, tile // TILE_ROWS * TILE_ROWS)
        buf = torch.empty(tile, self.in_features, dtype=torch.float32, device=x2.device)  # one tile buffer
        y = torch.empty(x2.shape[0], self.out_features, dtype=torch.float32, device=x2.device)
        for r0 in range(0, self.out_features, tile):
            r1 = min(r0 + tile, self.out_features)
            y[:, r0:r1] = x2 @ qw.dequantize(r0, r1, out=buf).T
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, qtype={self.qtype}"


class QuantEmbedding(nn.Module):
    """An input embedding over a :class:`QuantWeight` (shared with a tied :class:`QuantLinear`):
    the gathered rows dequantised exactly, times ``embed_scale`` when the model scales its
    embeddings (Gemma: ``Gemma3TextScaledWordEmbedding``)."""

    def __init__(self, source: QuantLinear, embed_scale: torch.Tensor | None = None, padding_idx: int | None = None):
        super().__init__()
        self.source = [source]  # a list: not a submodule (the lm_head owns the buffers)
        self.num_embeddings, self.embedding_dim = source.out_features, source.in_features
        self.padding_idx = padding_idx
        if embed_scale is not None:
            self.register_buffer("embed_scale", embed_scale.detach().clone(), persistent=False)
        else:
            self.embed_scale = None

    @property
    def weight(self) -> torch.Tensor:
        return self.source[0].weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        src = self.source[0]
        w = src.blocks_only or src.qweight  # file blocks: only the gathered rows unpacked
        rows = w.rows(input_ids.reshape(-1)).view(*input_ids.shape, self.embedding_dim)
        return rows if self.embed_scale is None else rows * self.embed_scale.to(rows.dtype)


def quant_modules(model: nn.Module) -> list[QuantLinear]:
    return [m for m in model.modules() if isinstance(m, QuantLinear)]


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QuantLinear) for m in model.modules())


def replace_linear(model: nn.Module, name: str, qw: QuantWeight | BlockWeight, bias: torch.Tensor | None = None) -> QuantLinear:
    """Put a :class:`QuantLinear` of ``qw`` at the dotted ``name`` of ``model``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    mod = QuantLinear(qw, bias)
    setattr(parent, child, mod)
    return mod


def quantize_model(model: nn.Module, qtype: str = "Q4_K", fallback: str | None = None) -> int:
    """Replace every ``nn.Linear`` of ``model`` whose rows are whole ``qtype`` blocks by a
    :class:`QuantLinear` (weights quantized to ``qtype``; ``fallback``, e.g. Q8_0, for rows that
    are not whole ``qtype`` blocks but whole ``fallback`` ones); a tied input embedding follows its
    output embedding as a :class:`QuantEmbedding`. Returns the number of linears converted."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = head is not None and emb is not None and head.weight is emb.weight

    def type_for(m) -> str | None:
        for t in (qtype, fallback):
            if t is not None and m.in_features % BLOCKS[t][0] == 0:
                return t
        return None

    names = [(n, type_for(m)) for n, m in model.named_modules() if type(m) is nn.Linear and type_for(m)]
    new_head = None
    for n, t in names:
        mod = model.get_submodule(n)
        qw = quantize(mod.weight, t)
        if not (tied and mod is head):  # as a GGUF file holds them (a tied head: the repack its embedding gathers)
            qw = to_blocks(qw) or qw
        q = replace_linear(model, n, qw, mod.bias)
        if mod is head:
            new_head = q
    if tied and new_head is not None:
        set_input_embedding(model, emb, new_head)
    return len(names)


def set_input_embedding(model: nn.Module, emb: nn.Module, head: QuantLinear) -> None:
    """Replace the input embedding ``emb`` by a :class:`QuantEmbedding` over ``head``'s weight."""
    new = QuantEmbedding(head, getattr(emb, "embed_scale", None), getattr(emb, "padding_idx", None))
    model.set_input_embeddings(new)
