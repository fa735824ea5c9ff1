"""Decode steps of quantized weights on integer tiles (``csrc/int8_tiles.h``), every block type, on
both kernels — AVX512-VNNI (``csrc/vnni_gemv.h``) and AMX-INT8 (``csrc/amx_gemv.h``): against
``F.linear`` on gguf's de-quantised weights in float64 (activations held as 23-bit integers per
group: the error stays within fp32 rounding of the group's largest value), activations of a wide
dynamic range, the two kernels bit for bit equal, non-finite activations (the blocks' own GEMV gives
the IEEE result), bias and shapes; which kernel and which weights get the layout. A kernel the CPU or
the build lacks is skipped."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tda.engine import quant_kernels

gguf = pytest.importorskip("gguf")
sys.path.insert(0, str(Path(__file__).parent))
from test_quant_blocks import _blocks, _close  # noqa: E402

_ops = quant_kernels.quant_ops()


def _ready(kernel: str) -> bool:
    return _ops is not None and hasattr(_ops, f"{kernel}_gemv_ready") and getattr(_ops, f"{kernel}_gemv_ready")()


KERNELS = [pytest.param(k, marks=pytest.mark.skipif(not _ready(k), reason=f"no {k} decode on this CPU or build"))
           for k in ("vnni", "amx")]


def _gemv(kernel, bw, x, bias=None):
    parts = _ops.gemv_tiles_pack(bw.blocks, bw.qtype)
    mt = parts[2] if len(parts) > 2 else None
    return getattr(_ops, f"{kernel}_gemv")(x, parts[0], parts[1], mt, bw.blocks, bw.qtype, bias)


def _inputs(d_in: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, d_in, generator=g),
            torch.randn(1, d_in, generator=g) * torch.exp2(torch.randint(-30, 31, (1, d_in), generator=g).float()),
            torch.zeros(1, d_in))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("qtype", quant_kernels.TILE_GEMV_TYPES)
@pytest.mark.parametrize("d_out,inputs", [(16, 256), (48, 512), (256, 1280)])
def test_tile_gemv_equals_linear_on_dequantised_weights(kernel, qtype, d_out, inputs):
    per = 256 if qtype in ("Q4_K", "Q6_K") else 32
    bw, ref = _blocks(qtype, d_out, inputs // per, seed=d_out + inputs)
    for x in _inputs(bw.shape[1], d_out):
        got = _gemv(kernel, bw, x)
        want = F.linear(x.double(), ref.double())
        bound = x.double().abs() @ ref.double().abs().T
        assert got.dtype == torch.float32 and got.shape == want.shape
        assert bool(((got.double() - want).abs() <= 1e-6 * bound + 1e-30).all())


@pytest.mark.skipif(not (_ready("vnni") and _ready("amx")), reason="needs both AVX512-VNNI and AMX-INT8")
@pytest.mark.parametrize("qtype", quant_kernels.TILE_GEMV_TYPES)
def test_vnni_and_amx_give_the_same_bits(qtype):
    bw, _ = _blocks(qtype, 64, 5 if qtype in ("Q4_K", "Q6_K") else 40, seed=7)
    for x in _inputs(bw.shape[1], 11):
        assert torch.equal(_gemv("vnni", bw, x), _gemv("amx", bw, x))


@pytest.mark.parametrize("kernel", KERNELS)
def test_tile_gemv_bias_shapes_and_non_finite_inputs(kernel):
    bw, ref = _blocks("Q5_0", 32, 2, seed=3)
    bias = torch.randn(32)
    x = torch.randn(1, 1, 64)
    got = _gemv(kernel, bw, x, bias)
    assert got.shape == (1, 1, 32)
    assert torch.allclose(got.double(), F.linear(x.double(), ref.double(), bias.double()), rtol=1e-5, atol=1e-5)
    for bad in (float("inf"), float("nan")):
        xb = x.clone()
        xb[0, 0, 5] = bad
        assert torch.equal(_gemv(kernel, bw, xb, bias).isnan(), _ops.quant_blocks_linear(xb, bw.blocks, "Q5_0", bias).isnan())
    fn = getattr(_ops, f"{kernel}_gemv")
    with pytest.raises(ValueError):
        fn(torch.randn(2, 64), *_ops.gemv_tiles_pack(bw.blocks, "Q5_0"), None, bw.blocks, "Q5_0", None)
    k4, _ = _blocks("Q4_K", 16, 1, seed=5)
    with pytest.raises(ValueError, match="minimums"):  # Q4_K without its minimums
        fn(torch.randn(1, 256), *_ops.gemv_tiles_pack(k4.blocks, "Q4_K")[:2], None, k4.blocks, "Q4_K", None)


def test_which_kernel_decode_steps_take(monkeypatch):
    monkeypatch.delenv("TDA_AMX_GEMV", raising=False)
    monkeypatch.delenv("TDA_NO_VNNI_GEMV", raising=False)
    assert quant_kernels.decode_kernel() == ("vnni" if _ready("vnni") else None)
    monkeypatch.setenv("TDA_NO_VNNI_GEMV", "1")
    assert quant_kernels.decode_kernel() is None
    monkeypatch.setenv("TDA_AMX_GEMV", "1")  # opt-in
    assert quant_kernels.decode_kernel() == ("amx" if _ready("amx") else None)


@pytest.mark.skipif(not _ready("vnni"), reason="no AVX512-VNNI decode on this CPU or build")
def test_which_weights_get_the_layout(monkeypatch):
    monkeypatch.delenv("TDA_AMX_GEMV", raising=False)
    monkeypatch.delenv("TDA_NO_VNNI_GEMV", raising=False)
    big, _ = _blocks("Q5_0", 1024, 20, seed=1)  # 1024 x 640: a Gemma q_proj
    owner = torch.nn.Linear(1, 1)
    first = quant_kernels.tile_layout(big, owner=owner)
    assert first is not None and quant_kernels.tile_layout(big, owner=owner) is first  # made once per module
    small = _blocks("Q5_0", 256, 20, seed=2)[0]
    assert quant_kernels.tile_layout(small) is not None  # VNNI: every size
    assert quant_kernels.tile_layout(_blocks("Q4_K", 1024, 3, seed=3)[0]) is not None
    assert quant_kernels.tile_layout(_blocks("Q6_K", 1000, 3, seed=3)[0]) is None  # rows not whole tiles of 16
    assert quant_kernels.tile_layout(_blocks("Q8_0", 1024, 20, seed=4)[0]) is not None
    monkeypatch.setenv("TDA_NO_VNNI_GEMV", "1")
    assert quant_kernels.tile_layout(big) is None  # the blocks' own GEMV
    if _ready("amx"):
        monkeypatch.setenv("TDA_AMX_GEMV", "1")
        assert quant_kernels.tile_layout(small) is None  # below AMX's size threshold
        assert quant_kernels.tile_layout(big) is not None


@pytest.mark.skipif(not _ready("vnni"), reason="no AVX512-VNNI decode on this CPU or build")
def test_an_lm_head_takes_the_tiles_only_when_asked(monkeypatch):
    """Weights above TILE_GEMV_MAX_WEIGHTS (an lm_head) stay on the blocks under TDA_HEAD_TILES=0;
    either way a decode row equals F.linear on the de-quantised weights to fp32 rounding, and the
    journal's kernel identity names the choice (other bits)."""
    from tda.evaluate.journal import kernels_identity

    monkeypatch.delenv("TDA_AMX_GEMV", raising=False)
    monkeypatch.delenv("TDA_NO_VNNI_GEMV", raising=False)
    monkeypatch.setenv("TDA_HEAD_TILES", "0")
    monkeypatch.setattr(quant_kernels, "TILE_GEMV_MAX_WEIGHTS", 256 * 640 - 1)  # this one counts as a head
    head, ref = _blocks("Q8_0", 256, 20, seed=6)
    x = torch.randn(1, 640, generator=torch.Generator().manual_seed(6))
    assert quant_kernels.tile_layout(head) is None and not quant_kernels.head_tiles()
    assert "head" not in kernels_identity(quantized=True)
    monkeypatch.setenv("TDA_HEAD_TILES", "1")
    assert quant_kernels.head_tiles()
    packed, st, mt = quant_kernels.tile_layout(head)
    y = _ops.vnni_gemv(x, packed, st, mt, head.blocks, "Q8_0", None)
    _close(y, x, ref, None)
    assert kernels_identity(quantized=True)["head"] == "tiles"
    assert "head" not in kernels_identity(quantized=False)


