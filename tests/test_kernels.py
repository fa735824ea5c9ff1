"""Sparse linear kernels (tda.engine.kernels): exactness against the masked dense product.

Reference: the masked dense product ``x_masked @ W.T`` computed in fp64 from the same (already
rounded) fp32/bf16/fp16 inputs. Batches use the UNION of the rows' active sets as ``idx`` and
zero each row's own non-active entries (``x_masked``), so every row must match exactly its own
masked product. Both backends are checked ("cpp" is skipped when the C++ build is unavailable);
CUDA runs the torch path when a GPU is present.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tda.engine import kernels as K

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (rtol, atol) for outputs of size ~1: fp32 accumulates in fp32; bf16/fp16 round the output.
TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (1.6e-2, 2e-2), torch.float16: (2e-3, 3e-3)}
REPO = Path(__file__).resolve().parent.parent


def _cpp_available() -> bool:
    return K.build()


BACKENDS = [
    "torch",
    pytest.param("cpp", marks=pytest.mark.skipif("not _cpp_available()",
                                                  reason="C++ kernels unavailable")),
]
# CUDA cases join the parametrization only when a GPU is present (see test_cuda_torch_path).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _close(y: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> bool:
    rtol, atol = TOL[dtype]
    return torch.allclose(y.double().cpu(), ref.double().cpu(), rtol=rtol, atol=atol)


def _problem(d_out, d_in, shape, frac, dtype, device="cpu", seed=0, bias=False):
    """Weight, input, per-row masks with ~frac active, union idx, masked input, bias."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(d_out, d_in, generator=g) / d_in**0.5).to(dtype)
    x = torch.randn(*shape, d_in, generator=g).to(dtype)
    mask = torch.rand(*shape, d_in, generator=g) < frac
    if frac >= 1.0:
        mask[:] = True
    xm = x.masked_fill(~mask, 0)
    idx = mask.reshape(-1, d_in).any(0).nonzero().squeeze(1)
    b = torch.randn(d_out, generator=g).to(dtype) if bias else None
    return [t.to(device) if t is not None else None for t in (w, x, mask, xm, idx, b)]


def _ref(xm, w, b=None):
    y = xm.double() @ w.double().T
    return y if b is None else y + b.double()


SHAPES = [(), (1,), (4,), (2, 3)]  # leading dims of x: 1-D, batch 1, small batch, 3-D


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("frac", [0.0, 0.2, 0.5, 1.0])
def test_input_sparse_matches_masked_dense(device, backend, dtype, shape, frac):
    if device == "cuda" and backend == "cpp":
        pytest.skip("the C++ kernels are CPU-only")
    w, x, _, xm, idx, b = _problem(45, 83, shape, frac, dtype, device, bias=True)  # odd sizes
    w_t = w.t().contiguous()
    y = K.input_sparse(xm, idx, w_t, b, backend=backend)
    assert y.shape == (*shape, 45) and y.dtype == dtype and y.device == w.device
    assert _close(y, _ref(xm, w, b), dtype)
    lin = K.SparseLinear.from_linear(w, b, layout="in")
    assert _close(lin.input_sparse(xm, idx, backend=backend), _ref(xm, w, b), dtype)
    if frac == 0.0:  # empty active set: only the bias remains
        assert idx.numel() == 0 and _close(y, b.double().expand(*shape, 45), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("t", [0.0, 0.6, 1.2, 100.0])
def test_input_sparse_threshold_matches_masked_dense(device, backend, dtype, shape, t):
    if device == "cuda" and backend == "cpp":
        pytest.skip("the C++ kernels are CPU-only")
    w, x, *_ = _problem(40, 96, shape, 1.0, dtype, device, seed=1)
    xm = x.masked_fill(x.float().abs() < t, 0)  # each row keeps its entries with |x| >= t
    lin = K.SparseLinear.from_linear(w, layout="in")
    y = lin.input_sparse_threshold(x, t, backend=backend)
    assert y.shape == (*shape, 40) and _close(y, _ref(xm, w), dtype)
    assert torch.equal(K.mask_inactive(x, t), xm)
    union = (x.float().abs() >= t).reshape(-1, 96).any(0).nonzero().squeeze(1)
    assert torch.equal(K.active_indices(x, t), union)
    if t == 100.0:  # nothing active
        assert K.active_indices(x, t).numel() == 0 and not y.any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1,), (3,)])
