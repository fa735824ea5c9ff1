"""Triton kernels (tda.engine.triton_kernels): exactness against the masked dense product.

Without a GPU the kernels run on CPU tensors through Triton's interpreter: this module sets
``TRITON_INTERPRET=1`` before the kernels are first imported (Triton reads it when a kernel is
decorated, and again while it runs, so it is also set around every test here). With a CUDA GPU
(and ``TRITON_INTERPRET`` unset) the same tests run the compiled kernels on the GPU.

Sizes are small and odd (the interpreter runs Python per program instance). The reference and the
union rule are those of ``tests/test_kernels.py``: a batch shares the union of its rows' active
sets, each row zeroed outside its own set, and every row must match its own masked product and
its own single-row run.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ON_GPU = torch.cuda.is_available() and not os.environ.get("TRITON_INTERPRET")
DEVICE = "cuda" if ON_GPU else "cpu"
_INTERPRET = {} if ON_GPU else {"TRITON_INTERPRET": "1"}


def _import_kernels():
    """Import triton and the kernels in the mode this module runs them in (Triton reads
    TRITON_INTERPRET when it decorates a kernel -- its own library functions at ``import triton``)."""
    saved = {k: os.environ.get(k) for k in _INTERPRET}
    os.environ.update(_INTERPRET)
    try:
        triton = pytest.importorskip("triton")
        mod = importlib.import_module("tda.engine.triton_kernels")
        if mod.INTERPRETED == ON_GPU:  # imported earlier in the other mode: decorate again
            mod = importlib.reload(mod)
        # triton's own library functions were decorated at `import triton`, perhaps in the other
        # mode by an earlier import in this process: then only a fresh process can run them
        lib_interpreted = type(triton.language.standard.zeros).__name__ == "InterpretedFunction"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return mod, lib_interpreted == (not ON_GPU)


TK, IN_PROCESS = _import_kernels()

import tda.engine  # noqa: E402
from tda.engine import kernels as K  # noqa: E402
from tda.engine import triton_backend  # noqa: E402
from tests.test_kernels import DTYPES, _close, _problem, _ref  # noqa: E402

D_OUT, D_IN = 45, 67
REPO = Path(__file__).resolve().parent.parent

if not IN_PROCESS:

    def test_in_a_fresh_process():
        """Triton was imported in the other mode before this module: run it in a fresh process."""
        env = {**os.environ, **_INTERPRET, "PYTHONPATH": str(REPO)}
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            __file__], env=env, cwd=REPO, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.fixture(autouse=True)
def _interpreter_on(monkeypatch, request):
    """Triton's interpreter also checks the variable while kernels run; the dispatch layer must
    see this module's kernels (not a cached 'unavailable' from another test)."""
    if not IN_PROCESS and request.node.name != "test_in_a_fresh_process":
        pytest.skip("triton was imported in the other mode first (test_in_a_fresh_process)")
    for k, v in _INTERPRET.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(triton_backend._State, "tried", True)
    monkeypatch.setattr(triton_backend._State, "mod", TK)
    monkeypatch.setattr(triton_backend._State, "error", None)


def _rows_alone(fn, x: torch.Tensor, mask: torch.Tensor):
    """``fn(x_row, mask_row)`` for every row alone, stacked: what a batch row must equal."""
    return torch.cat([fn(x[r:r + 1], mask[r:r + 1]) for r in range(x.shape[0])])