@pytest.mark.parametrize("qtype", quant_kernels.TILE_GEMV_TYPES)
def test_tile_nbytes_counts_what_the_layout_holds(qtype):
    bw, _ = _blocks(qtype, 48, 2 if qtype in ("Q4_K", "Q6_K") else 10, seed=2)
    parts = _ops.gemv_tiles_pack(bw.blocks, bw.qtype)
    assert quant_kernels.tile_nbytes(qtype, *bw.shape) == sum(p.numel() * p.element_size() for p in parts)


def test_decode_nbytes_follows_the_kernel(monkeypatch):
    from tda.models import quant

    monkeypatch.delenv("TDA_AMX_GEMV", raising=False)
    bw, _ = _blocks("Q5_0", 64, 20, seed=4)
    mod = quant.QuantLinear(bw)
    tiles = quant_kernels.tile_nbytes("Q5_0", 64, 640)
    monkeypatch.setenv("TDA_NO_VNNI_GEMV", "1")
    assert quant_kernels.decode_nbytes(mod) == mod.decode_nbytes == bw.nbytes  # the blocks' own GEMV
    monkeypatch.delenv("TDA_NO_VNNI_GEMV")
    assert quant_kernels.decode_nbytes(mod) == (tiles if _ready("vnni") else bw.nbytes)