def test_input_sparse_threshold_per_input(backend, shape):
    w, x, *_ = _problem(32, 64, shape, 1.0, torch.float32, seed=2)
    tvec = torch.rand(64) * 1.5
    xm = x.masked_fill(x.abs() < tvec, 0)
    y = K.input_sparse_threshold(x, tvec, w.t().contiguous(), backend=backend)
    assert _close(y, _ref(xm, w), torch.float32)
    assert torch.equal(K.active_indices(x, tvec), (xm != 0).reshape(-1, 64).any(0).nonzero()[:, 0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("frac", [0.0, 0.3, 1.0])
def test_output_sparse_matches_dense_rows(device, backend, dtype, shape, frac):
    if device == "cuda" and backend == "cpp":
        pytest.skip("the C++ kernels are CPU-only")
    w, x, *_, b = _problem(73, 59, shape, 1.0, dtype, device, seed=3, bias=True)  # odd sizes
    g = torch.Generator().manual_seed(4)
    idx = (torch.rand(73, generator=g) < frac).nonzero().squeeze(1).to(device)
    if frac >= 1.0:
        idx = torch.randperm(73, generator=g).to(device)  # any order is fine
    y = K.output_sparse(x, idx, w, b, backend=backend)
    ref = _ref(x, w, b)[..., idx.cpu()]
    assert y.shape == (*shape, idx.numel()) and y.dtype == dtype
    assert _close(y, ref, dtype)
    lin = K.SparseLinear.from_linear(w, b, layout="out")
    assert _close(lin.output_sparse(x, idx, backend=backend), ref, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_dense_both_layouts(device, backend, dtype, shape):
    if device == "cuda" and backend == "cpp":
        pytest.skip("the C++ kernels are CPU-only")
    w, x, *_, b = _problem(24, 40, shape, 1.0, dtype, device, seed=5, bias=True)
    ref = _ref(x, w, b)
    lin_in = K.SparseLinear.from_linear(w, b, layout="in")
    assert _close(lin_in.dense(x, backend=backend), ref, dtype)
    assert _close(K.input_dense(x, lin_in.weight, b, backend=backend), ref, dtype)
    lin_out = K.SparseLinear.from_linear(w, b, layout="out")
    assert _close(lin_out.dense(x, backend=backend), ref, dtype)
    assert _close(K.dense(x, w, b, backend=backend), ref, dtype)


@pytest.mark.skipif("not _cpp_available()", reason="C++ kernels unavailable")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 2, 5, K.CPP_MAX_ROWS])
@pytest.mark.parametrize("frac", [0.1, 0.5, 0.9])
def test_cpp_agrees_with_torch_at_model_sizes(dtype, rows, frac):
    """Gemma-sized weights (multi-threaded chunks in C++, several embedding bags in torch)."""
    w, x, _, xm, idx, b = _problem(640, 2048, (rows,), frac, dtype, seed=6, bias=True)
    w_t = w.t().contiguous()
    rtol, atol = TOL[dtype]
    a = K.input_sparse(xm, idx, w_t, b, backend="cpp")
    t = K.input_sparse(xm, idx, w_t, b, backend="torch")
    assert torch.allclose(a.float(), t.float(), rtol=rtol, atol=atol)
    assert _close(a, _ref(xm, w, b), dtype)
    tt = K.input_sparse_threshold(x, 0.8, w_t, b, backend="torch")
    ct = K.input_sparse_threshold(x, 0.8, w_t, b, backend="cpp")
    assert torch.allclose(ct.float(), tt.float(), rtol=rtol, atol=atol)
    wo = w_t  # [2048, 640] contiguous, used as an up projection (output-sparse)
    jdx = idx
    a = K.output_sparse(x[:, :640].contiguous(), jdx, wo, backend="cpp")
    t = K.output_sparse(x[:, :640].contiguous(), jdx, wo, backend="torch")
    assert torch.allclose(a.float(), t.float(), rtol=rtol, atol=atol)
    d = K.input_dense(x, w_t, b, backend="cpp")
    assert _close(d, _ref(x, w, b), dtype)
    r = K.dense(x, w, b, backend="cpp")  # the row-major GEMV (fast dense path of decode steps)
    assert _close(r, _ref(x, w, b), dtype)
    assert torch.allclose(r.float(), K.dense(x, w, b, backend="torch").float(), rtol=rtol, atol=atol)


@pytest.mark.skipif("not _cpp_available()", reason="C++ kernels unavailable")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d_out,d_in", [(1, 1), (3, 7), (5, 17), (37, 45), (33, 100), (66, 131), (130, 640)])
def test_batch1_gemvs_at_ragged_sizes(dtype, d_out, d_in):
    """The batch-1 GEMVs (AVX-512 / AVX512-BF16 intrinsics where the build has them: four
    accumulators per row, masked tails of 16/32 lanes, bf16 input rows in interleaved pairs with a
    pair-order accumulator) against the fp64 masked product at sizes that leave every tail and an
    odd row count; an output-sparse subset (gathered rows, four at a time and then one) equals the
    dense rows (in order, one at a time) bit for bit."""
    w, x, _, xm, idx, b = _problem(d_out, d_in, (1,), 0.5, dtype, seed=d_out * 1000 + d_in, bias=True)
    w_t = w.t().contiguous()
    assert _close(K.dense(x, w, b, backend="cpp"), _ref(x, w, b), dtype)
    assert _close(K.input_dense(x, w_t, b, backend="cpp"), _ref(x, w, b), dtype)
    if idx.numel():
        assert _close(K.input_sparse(xm, idx, w_t, b, backend="cpp"), _ref(xm, w, b), dtype)
    rows = torch.arange(d_out - 1, -1, -2)  # every other row, in reverse order
    full = K.dense(x, w, b, backend="cpp")
    assert torch.equal(K.output_sparse(x, rows, w, b, backend="cpp"), full[:, rows])


@pytest.mark.skipif("not _cpp_available()", reason="C++ kernels unavailable")
def test_cpp_is_deterministic_and_auto_uses_it():
    w, x, _, xm, idx, _ = _problem(640, 2048, (1,), 0.5, torch.float32, seed=7)
    w_t = w.t().contiguous()
    y0 = K.input_sparse(xm, idx, w_t, backend="cpp")
    for _ in range(3):
        assert torch.equal(K.input_sparse(xm, idx, w_t, backend="cpp"), y0)
    assert K.backend() == "cpp"
    assert torch.equal(K.input_sparse(xm, idx, w_t), y0)  # auto picked the C++ kernel
    info = K.backend_info()
    assert info["backend"] == "cpp" and info["error"] is None and info["library"]


def test_large_batch_uses_gemm_path():
    n = K.CPP_MAX_ROWS + 3
    w, x, _, xm, idx, b = _problem(64, 128, (n,), 0.4, torch.float32, seed=8, bias=True)
    y = K.input_sparse(xm, idx, w.t().contiguous(), b)
    assert _close(y, _ref(xm, w, b), torch.float32)
    jdx = idx[idx < 64]
    y = K.output_sparse(x, jdx, w, b)
    assert _close(y, _ref(x, w, b)[:, jdx], torch.float32)


def test_autograd_inputs_use_torch_path():
    w, x, _, xm, idx, _ = _problem(16, 32, (2,), 0.5, torch.float32, seed=9)
    xm = xm.clone().requires_grad_(True)
    y = K.input_sparse(xm, idx, w.t().contiguous())
    y.sum().backward()
    expect = torch.zeros(2, 32)
    expect[:, idx] = w.sum(0)[idx]
    assert torch.allclose(xm.grad, expect, atol=1e-5)


def test_non_cpu_tensors_never_reach_cpp(monkeypatch):
    w = torch.empty(8, 4, device="meta")
    x2 = torch.empty(1, 4, device="meta")
    assert K._use_cpp(None, w, x2, K.CPP_MAX_ROWS) is False
    assert K._use_cpp("auto", w, x2, K.CPP_MAX_ROWS) is False
    with pytest.raises(ValueError, match="CPU tensors only"):
        K._use_cpp("cpp", w, x2, K.CPP_MAX_ROWS)
    if torch.cuda.is_available():
        wc, xc = torch.randn(8, 4, device="cuda"), torch.randn(1, 4, device="cuda")
        assert K._use_cpp(None, wc, xc, K.CPP_MAX_ROWS) is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_torch_path():
    w, x, _, xm, idx, b = _problem(64, 96, (3,), 0.4, torch.float32, "cuda", seed=11, bias=True)
    lin = K.SparseLinear.from_linear(w, b, layout="in")
    assert _close(lin.input_sparse(xm, idx), _ref(xm, w, b), torch.float32)
    assert _close(lin.input_sparse_threshold(x, 0.5), _ref(mask_ := K.mask_inactive(x, 0.5), w, b),
                  torch.float32) and mask_.is_cuda
    with pytest.raises(ValueError, match="CPU tensors only"):
        lin.input_sparse(xm, idx, backend="cpp")


def test_float64_uses_torch_path():
    w, x, _, xm, idx, _ = _problem(12, 20, (2,), 0.5, torch.float64, seed=10)
    y = K.input_sparse(xm, idx, w.t().contiguous())
    assert torch.allclose(y, _ref(xm, w))
    with pytest.raises(TypeError, match="fp32/bf16/fp16"):
        K.input_sparse(xm, idx, w.t().contiguous(), backend="cpp")


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_fail_loud(backend):
    w = torch.randn(8, 6)
    w_t = w.t().contiguous()
    x = torch.randn(2, 6)
    idx = torch.tensor([0, 3])
    ok = K.input_sparse(x, idx, w_t, backend=backend)
    assert ok.shape == (2, 8)
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 6\]"):
        K.input_sparse(torch.randn(2, 5), idx, w_t, backend=backend)
    with pytest.raises(TypeError, match="dtype"):
        K.input_sparse(x.double(), idx, w_t, backend=backend)
    with pytest.raises(TypeError, match="int64 or int32"):
        K.input_sparse(x, idx.float(), w_t, backend=backend)
    with pytest.raises(TypeError, match="torch.Tensor"):
        K.input_sparse(x, [0, 3], w_t, backend=backend)
    with pytest.raises(ValueError, match="1-D"):
        K.input_sparse(x, idx.view(1, 2), w_t, backend=backend)
    with pytest.raises(ValueError, match="out of range"):
        K.input_sparse(x, torch.tensor([0, 6]), w_t, backend=backend)
    with pytest.raises(ValueError, match="out of range"):
        K.input_sparse(x, torch.tensor([-1]), w_t, backend=backend)
    with pytest.raises(ValueError, match="repeated"):
        K.input_sparse(x, torch.tensor([3, 1, 3]), w_t, backend=backend)
    with pytest.raises(ValueError, match="out of range"):
        K.output_sparse(x, torch.tensor([8]), w, backend=backend)
    with pytest.raises(ValueError, match="contiguous"):
        K.input_sparse(x, idx, w.t(), backend=backend)
    with pytest.raises(ValueError, match="2-D"):
        K.input_sparse(x, idx, w_t[0], backend=backend)
    with pytest.raises(TypeError, match="floating"):
        K.input_sparse(x.long(), idx, w_t.long(), backend=backend)
    with pytest.raises(ValueError, match="bias"):
        K.input_sparse(x, idx, w_t, torch.randn(6), backend=backend)
    with pytest.raises(TypeError, match="bias dtype"):
        K.input_sparse(x, idx, w_t, torch.randn(8).double(), backend=backend)
    with pytest.raises(ValueError, match="non-negative"):
        K.input_sparse_threshold(x, -0.1, w_t, backend=backend)
    with pytest.raises(ValueError, match="non-negative"):
        K.input_sparse_threshold(x, float("nan"), w_t, backend=backend)
    with pytest.raises(TypeError, match="threshold"):
        K.input_sparse_threshold(x, "0.5", w_t, backend=backend)
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        K.input_sparse_threshold(x, torch.ones(5), w_t, backend=backend)
    with pytest.raises(ValueError, match="is on meta"):
        K.input_sparse(torch.empty(2, 6, device="meta"), idx, w_t, backend=backend)
    with pytest.raises(ValueError, match="is on meta"):
        K.input_sparse(x, idx.to("meta"), w_t, backend=backend)