def _tight(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> bool:
    """Batch row against its own single-row run: same inputs, at most one output rounding apart."""
    tol = max(2 * torch.finfo(dtype).eps, 1e-6)
    return torch.allclose(a.double().cpu(), b.double().cpu(), rtol=tol, atol=tol)


def test_kernels_run_in_the_expected_mode():
    assert TK.INTERPRETED is (not ON_GPU)
    assert triton_backend.info()["available"] and triton_backend.info()["interpreted"] is (not ON_GPU)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("frac", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("bias", [False, True])
def test_input_sparse_index_list(dtype, rows, frac, bias):
    """WINA / predictors: the product over an index list (the union), rows masked by the caller."""
    w, x, mask, xm, idx, b = _problem(D_OUT, D_IN, (rows,), frac, dtype, DEVICE, seed=rows,
                                      bias=bias)
    w_t = w.t().contiguous()
    y = TK.input_sparse(xm, idx, w_t, b)
    assert y.shape == (rows, D_OUT) and y.dtype == dtype and y.device == w.device
    assert _close(y, _ref(xm, w, b), dtype)
    if frac == 0.0:  # empty active set: only the bias (or zeros)
        assert idx.numel() == 0
        assert _close(y, (b.double() if bias else torch.zeros(D_OUT)).expand(rows, D_OUT), dtype)

    def alone(xr, mr):
        return TK.input_sparse(xr, mr[0].nonzero().squeeze(1), w_t, b)

    assert _close(y, _rows_alone(alone, xm, mask), dtype)  # the union rule
    via = K.input_sparse(xm, idx, w_t, b, backend="triton")  # the dispatch layer, forced
    assert torch.equal(via, y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("t", [0.0, 0.7, 100.0])
@pytest.mark.parametrize("bias", [False, True])
def test_input_sparse_threshold(dtype, rows, t, bias):
    """TEAL / TT: |x_i| >= t per row (fp32 comparison), union of rows' weight rows, one kernel."""
    w, x, *_, b = _problem(D_OUT, D_IN, (rows,), 1.0, dtype, DEVICE, seed=10 + rows, bias=bias)
    w_t = w.t().contiguous()
    mask = x.float().abs() >= t
    xm = x.masked_fill(~mask, 0)
    count = torch.zeros(1, dtype=torch.long, device=DEVICE)
    y = TK.input_sparse_threshold(x, t, w_t, b, count)
    assert y.shape == (rows, D_OUT) and y.dtype == dtype
    assert _close(y, _ref(xm, w, b), dtype)
    assert int(count) == int(mask.any(0).sum())  # the union's size
    assert _tight(y, _rows_alone(lambda xr, _: TK.input_sparse_threshold(xr, t, w_t, b), x, mask),
                  dtype)
    if t == 100.0:  # nothing active: bias or zeros
        assert int(count) == 0 and _close(y, _ref(xm, w, b), dtype)
    lin = K.SparseLinear.from_linear(w, b, layout="in")
    assert torch.equal(lin.input_sparse_threshold(x, t, backend="triton"), y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 3])
def test_input_sparse_threshold_per_input(dtype, rows):
    """CHESS / per-entry cut-offs: one threshold per input, as an fp32 tensor."""
    w, x, *_ = _problem(D_OUT, D_IN, (rows,), 1.0, dtype, DEVICE, seed=20 + rows)
    tvec = torch.rand(D_IN, generator=torch.Generator().manual_seed(5)).mul(1.5).to(DEVICE)
    mask = x.float().abs() >= tvec
    count = torch.zeros(1, dtype=torch.long, device=DEVICE)
    y = K.input_sparse_threshold(x, tvec, w.t().contiguous(), backend="triton", count=count)
    assert _close(y, _ref(x.masked_fill(~mask, 0), w), dtype)
    assert int(count) == int(mask.any(0).sum())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 3])