def _tiled(qtype: str, d_out: int, seed: int):
    """Random blocks of ``qtype`` (512 inputs) with their reference values and decode tiles:
    ``(bw, ref, packed, st, mt or None)``."""
    bw, ref = _blocks(qtype, d_out, 2 if qtype in ("Q4_K", "Q6_K") else 16, seed=seed)
    packed, st, *rest = _ops.gemv_tiles_pack(bw.blocks, bw.qtype)
    return bw, ref, packed, st, rest[0] if rest else None


@pytest.mark.skipif(not _ready("vnni"), reason="no AVX512-VNNI decode on this CPU or build")
@pytest.mark.parametrize("qtype", quant_kernels.TILE_GEMV_TYPES)
def test_threshold_rule_on_the_dense_tiles(qtype):
    """A threshold rule's decode row on the dense tiles: the tile GEMV of x with its inactive inputs
    zeroed, bit for bit; the kept inputs counted in count, the others in extra; fewer kept than
    dense_from, or a kept x not finite: an empty tensor and nothing counted."""
    bw, ref, packed, st, mt = _tiled(qtype, 48, seed=9)
    d_in = bw.shape[1]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, d_in, generator=g)
    x[0, :7] = 0.0
    bias = torch.randn(48, generator=g)
    tvec = torch.rand(d_in, generator=g)
    for t, tv in ((0.6, None), (0.0, tvec)):
        keep = (x != 0) & (x.abs() >= (tv if tv is not None else t))
        xm = torch.where(keep, x, torch.zeros(()))
        count, extra = torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
        y = _ops.vnni_gemv_threshold(x, packed, st, mt, qtype, bias, t, tv, count, extra, 0.25)
        assert torch.equal(y, _ops.vnni_gemv(xm, packed, st, mt, bw.blocks, qtype, bias))
        _close(y, xm, ref, bias)
        assert int(count) == int(keep.sum()) and int(extra) == d_in - int(keep.sum())
        none = _ops.vnni_gemv_threshold(x, packed, st, mt, qtype, bias, t, tv, count, extra, 0.99)
        assert none.numel() == 0 and int(count) + int(extra) == d_in  # nothing counted
    xb = x.clone()
    xb[0, 9] = float("inf")
    assert _ops.vnni_gemv_threshold(xb, packed, st, mt, qtype, None, 0.1, None, None, None, 0.0).numel() == 0


def test_dense_from_reads_its_setting(monkeypatch):
    from tda.common.errors import BadInput

    monkeypatch.delenv("TDA_QUANT_DENSE_FROM", raising=False)
    assert quant_kernels.dense_from() == quant_kernels.DENSE_FROM
    monkeypatch.setenv("TDA_QUANT_DENSE_FROM", "2")
    assert quant_kernels.dense_from() == 2.0
    for bad in ("-1", "half", "nan"):
        monkeypatch.setenv("TDA_QUANT_DENSE_FROM", bad)
        with pytest.raises(BadInput, match="TDA_QUANT_DENSE_FROM"):
            quant_kernels.dense_from()


