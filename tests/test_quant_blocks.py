"""Kernels on a GGUF file's own blocks (``csrc/quant_blocks.h``): each block type against
``F.linear`` on gguf's de-quantised weights, odd sizes, batch 1-8 and prefill; the unpacker bit
for bit against the numpy repack; a module on blocks keeps no repack until a caller asks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tda.engine import quant_kernels
from tda.models import quant

gguf = pytest.importorskip("gguf")
sys.path.insert(0, str(Path(__file__).parent))
from test_quant import _random_blocks  # noqa: E402

needs_cpp = pytest.mark.skipif(quant_kernels.quant_ops() is None, reason="C++ kernels unavailable")


def _blocks(qtype: str, d_out: int, n_blocks_per_row: int, seed: int = 0):
    """``(BlockWeight, ref[d_out, d_in] fp32)`` of random valid blocks, ref from gguf's dequantiser."""
    per = quant.BLOCKS[qtype][0]
    raw = _random_blocks(qtype, d_out * n_blocks_per_row, seed).reshape(d_out, -1)
    ref = gguf.dequantize(raw, gguf.GGMLQuantizationType[qtype]).reshape(d_out, per * n_blocks_per_row)
    bw = quant.BlockWeight(torch.from_numpy(raw.copy()), qtype, per * n_blocks_per_row)
    return bw, torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32))


def _close(got: torch.Tensor, x: torch.Tensor, ref: torch.Tensor, bias: torch.Tensor | None) -> None:
    want = F.linear(x.double(), ref.double(), None if bias is None else bias.double())
    tol = 2e-6 * float((x.double().abs() @ ref.double().abs().T).max())  # fp32 summation rounding
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert float((got.double() - want).abs().max()) <= tol


@needs_cpp
@pytest.mark.parametrize("qtype", list(quant.BLOCKS))
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6, 7, 8, 9, 33])
def test_blocks_kernel_equals_linear_on_dequantised_weights(qtype, rows):
    for d_out, nb in ((37, 3), (1, 1), (130, 2)):  # odd row counts, one block per row, chunks over threads
        bw, ref = _blocks(qtype, d_out, nb, seed=rows * 7 + d_out)
        x = torch.randn(rows, bw.shape[1], generator=torch.Generator().manual_seed(rows))
        bias = torch.randn(d_out)
        _close(quant_kernels.blocks_linear(x, bw, bias, backend="cpp"), x, ref, bias)
        _close(quant_kernels.blocks_linear(x, bw, None, backend="torch"), x, ref, None)


@needs_cpp
@pytest.mark.parametrize("qtype", list(quant.BLOCKS))
def test_unpacker_is_bit_exact_to_the_numpy_repack(qtype):
    bw, ref = _blocks(qtype, 21, 2, seed=3)
    want = quant.unpack(bw.blocks.numpy(), qtype, bw.shape)
    ops = quant_kernels.quant_ops()
    parts = ops.quant_blocks_unpack(bw.blocks, qtype, 0, 21)
    assert torch.equal(parts[0], want.q) and torch.equal(parts[1], want.scale)
    assert (len(parts) == 3) == (want.min is not None)
    if want.min is not None:
        assert torch.equal(parts[2], want.min)
    sub = ops.quant_blocks_unpack(bw.blocks, qtype, 5, 9)
    assert torch.equal(sub[0], want.q[5:9])
    assert torch.equal(bw.dequantize().view(torch.int32), ref.view(torch.int32))  # gguf's values, every bit


