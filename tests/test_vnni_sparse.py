"""Input-sparse decode rows on AVX512-VNNI (``csrc/vnni_sparse.h``) over the VNNI columns of a
quantized weight (:func:`tda.models.quant.vnni_columns`): every block type of the embedded file and
Q4_0, the threshold rule (a scalar or per-input cut-offs) and given index sets (empty, full, odd),
against ``F.linear`` on gguf's de-quantised weights of the masked activations in float64 (the
activations held as 23-bit integers per group: within fp32 rounding of each group's largest value);
the columns' byte order; the engine's paths taking it (TEAL's threshold linear, ``input_sparse``);
non-finite rows and bad arguments. A CPU or build without VNNI skips the kernel tests."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tda.engine import quant_kernels
from tda.models import quant

gguf = pytest.importorskip("gguf")
sys.path.insert(0, str(Path(__file__).parent))
from test_quant_blocks import _blocks  # noqa: E402

_ops = quant_kernels.quant_ops()
needs_vnni = pytest.mark.skipif(
    _ops is None or not hasattr(_ops, "vnni_input_sparse") or not _ops.vnni_gemv_ready(),
    reason="no AVX512-VNNI input-sparse kernel on this CPU or build")
TYPES = ["Q8_0", "Q5_0", "Q4_0", "Q4_K", "Q6_K"]


def _weight(qtype: str, d_out: int, n_blocks: int, seed: int, compact: bool = True):
    bw, ref = _blocks(qtype, d_out, n_blocks, seed=seed)
    qw = bw.unpack()
    qwt = dataclasses.replace(qw.input_major(compact=compact), vq=quant.vnni_columns(qw))
    return qwt, ref


def _check(got: torch.Tensor, x: torch.Tensor, keep: torch.Tensor, ref: torch.Tensor, bias=None, group: int = 16) -> None:
    """``got`` within fp32 rounding of the masked product: each input held to 2^-22 of its group's
    largest |x| (the limbs), plus fp32 sums."""
    xm = (x * keep).double()
    want = F.linear(xm, ref.double(), None if bias is None else bias.double())
    top = xm.abs().view(*xm.shape[:-1], -1, group).amax(-1, keepdim=True).expand(*xm.shape[:-1], -1, group)
    bound = xm.abs() @ ref.double().abs().T + 4.0 * top.reshape(xm.shape) @ ref.double().abs().T
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert bool(((got.double() - want).abs() <= 1e-6 * bound + 1e-30).all())


def test_vnni_columns_byte_order():
    g = torch.Generator().manual_seed(0)
    for qtype, n, d in (("Q8_0", 128, 64), ("Q8_0", 1024, 64), ("Q4_K", 256, 256), ("Q6_K", 64, 256)):
        q = torch.randint(0, 16, (n, d), generator=g, dtype=torch.int8) if qtype == "Q4_K" else \
            torch.randint(-32, 32, (n, d), generator=g, dtype=torch.int8)
        group = 16 if qtype == "Q6_K" else 32
        qw = quant.QuantWeight(q, torch.ones(n, d // group), torch.zeros(n, d // group) if qtype == "Q4_K" else None, qtype)
        vq = quant.vnni_columns(qw)
        u = q.to(torch.int16) + quant.VNNI_OFFSET[qtype]
        ob = 128 if qtype == "Q4_K" else 64
        block_major = n // ob > d // group
        assert vq.shape == ((n // ob, d, 64) if block_major else (d, n // ob, 64)) and vq.dtype == torch.uint8
        for i, b, p in ((0, 0, 0), (d - 1, n // ob - 1, 63), (5, 0, 21), (3, n // ob - 1, 46)):
            out = b * ob + 16 * ((p % 16) // 4) + 4 * (p // 16) + p % 4
            byte = int(vq[b, i, p] if block_major else vq[i, b, p])
            if ob == 64:
                assert byte == int(u[out, i])
            else:
                assert byte & 15 == int(u[out, i]) and byte >> 4 == int(u[out + 64, i])
    assert quant.vnni_columns(quant.QuantWeight(torch.zeros(96, 32, dtype=torch.int8), torch.ones(96, 1), None,
                                                "Q8_0")) is None  # outputs not whole blocks of 64


@needs_vnni
@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("compact", [True, False])
@pytest.mark.parametrize("d_out,n_blocks", [(128, 1), (256, 3), (1280, 1)])  # the last: block-major
def test_threshold_rule_equals_masked_linear(qtype, compact, d_out, n_blocks):
    per = 256 if qtype in ("Q4_K", "Q6_K") else 32
    n_blocks = n_blocks if per == 256 else n_blocks * 5
    qwt, ref = _weight(qtype, d_out, n_blocks, seed=d_out + n_blocks, compact=compact)
    d_in = ref.shape[1]
    g = torch.Generator().manual_seed(d_in)
    bias = torch.randn(d_out, generator=g)
    for x in (torch.randn(d_in, generator=g),
              torch.randn(d_in, generator=g) * torch.exp2(torch.randint(-30, 31, (d_in,), generator=g).float())):
        x[::7] = 0.0  # exact zeros are never active
        for t in (0.0, float(x.abs().median()), float(x.abs().max()) * 2):  # all, half, none
            count = torch.zeros(1, dtype=torch.long)
            got = quant_kernels.vnni_input_sparse(_ops, x, qwt, bias, t=t, count=count)
            keep = (x != 0) & (x.abs() >= t)
            _check(got, x, keep, ref, bias, qwt.group)
            assert int(count) == int(keep.sum())
        tvec = torch.rand(d_in, generator=g) * float(x.abs().max())  # per-input cut-offs
        got = quant_kernels.vnni_input_sparse(_ops, x, qwt, None, tvec=tvec)
        _check(got, x, (x != 0) & (x.abs() >= tvec), ref, group=qwt.group)


@needs_vnni
@pytest.mark.parametrize("qtype", TYPES)
def test_index_sets_equal_masked_linear(qtype):
    per = 256 if qtype in ("Q4_K", "Q6_K") else 32
    qwt, ref = _weight(qtype, 256, 2 if per == 256 else 9, seed=3)
    d_in = ref.shape[1]
    x = torch.randn(d_in, generator=torch.Generator().manual_seed(1))
    for idx in (torch.arange(0), torch.arange(d_in), torch.tensor([0, 1, 2, 5, d_in - 1]), torch.arange(3, d_in, 3)):
        keep = torch.zeros(d_in, dtype=torch.bool)
        keep[idx] = True
        got = quant_kernels.vnni_input_sparse(_ops, x, qwt, None, idx=idx)
        _check(got, x, keep, ref, group=qwt.group)
        # the public entry point takes the same kernel for one row
        _check(quant_kernels.input_sparse(x, qwt, idx), x, keep, ref, group=qwt.group)
    with pytest.raises(ValueError, match="ascending"):
        quant_kernels.vnni_input_sparse(_ops, x, qwt, None, idx=torch.tensor([4, 2]))


@needs_vnni
def test_non_finite_rows_and_other_shapes_fall_back():
    qwt, ref = _weight("Q8_0", 128, 4, seed=5)
    x = torch.randn(128)
    x[3] = float("inf")
    assert quant_kernels.vnni_input_sparse(_ops, x, qwt, None, t=0.0) is None  # the caller takes the old kernel
    x[3] = float("nan")  # never above a cut-off (as the input-major kernel has it), so not active ...
    keep = torch.ones(128, dtype=torch.bool)
    keep[3] = False
    _check(quant_kernels.vnni_input_sparse(_ops, x, qwt, None, t=0.0), torch.nan_to_num(x), keep, ref, group=qwt.group)
    assert quant_kernels.vnni_input_sparse(_ops, x, qwt, None, idx=torch.arange(128)) is None  # ... unless named
    assert quant_kernels.vnni_input_sparse(_ops, torch.randn(2, 128), qwt, None, t=0.0) is None  # two rows
    assert quant_kernels.vnni_input_sparse(_ops, torch.randn(128), dataclasses.replace(qwt, vq=None), None) is None
    with pytest.raises(ValueError, match="bits"):
        _ops.vnni_input_sparse(torch.randn(128), qwt.vq, 6, 0, 32, qwt.st, None, None, None, None, None, 0.0, None, None)
    with pytest.raises(ValueError, match="vq must be"):
        _ops.vnni_input_sparse(torch.randn(128), qwt.vq[:, :1].contiguous(), 8, 128, 32, qwt.st, None, None, None,
                               None, None, 0.0, None, None)


@needs_vnni
def test_engine_threshold_linear_takes_the_columns(monkeypatch):
    from tda.engine.layouts import quant_input_major
    from tda.engine.tokenwise import quant_threshold_linear
    from tda.models.quant import QuantLinear

    bw, ref = _blocks("Q4_K", 256, 2, seed=11)
    monkeypatch.delenv("TDA_VNNI_SPARSE", raising=False)
    assert quant_input_major(QuantLinear(bw)).vq is None  # opt-in
    monkeypatch.setenv("TDA_VNNI_SPARSE", "1")
    mod = QuantLinear(bw)
    qwt = quant_input_major(mod)
    assert qwt.vq is not None and qwt.nbytes > dataclasses.replace(qwt, vq=None).nbytes  # counted
    x = torch.randn(1, 512, generator=torch.Generator().manual_seed(2))
    cut = float(x.abs().median())
    calls = []
    real = quant_kernels.vnni_input_sparse
    monkeypatch.setattr(quant_kernels, "vnni_input_sparse", lambda *a, **k: calls.append(1) or real(*a, **k))
    fn = quant_threshold_linear(qwt, None, cut, lambda v: F.linear(v, ref))
    _check(fn(x), x, (x.abs() >= cut) & (x != 0), ref)
    assert calls