def test_bad_api_use_fails_loud():
    w = torch.randn(8, 6)
    lin_in = K.SparseLinear.from_linear(w, layout="in")
    lin_out = K.SparseLinear.from_linear(w, layout="out")
    x, idx = torch.randn(6), torch.tensor([1])
    with pytest.raises(ValueError, match="needs layout='out'"):
        lin_in.output_sparse(x, idx)
    with pytest.raises(ValueError, match="needs layout='in'"):
        lin_out.input_sparse(x, idx)
    with pytest.raises(ValueError, match="needs layout='in'"):
        lin_out.input_sparse_threshold(x, 0.5)
    with pytest.raises(ValueError, match="layout"):
        K.SparseLinear.from_linear(w, layout="rows")
    with pytest.raises(ValueError, match="2-D"):
        K.SparseLinear.from_linear(w[0])
    with pytest.raises(TypeError, match="nn.Linear"):
        K.SparseLinear.from_linear(w.tolist())
    with pytest.raises(ValueError, match="backend must be one of"):
        K.input_sparse(x, idx, lin_in.weight, backend="fast")
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 6\]"):
        lin_in.dense(torch.randn(3, 8))


def test_from_linear_holds_one_weight():
    lin = torch.nn.Linear(6, 8)
    s_in = K.SparseLinear.from_linear(lin, layout="in")
    assert s_in.weight.shape == (6, 8) and s_in.weight.is_contiguous()
    assert not s_in.weight.requires_grad and torch.equal(s_in.weight, lin.weight.t())
    assert torch.equal(s_in.bias, lin.bias) and (s_in.in_features, s_in.out_features) == (6, 8)
    s_out = K.SparseLinear.from_linear(lin, layout="out")
    assert s_out.weight.data_ptr() == lin.weight.data_ptr()  # shares storage, no copy
    x = torch.randn(3, 6)
    with torch.no_grad():
        ref = lin(x)
    assert torch.allclose(s_in.dense(x), ref, atol=1e-6)
    assert torch.allclose(s_in.input_sparse(x, torch.arange(6)), ref, atol=1e-6)
    assert torch.allclose(s_out.output_sparse(x, torch.arange(8)), ref, atol=1e-6)
    assert "layout='in'" in repr(s_in)