def test_input_sparse_topk(dtype, rows):
    """WINA: per row the k largest |x_i|·scale_i, the union's weight rows, rows masked."""
    w, x, *_, b = _problem(D_OUT, D_IN, (rows,), 1.0, dtype, DEVICE, seed=30 + rows, bias=True)
    scale = (torch.rand(D_IN, generator=torch.Generator().manual_seed(3)) + 0.5).to(DEVICE)
    count = torch.zeros(1, dtype=torch.long, device=DEVICE)
    y = K.input_sparse_topk(x, scale, 20, w.t().contiguous(), b, backend="triton", count=count)
    top = torch.topk(x.float().abs() * scale, 20, dim=1).indices
    keep = torch.zeros(x.shape, dtype=torch.bool, device=DEVICE).scatter_(1, top, True)
    assert _close(y, _ref(x.masked_fill(~keep, 0), w, b), dtype)
    assert int(count) == int(keep.any(0).sum())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("frac", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("bias", [False, True])
def test_output_sparse(dtype, rows, frac, bias):
    """CATS up: the active output rows of W[d_out, d_in]; every row gets the whole union."""
    w, x, *_, b = _problem(D_OUT, D_IN, (rows,), 1.0, dtype, DEVICE, seed=40 + rows, bias=bias)
    g = torch.Generator().manual_seed(4)
    idx = (torch.rand(D_OUT, generator=g) < frac).nonzero().squeeze(1)
    if frac >= 1.0:
        idx = torch.randperm(D_OUT, generator=g)  # any order
    idx = idx.to(DEVICE)
    y = TK.output_sparse(x, idx, w, b)
    assert y.shape == (rows, idx.numel()) and y.dtype == dtype
    assert _close(y, _ref(x, w, b)[:, idx.cpu()], dtype)
    assert torch.equal(K.output_sparse(x, idx, w, b, backend="triton"), y)


def test_output_sparse_repeated_indices():
    w, x, *_ = _problem(D_OUT, D_IN, (2,), 1.0, torch.float32, DEVICE, seed=50)
    idx = torch.tensor([3, 0, 44, 7, 7], device=DEVICE)
    y = K.output_sparse(x, idx, w, backend="triton")
    assert _close(y, _ref(x, w)[:, idx.cpu()], torch.float32) and torch.equal(y[:, 3], y[:, 4])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 5])
def test_split_reduction_and_column_tiles(dtype, rows):
    """Several splits of the inputs (fp32 partials summed after) and several column tiles."""
    w, x, mask, xm, idx, b = _problem(150, 300, (rows,), 0.4, dtype, DEVICE, seed=60, bias=True)
    w_t = w.t().contiguous()
    for splits in (1, 3):
        y = TK.input_sparse(xm, idx, w_t, b, splits=splits)
        assert _close(y, _ref(xm, w, b), dtype)
        y = TK.input_sparse_threshold(x, 0.8, w_t, b, splits=splits)
        assert _close(y, _ref(x.masked_fill(x.float().abs() < 0.8, 0), w, b), dtype)
    count = torch.zeros(1, dtype=torch.long, device=DEVICE)
    TK.input_sparse_threshold(x, 0.8, w_t, None, count, splits=3)  # each split counts its part
    assert int(count) == int((x.float().abs() >= 0.8).any(0).sum())


def test_dispatch_rules():
    w, x, _, xm, idx, _ = _problem(D_OUT, D_IN, (2,), 0.5, torch.float32, DEVICE, seed=70)
    w_t = w.t().contiguous()
    assert triton_backend.use("triton", w_t, x)
    assert triton_backend.use(None, w_t, x) is ON_GPU  # auto: CUDA only
    assert not triton_backend.use("torch", w_t, x) and not triton_backend.use("cpp", w_t, x)
    assert not triton_backend.use(None, w_t, x.requires_grad_(True))  # autograd: torch path
    with pytest.raises(ValueError, match="1 to 8 rows"):
        K.input_sparse(torch.zeros(9, D_IN, device=DEVICE), idx, w_t, backend="triton")
    with pytest.raises(TypeError, match="fp32/bf16/fp16"):
        K.input_sparse(xm.double(), idx, w_t.double(), backend="triton")
    assert _close(K.input_dense(xm, w_t, backend="triton"), _ref(xm, w), torch.float32)  # cuBLAS


def test_cpu_tensors_without_the_interpreter_fail_loud(monkeypatch):
    monkeypatch.setattr(TK, "INTERPRETED", False)
    w_t, x = torch.randn(D_IN, D_OUT), torch.randn(1, D_IN)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        K.input_sparse_threshold(x, 0.5, w_t, backend="triton")
    assert not triton_backend.use(None, w_t, x)  # auto never sends CPU tensors to Triton


def test_without_triton_everything_falls_back(monkeypatch):
    """No triton installed: auto keeps the torch/C++ paths, a forced 'triton' fails loud."""
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
    monkeypatch.delitem(sys.modules, "tda.engine.triton_kernels")
    monkeypatch.delattr(tda.engine, "triton_kernels")
    monkeypatch.setattr(triton_backend._State, "tried", False)
    monkeypatch.setattr(triton_backend._State, "mod", None)
    assert triton_backend.kernels() is None and "triton" in triton_backend.info()["error"]
    w, x, _, xm, idx, _ = _problem(D_OUT, D_IN, (2,), 0.5, torch.float32, seed=71)
    assert _close(K.input_sparse(xm, idx, w.t().contiguous()), _ref(xm, w), torch.float32)
    with pytest.raises(RuntimeError, match="triton backend is unavailable"):
        K.input_sparse(xm, idx, w.t().contiguous(), backend="triton")