@pytest.mark.skipif(not _ready("vnni"), reason="no AVX512-VNNI decode on this CPU or build")
@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K", "Q6_K"])
def test_topk_rule_on_the_dense_tiles(qtype):
    """WINA's rule on the dense tiles: the k largest |x|·scale kept as kernels.topk_sorted keeps them
    (ties at the k-th score to the lower index), bit for bit the tile GEMV of that masked row; a
    non-finite x: an empty tensor."""
    from tda.engine import kernels

    bw, ref, packed, st, mt = _tiled(qtype, 32, seed=4)
    d_in = bw.shape[1]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, d_in, generator=g)
    x[0, 10:40] = 0.75  # ties at the k-th score
    scale = torch.rand(d_in, generator=g) + 0.5
    scale[10:40] = 1.0
    bias = torch.randn(32, generator=g)
    for k in (1, d_in // 3, d_in // 2, d_in - 1):
        idx = kernels.topk_sorted(x.abs() * scale, k)[0]
        xm = torch.zeros_like(x)
        xm[0, idx] = x[0, idx]
        y = _ops.vnni_gemv_topk(x, scale, k, packed, st, mt, qtype, bias)
        assert torch.equal(y, _ops.vnni_gemv(xm, packed, st, mt, bw.blocks, qtype, bias))
        _close(y, xm, ref, bias)
    xb = x.clone()
    xb[0, 3] = float("nan")
    assert _ops.vnni_gemv_topk(xb, scale, 5, packed, st, mt, qtype, None).numel() == 0
    with pytest.raises(ValueError, match="k must be"):
        _ops.vnni_gemv_topk(x, scale, 0, packed, st, mt, qtype, None)


@pytest.mark.skipif(not _ready("vnni"), reason="no AVX512-VNNI decode on this CPU or build")
@pytest.mark.parametrize("qtype", quant_kernels.TILE_GEMV_TYPES)
@pytest.mark.parametrize("rows", [1, 2, 3, 4])
def test_rows_at_once_equal_each_row_alone_bit_for_bit(qtype, rows):
    """vnni_gemv_rows (a speculative step's verification: a few rows over one pass of the tiles):
    row r is vnni_gemv of row r alone, bit for bit, with and without a bias; within fp32 rounding of
    F.linear on the de-quantised weights; a non-finite row gives an empty tensor; more than 4 rows,
    or a row of the wrong length, a clear error."""
    bw, ref, packed, st, mt = _tiled(qtype, 48, seed=rows)
    d_in = bw.shape[1]
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, d_in, generator=g) * torch.exp2(torch.randint(-8, 9, (rows, d_in), generator=g).float())
    x[0, :5] = 0.0
    bias = torch.randn(bw.shape[0], generator=g)
    for b in (None, bias):
        got = _ops.vnni_gemv_rows(x, packed, st, mt, bw.qtype, b)
        assert got.shape == (rows, bw.shape[0]) and got.dtype == torch.float32
        for r in range(rows):
            alone = _ops.vnni_gemv(x[r].contiguous(), packed, st, mt, bw.blocks, bw.qtype, b)
            assert torch.equal(got[r], alone), f"row {r} differs from its own GEMV"
        want = F.linear(x.double(), ref.double(), None if b is None else b.double())
        bound = x.double().abs() @ ref.double().abs().T + (0 if b is None else b.double().abs())
        assert bool(((got.double() - want).abs() <= 1e-6 * bound + 1e-30).all())
    bad = x.clone()
    bad[-1, 3] = float("nan")
    assert _ops.vnni_gemv_rows(bad, packed, st, mt, bw.qtype, None).numel() == 0
    with pytest.raises(ValueError, match="R in 1..4"):
        _ops.vnni_gemv_rows(torch.zeros(5, d_in), packed, st, mt, bw.qtype, None)
    with pytest.raises(ValueError, match="x must be"):
        _ops.vnni_gemv_rows(torch.zeros(rows, d_in + 64), packed, st, mt, bw.qtype, None)