def _run(code: str, env_extra: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **env_extra}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=600)


_PROBE = """
    import torch, warnings
    warnings.simplefilter("always")
    from tda.engine import kernels as K
    w = torch.randn(16, 8); x = torch.randn(8)
    y = K.input_sparse(x, torch.tensor([1, 4]), w.t().contiguous())
    ref = w[:, [1, 4]] @ x[[1, 4]]
    assert torch.allclose(y, ref, atol=1e-5), (y, ref)
    print("BACKEND", K.backend())
"""


def test_backend_forced_torch(tmp_path):
    r = _run(_PROBE, {"TDA_KERNELS_BACKEND": "torch", "TDA_CACHE_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert "BACKEND torch" in r.stdout
    assert not (tmp_path / "kernels").exists()  # nothing was built


def test_failed_build_falls_back_to_torch(tmp_path):
    env = {"CXX": str(tmp_path / "no-such-compiler"), "TDA_CACHE_DIR": str(tmp_path)}
    r = _run(_PROBE, {**env, "TDA_KERNELS_BACKEND": "auto"})
    assert r.returncode == 0, r.stderr
    assert "BACKEND torch" in r.stdout and "C++ build failed" in r.stderr
    r = _run(_PROBE, {**env, "TDA_KERNELS_BACKEND": "cpp"})  # forced: the failure is an error
    assert r.returncode != 0 and "C++ kernels failed to build" in r.stderr


@pytest.mark.slow
@pytest.mark.skipif("not _cpp_available()", reason="C++ kernels unavailable")
def test_concurrent_builds_share_one_cache(tmp_path):
    """Two processes building into an empty cache at once: both get the C++ backend.

    Marked slow (one real compile, ~20-50 s): deselect with ``-m 'not slow'``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TDA_CACHE_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(_PROBE)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "BACKEND cpp" in out, err
    builds = [d for d in (tmp_path / "kernels").iterdir() if d.is_dir()]
    assert len(builds) == 1 and list(builds[0].glob("*.so"))  # one finished build, no leftovers


@pytest.mark.parametrize("backend", BACKENDS)
def test_threshold_kernel_counts_the_union(backend):
    w, x, *_ = _problem(16, 64, (3,), 1.0, torch.float32, seed=11)
    count = torch.zeros(1, dtype=torch.long)
    for t in (0.5, 1.0):
        K.input_sparse_threshold(x, t, w.t().contiguous(), backend=backend, count=count)
    expected = sum(int((x.abs() >= t).any(0).sum()) for t in (0.5, 1.0))
    assert int(count) == expected
    with pytest.raises(ValueError, match="count"):
        K.input_sparse_threshold(x, 0.5, w.t().contiguous(), backend=backend, count=torch.zeros(1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 3])
def test_topk_kernel_matches_masked_dense(backend, dtype, rows):
    """WINA's rule: per row the k largest |x_i|·scale_i; a batch reads the union, rows masked."""
    w, x, *_, b = _problem(24, 96, (rows,), 1.0, dtype, seed=12, bias=True)
    scale = torch.rand(96, generator=torch.Generator().manual_seed(3)) + 0.5
    count = torch.zeros(1, dtype=torch.long)
    y = K.input_sparse_topk(x, scale, 40, w.t().contiguous(), b, backend=backend, count=count)
    top = torch.topk(x.float().abs() * scale, 40, dim=1).indices
    keep = torch.zeros(x.shape, dtype=torch.bool).scatter_(1, top, True)
    assert _close(y, _ref(x.masked_fill(~keep, 0), w, b), dtype)
    assert int(count) == int(keep.any(0).sum())
    with pytest.raises(ValueError, match="k must be"):
        K.input_sparse_topk(x, scale, 0, w.t().contiguous(), backend=backend)