@needs_cpp
def test_blocks_kernel_takes_any_leading_shape_and_rejects_bad_arguments():
    bw, ref = _blocks("Q5_0", 19, 2)
    ops = quant_kernels.quant_ops()
    x = torch.randn(2, 1, 64)
    y = ops.quant_blocks_linear(x, bw.blocks, "Q5_0", None)
    assert y.shape == (2, 1, 19) and torch.allclose(y, F.linear(x, ref), atol=1e-5)
    with pytest.raises((RuntimeError, ValueError), match="features"):
        ops.quant_blocks_linear(torch.randn(1, 32), bw.blocks, "Q5_0", None)
    with pytest.raises((RuntimeError, ValueError), match="no kernel for block type 'Q2_K'"):
        ops.quant_blocks_linear(torch.randn(1, 64), bw.blocks, "Q2_K", None)
    with pytest.raises((RuntimeError, ValueError), match="not whole Q8_0 blocks"):
        ops.quant_blocks_linear(torch.randn(1, 64), bw.blocks, "Q8_0", None)
    with pytest.raises((RuntimeError, TypeError), match="uint8"):
        ops.quant_blocks_linear(torch.randn(1, 64), bw.blocks.to(torch.int8), "Q5_0", None)
    with pytest.raises((RuntimeError, ValueError), match="out of range"):
        ops.quant_blocks_unpack(bw.blocks, "Q5_0", 0, 20)
    with pytest.raises(ValueError, match="do not hold"):
        quant.BlockWeight(bw.blocks, "Q5_0", 96)


def test_a_module_on_blocks_keeps_no_repack_until_asked():
    bw, ref = _blocks("Q4_K", 24, 2, seed=5)
    mod = quant.QuantLinear(bw)
    assert "q" not in mod._buffers and mod.decode_nbytes == bw.blocks.numel() == bw.file_bytes
    emb = quant.QuantEmbedding(mod)
    idx = torch.tensor([[3, 0, 23]])
    assert torch.equal(emb(idx), ref[idx])  # gathered rows unpacked alone
    fn = quant_kernels.linear_fn(mod)
    x = torch.randn(3, 512)
    _close(fn(x), x, ref, None)
    x20 = torch.randn(20, 512)
    _close(mod(x20), x20, ref, None)  # the module's own forward (a prefill through HF's forward)
    assert "q" not in mod._buffers  # both read the blocks only
    quant._BLOCKS_LINEAR[0], saved = None, quant._BLOCKS_LINEAR[0]
    try:  # without the engine's kernels: tiles unpacked per call, still no repack kept
        _close(mod(x20), x20, ref, None)
        assert "q" not in mod._buffers
    finally:
        quant._BLOCKS_LINEAR[0] = saved
    assert mod.qweight.q.shape == (24, 512) and "q" in mod._buffers  # a layout asked: unpacked once, kept
    assert torch.equal(mod.qweight.dequantize(), ref)
    _close(mod(x), x, ref, None)  # the torch fallback forward on the repack
    perm = torch.tensor([2, 0, 1] + list(range(3, 24)))
    assert torch.equal(bw.permute_rows(perm).dequantize(), ref[perm])


_CHILD = """
import json, sys, torch, numpy as np, gguf
sys.path.insert(0, {tests!r})
from test_quant_blocks import _blocks
from tda.engine import quant_kernels
worst = 0.0
for qtype in ("Q8_0", "Q5_0", "Q4_0", "Q4_K", "Q6_K"):
    for rows in (1, 3, 8, 11):
        bw, ref = _blocks(qtype, 37, 2, seed=rows)
        x = torch.randn(rows, bw.shape[1], generator=torch.Generator().manual_seed(rows))
        got = quant_kernels.blocks_linear(x, bw, None, backend="cpp").double()
        want = torch.nn.functional.linear(x.double(), ref.double())
        tol = 2e-6 * float((x.double().abs() @ ref.double().abs().T).max())
        worst = max(worst, float((got - want).abs().max()) / tol)
print(json.dumps({{"worst": worst}}))
"""


@needs_cpp
@pytest.mark.slow  # builds the kernels a second time (without AVX-512)
@pytest.mark.parametrize("env", [{"TDA_QBLK_BUFFER": "1"}, {"TDA_KERNELS_ISA": "avx2"}])
def test_the_portable_paths_equal_the_dequantised_product(env):
    """The unpack-into-a-buffer path (every build without AVX-512 takes it, with the scalar
    unpackers under TDA_KERNELS_ISA=avx2) gives the same products."""
    child_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent),
                                                                       os.environ.get("PYTHONPATH", "")])}
    code = _CHILD.format(tests=str(Path(__file__).parent))
    out = subprocess.run([sys.executable, "-c", code], env=child_env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["worst"] <= 1.0
