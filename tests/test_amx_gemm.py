"""The AMX prefill of quantized weights (``csrc/amx_gemm.h``): every block type and the int8 group
repack against ``F.linear`` on the de-quantised weights in float64, for row counts around the
16-row tiles and weight heights around the 32-row passes, with activations of a wide dynamic range
(the three bf16 limbs must hold every fp32 bit); the switches that turn it off. Skipped where the
CPU or the build has no AMX (the prefill then runs dequantised tiles through ``at::mm``, which
tests/test_quant_blocks.py and tests/test_quant.py cover)."""

from __future__ import annotations

import os
import subprocess
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
needs_amx = pytest.mark.skipif(_ops is None or not hasattr(_ops, "amx_prefill_ready") or not _ops.amx_prefill_ready(),
                               reason="no AMX prefill on this CPU or build")


@pytest.fixture(autouse=True)
def _every_weight_on_amx(monkeypatch):
    """The kernels leave small weights and 16-value groups on dequantised tiles; these tests want every
    weight on AMX."""
    monkeypatch.setenv("TDA_AMX_MIN_WEIGHTS", "0")


def _wide(rows: int, d_in: int, seed: int) -> torch.Tensor:
    """Activations whose magnitudes span 2^-30..2^30 inside every group, signs mixed."""
    g = torch.Generator().manual_seed(seed)
    mag = torch.exp2(torch.randint(-30, 31, (rows, d_in), generator=g).float())
    return torch.randn(rows, d_in, generator=g) * mag


def _check(got: torch.Tensor, x: torch.Tensor, w: torch.Tensor, idx: torch.Tensor | None = None) -> None:
    """Within fp32 summation rounding of the exact product (float64 on the de-quantised weights)."""
    if idx is not None:
        w = w[idx]
    want = F.linear(x.double(), w.double())
    bound = (x.double().abs() @ w.double().abs().T)  # per output: sum |x| |w|
    err = (got.double() - want).abs()
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert bool((err <= 1e-6 * bound + 1e-30).all()), float((err / (bound + 1e-30)).max())


@needs_amx
@pytest.mark.parametrize("qtype", list(quant.BLOCKS))
@pytest.mark.parametrize("rows", [9, 16, 17, 40])
def test_blocks_prefill_on_amx(qtype, rows):
    for d_out, nb in ((37, 2), (16, 1), (70, 3)):  # 32-row passes with 5 left, one half, 6 left
        bw, ref = _blocks(qtype, d_out, nb, seed=rows + d_out)
        for x in (torch.randn(rows, bw.shape[1], generator=torch.Generator().manual_seed(rows)),
                  _wide(rows, bw.shape[1], seed=rows)):
            _check(quant_kernels.blocks_linear(x, bw, backend="cpp"), x, ref)


@needs_amx
@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_K"])
def test_repack_prefill_and_output_rows_on_amx(qtype):
    g = torch.Generator().manual_seed(1)
    qw = quant.quantize(torch.randn(45, 512, generator=g), qtype)
    w = qw.dequantize()
    idx = torch.tensor([44, 0, 7, 31, 32, 5, 19, 40, 2, 33, 11, 12, 13, 14, 15, 16, 17, 18])  # any order, > 16
    for rows in (9, 33):
        x = _wide(rows, 512, seed=rows)
        _check(quant_kernels.linear(x, qw, backend="cpp"), x, w)
        _check(quant_kernels.rows(x, qw, idx, backend="cpp"), x, w, idx)


@needs_amx
def test_amx_rows_equal_each_other_whatever_the_batch():
    """A row of x gives the same bits alone in a tile or with 39 others (batched scoring relies on it)."""
    bw, _ = _blocks("Q5_0", 70, 2, seed=5)
    x = torch.randn(40, bw.shape[1], generator=torch.Generator().manual_seed(2))
    full = quant_kernels.blocks_linear(x, bw, backend="cpp")
    part = quant_kernels.blocks_linear(x[20:37].contiguous(), bw, backend="cpp")
    assert torch.equal(full[20:37], part)


@needs_amx
def test_infinite_activations_give_the_ieee_result():
    """inf - inf in the limbs would make NaN: an x with an infinity takes the other path."""
    bw, ref = _blocks("Q8_0", 70, 2, seed=11)
    x = torch.randn(20, bw.shape[1], generator=torch.Generator().manual_seed(3))
    x[4, 7] = float("inf")
    got = quant_kernels.blocks_linear(x, bw, backend="cpp")
    want = F.linear(x.double(), ref.double())
    assert torch.equal(torch.isinf(got), torch.isinf(want)) and torch.equal(torch.isnan(got), torch.isnan(want))
    fin = torch.isfinite(want)
    assert torch.allclose(got.double()[fin], want[fin], rtol=1e-5, atol=1e-5)


@needs_amx
def test_small_weights_stay_on_dequantised_tiles(monkeypatch):
    """Below TDA_AMX_MIN_WEIGHTS the other path runs: the same values, other summation order."""
    bw, ref = _blocks("Q8_0", 70, 2, seed=9)
    x = _wide(33, bw.shape[1], seed=4)
    amx = quant_kernels.blocks_linear(x, bw, backend="cpp")
    monkeypatch.setenv("TDA_AMX_MIN_WEIGHTS", str(70 * 64 + 1))
    tiles = quant_kernels.blocks_linear(x, bw, backend="cpp")
    _check(tiles, x, ref)
    assert not torch.equal(amx, tiles)  # the two paths round differently: the switch took effect


@pytest.mark.skipif(_ops is None or not hasattr(_ops, "amx_prefill_ready"), reason="C++ kernels unavailable")
def test_tda_no_amx_turns_it_off():
    code = "from tda.engine import quant_kernels as q; print(q.quant_ops().amx_prefill_ready())"
    env = dict(os.environ, TDA_NO_AMX="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
