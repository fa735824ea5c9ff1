"""Decode steps of quantized weights on AMX-INT8 tiles (``csrc/amx_gemv.h``), every block type: against
``F.linear`` on gguf's de-quantised weights in float64 (activations held as 23-bit integers per
group: the error stays within fp32 rounding of the group's largest value), activations of a
wide dynamic range, non-finite activations (the blocks' own GEMV gives the IEEE result), bias and
shapes; which weights get the layout (opt-in: ``TDA_AMX_GEMV=1``). Skipped where the CPU or the build has no AMX-INT8."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tda.engine import quant_kernels

gguf = pytest.importorskip("gguf")
sys.path.insert(0, str(Path(__file__).parent))
from test_quant_blocks import _blocks  # noqa: E402

_ops = quant_kernels.quant_ops()
needs_amx = pytest.mark.skipif(_ops is None or not hasattr(_ops, "amx_gemv_ready") or not _ops.amx_gemv_ready(),
                               reason="no AMX-INT8 decode on this CPU or build")


def _gemv(bw, x, bias=None):
    parts = _ops.amx_gemv_pack(bw.blocks, bw.qtype)
    mt = parts[2] if len(parts) > 2 else None
    return _ops.amx_gemv(x, parts[0], parts[1], mt, bw.blocks, bw.qtype, bias)


@needs_amx
@pytest.mark.parametrize("qtype", quant_kernels.AMX_GEMV_TYPES)
@pytest.mark.parametrize("d_out,inputs", [(16, 256), (48, 512), (256, 1280)])
def test_amx_gemv_equals_linear_on_dequantised_weights(qtype, d_out, inputs):
    per = 256 if qtype in ("Q4_K", "Q6_K") else 32
    bw, ref = _blocks(qtype, d_out, inputs // per, seed=d_out + inputs)
    g = torch.Generator().manual_seed(d_out)
    for x in (torch.randn(1, bw.shape[1], generator=g),
              torch.randn(1, bw.shape[1], generator=g) * torch.exp2(torch.randint(-30, 31, (1, bw.shape[1]), generator=g).float()),
              torch.zeros(1, bw.shape[1])):
        got = _gemv(bw, x)
        want = F.linear(x.double(), ref.double())
        bound = x.double().abs() @ ref.double().abs().T
        assert got.dtype == torch.float32 and got.shape == want.shape
        assert bool(((got.double() - want).abs() <= 1e-6 * bound + 1e-30).all())


@needs_amx
def test_amx_gemv_bias_shapes_and_non_finite_inputs():
    bw, ref = _blocks("Q5_0", 32, 2, seed=3)
    bias = torch.randn(32)
    x = torch.randn(1, 1, 64)
    got = _gemv(bw, x, bias)
    assert got.shape == (1, 1, 32)
    assert torch.allclose(got.double(), F.linear(x.double(), ref.double(), bias.double()), rtol=1e-5, atol=1e-5)
    for bad in (float("inf"), float("nan")):
        xb = x.clone()
        xb[0, 0, 5] = bad
        assert torch.equal(_gemv(bw, xb, bias).isnan(), _ops.quant_blocks_linear(xb, bw.blocks, "Q5_0", bias).isnan())
    with pytest.raises(ValueError):
        _ops.amx_gemv(torch.randn(2, 64), *_ops.amx_gemv_pack(bw.blocks, "Q5_0"), None, bw.blocks, "Q5_0", None)
    k4, _ = _blocks("Q4_K", 16, 1, seed=5)
    with pytest.raises(ValueError, match="minimums"):  # Q4_K without its minimums
        _ops.amx_gemv(torch.randn(1, 256), *_ops.amx_gemv_pack(k4.blocks, "Q4_K")[:2], None, k4.blocks, "Q4_K", None)


@needs_amx
def test_which_weights_get_the_layout(monkeypatch):
    big, _ = _blocks("Q5_0", 1024, 20, seed=1)  # 1024 x 640: a Gemma q_proj
    monkeypatch.delenv("TDA_AMX_GEMV", raising=False)
    assert quant_kernels.amx_layout(big) is None  # opt-in
    monkeypatch.setenv("TDA_AMX_GEMV", "1")
    owner = torch.nn.Linear(1, 1)
    first = quant_kernels.amx_layout(big, owner=owner)
    assert first is not None and quant_kernels.amx_layout(big, owner=owner) is first  # made once per module
    assert quant_kernels.amx_layout(_blocks("Q5_0", 256, 20, seed=2)[0]) is None  # below the size threshold
    assert quant_kernels.amx_layout(_blocks("Q4_K", 1024, 3, seed=3)[0]) is not None
    assert quant_kernels.amx_layout(_blocks("Q6_K", 1000, 3, seed=3)[0]) is None  # rows not whole tiles of 16
    assert quant_kernels.amx_layout(_blocks("Q8_0", 1024, 20, seed=4)[0]) is not None