def test_kernels_backend_torch_disables_triton(monkeypatch):
    monkeypatch.setenv("TDA_KERNELS_BACKEND", "torch")
    monkeypatch.setattr(triton_backend._State, "tried", False)
    monkeypatch.setattr(triton_backend._State, "mod", None)
    assert triton_backend.kernels() is None
    assert triton_backend.info() == {"available": False, "version": None, "interpreted": False,
                                     "error": "disabled by TDA_KERNELS_BACKEND=torch",
                                     "max_rows": triton_backend.MAX_ROWS}


def test_kernels_compile_for_a_gpu():
    """The interpreter accepts code that Triton's GPU compiler rejects: build every kernel for
    an H100/H200 (sm_90) at batch 8 and an A100 (sm_80) at batch 1, in a process without the
    interpreter (no GPU needed: Triton's wheel ships the compiler and ptxas)."""
    import triton.backends

    if "nvidia" not in triton.backends.backends:
        pytest.skip("this triton has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(REPO), TRITON_DEFAULT_FP_FUSION="1")
    code = ("import json; from tda.engine import triton_kernels as T; "
            "print(json.dumps([T.compile_for(90, 'bf16', 8), T.compile_for(80, 'fp16', 1, 640)]))")
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for sizes in json.loads(r.stdout.strip().splitlines()[-1]):
        assert set(sizes) == {"input_sparse", "input_sparse_threshold",
                              "input_sparse_threshold_per_input", "input_sparse_topk",
                              "output_sparse"}
        assert all(n > 1000 for n in sizes.values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_gpu_script_stops_at_once_without_a_gpu(tmp_path):
    """benchmarks/gpu.sh: one line on stderr, exit 2, nothing run or written."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TDA_GPU_SH_DEVICE", None)
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh")], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0]


@pytest.mark.parametrize("method, kernels", [
    ("teal", {"input_sparse_threshold"}), ("wina", {"input_sparse_topk"}),
    ("tt", {"input_sparse_threshold"}), ("cats", {"input_sparse", "output_sparse"})])
def test_methods_run_through_the_triton_kernels(monkeypatch, method, kernels):
    """The CUDA dispatch (simulated on CPU without a GPU: the C++ kernels off, Triton taking every
    call): a token-wise method, unchanged, generates the same tokens for a batch as the torch path."""
    from tda.engine.generate import generate
    from tda.models.load import load_model

    lm = load_model("tiny-llama", device=DEVICE)  # a private copy: TEAL/WINA change W_up's layout
    prompts = ["the quick brown fox jumps over", "a house by the river"]
    kw = dict(density=0.5, max_new_tokens=3, min_new_tokens=3)
    with monkeypatch.context() as m:  # the torch path
        m.setattr(K, "_use_cpp", lambda *a: False)
        m.setattr(K, "cpp_ops", lambda: None)
        m.setattr(triton_backend, "use", lambda *a: False)
        ref = generate(lm, prompts, method, **kw).token_ids
    calls = []
    for name in ("input_sparse", "input_sparse_threshold", "input_sparse_topk", "output_sparse"):
        fn = getattr(TK, name)
        monkeypatch.setattr(TK, name, lambda *a, _fn=fn, _n=name, **k: calls.append(_n) or _fn(*a, **k))
    if not ON_GPU:  # the CUDA dispatch, on CPU tensors
        monkeypatch.setattr(K, "_use_cpp", lambda *a: False)
        monkeypatch.setattr(K, "cpp_ops", lambda: None)
        monkeypatch.setattr(triton_backend, "use", lambda backend, w, x2: backend in (None, "auto"))
    assert generate(lm, prompts, method, **kw).token_ids == ref
    assert set(calls) == kernels
