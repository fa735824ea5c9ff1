"""Sparse decode kernels on a CUDA GPU: the Triton kernels against cuBLAS and the torch fallback.

For every weight shape (Gemma 3 270M, Llama-1B, Llama-2-7B FFN projections), batch and active
fraction this times, interleaved round by round with CUDA events:

* ``dense``     -- cuBLAS ``F.linear`` on ``W[d_out, d_in]``, the baseline of every ratio;
* ``triton``    -- the Triton kernel (:mod:`tda.engine.triton_kernels`): input-sparse over an index
  list (kind ``in``) or output-sparse (kind ``out``);
* ``triton_thr``-- (kind ``in``) the fused threshold kernel, with a threshold that leaves about the
  same union of active inputs (selection included in the time);
* ``torch``     -- the torch fallback of :mod:`tda.engine.kernels` (``embedding_bag`` /
  ``index_select``), what CUDA ran before the Triton kernels.

Each timed sample is ``--iters`` calls (weights rotated through enough copies to overflow the L2
cache, 16 random active sets), replayed from a CUDA graph when ``--graphs`` (the default: launch
overhead removed, the kernels' own time) and also issued eagerly from Python (what a decode step
without graphs pays). The torch path is timed eagerly only (it copies its bag offsets from the
host, which a capture does not allow); a kernel whose capture fails likewise. Before timing, each
sparse output is checked against the masked dense product (``max_err`` in the row).

Usage (a CUDA machine): ``python benchmarks/kernels_cuda.py --dtype bf16 --batches 1,4,8``;
``benchmarks/gpu.sh`` runs it with the method table. Result: ``benchmarks/results/kernels-cuda.json``.
``--device cpu`` (with ``TRITON_INTERPRET=1``, tiny ``--models tiny``) only checks the script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tda.engine import kernels as K
from tda.engine import triton_backend

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import CASES, SHAPES  # noqa: E402  (benchmarks/kernels.py: the CPU table)

SHAPES = {**SHAPES, "llama-2-7b": {"up": (11008, 4096), "down": (4096, 11008)},
          "tiny": {"up": (96, 40), "down": (40, 96)}}  # tiny: a check of the script only
FRACTIONS = [0.1, 0.3, 0.5, 0.7, 0.9]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OUT = Path(__file__).resolve().parent / "results" / "kernels-cuda.json"
TOL = {torch.float32: 1e-3, torch.bfloat16: 5e-2, torch.float16: 1e-2}


class _Timer:
    """Wall time of ``fn()`` on the device: CUDA events, or perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn) -> float:
        if self.cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            return a.elapsed_time(b) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def _graphed(calls, device: torch.device):
    """One CUDA graph replaying ``calls`` (a list of no-argument callables), or None."""
    if device.type != "cuda":
        return None
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):  # warm-up outside the capture (allocator, autotune, lazy init)
            for c in calls[:3]:
                c()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for c in calls:
                c()
        torch.cuda.synchronize()
        return g.replay
    except Exception as e:  # noqa: BLE001 - e.g. a host sync inside the torch path
        torch.cuda.synchronize()
        print(f"  (no CUDA graph: {type(e).__name__}: {str(e)[:120]})", flush=True)
        return None


def _threshold_for(x: torch.Tensor, frac: float) -> float:
    """A threshold whose union of active inputs over the rows of ``x`` is about ``frac``."""
    p = 1.0 - (1.0 - frac) ** (1.0 / x.shape[0])  # per-row keep probability
    return float(torch.quantile(x.float().abs().flatten(), 1.0 - p))


def _calls(tk, kind, x, ws, wts, sets, frac):
    """``{name: fn(i)}`` (call ``i`` uses weight copy ``i`` and active set ``i``, cyclically), and
    the first sparse call's output with its masked dense reference."""
    n, m = len(ws), len(sets)
    fns = {"dense": lambda i: F.linear(x, ws[i % n])}
    if kind == "in":
        xms = [torch.zeros_like(x).index_copy_(1, s, x.index_select(1, s)) for s in sets]
        t = _threshold_for(x, frac)
        fns["triton"] = lambda i: tk.input_sparse(xms[i % m], sets[i % m], wts[i % n], None)
        fns["triton_thr"] = lambda i: tk.input_sparse_threshold(x, t, wts[i % n], None)
        fns["torch"] = lambda i: K._torch_in_sparse(xms[i % m], sets[i % m], wts[i % n], None)
        ref = xms[0].double() @ ws[0].double().T
    else:
        fns["triton"] = lambda i: tk.output_sparse(x, sets[i % m], ws[i % n], None)
        fns["torch"] = lambda i: x @ ws[i % n].index_select(0, sets[i % m]).t()
        ref = (x.double() @ ws[0].double().T)[:, sets[0]]
    return fns, fns["triton"](0), ref


def bench_case(d_out, d_in, kind, dtype, batch, fractions, rounds, iters, graphs, device,
               seed=0) -> list[dict]:
    tk = triton_backend.kernels()
    g = torch.Generator().manual_seed(seed)
    elt = torch.finfo(dtype).bits // 8
    nbytes = d_out * d_in * elt
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 << 20) \
        if device.type == "cuda" else 1 << 20
    ncopy = max(2, -(-4 * l2 // nbytes))
    ws = [(torch.randn(d_out, d_in, generator=g) / d_in**0.5).to(dtype).to(device)
          for _ in range(ncopy)]
    wts = [w.t().contiguous() for w in ws]
    x = torch.randn(batch, d_in, generator=g).to(dtype).to(device)
    n_sparse = d_in if kind == "in" else d_out
    timer = _Timer(device)
    rows = []
    for frac in fractions:
        k = max(1, round(frac * n_sparse))
        sets = [torch.randperm(n_sparse, generator=g)[:k].sort().values.to(device)
                for _ in range(16)]
        fns, chk, ref = _calls(tk, kind, x, ws, wts, sets, frac)
        max_err = float((chk.double() - ref).abs().max())
        if max_err > TOL[dtype] * max(1.0, float(ref.abs().max())):
            raise SystemExit(f"kernels_cuda: triton {kind} {d_out}x{d_in} {dtype} batch {batch}: "
                             f"max error {max_err:.3g} against the masked dense product")
        samples: dict[str, list[float]] = {}
        runners = {}
        for name, f in fns.items():
            calls = [lambda f=f, i=i: f(i) for i in range(iters)]
            runners[f"{name}"] = lambda calls=calls: [c() for c in calls]
            replay = _graphed(calls, device) if graphs and name != "torch" else None
            if replay is not None:
                runners[f"{name}@graph"] = replay
        for r in list(runners.values()):  # warm-up
            r()
        for _ in range(rounds):
            for name, r in runners.items():
                samples.setdefault(name, []).append(timer(r) / iters)
        ms = {name: statistics.median(v) * 1e3 for name, v in samples.items()}
        base = "dense@graph" if "dense@graph" in ms else "dense"
        sfx = "@graph" if base.endswith("@graph") else ""
        sparse_bytes = k * (d_out if kind == "in" else d_in) * elt
        row = {"d_out": d_out, "d_in": d_in, "kind": kind, "dtype": str(dtype).split(".")[-1],
               "batch": batch, "active": frac, "k": k, "ms": ms, "max_err": max_err,
               "baseline": base, "ceiling": n_sparse / k,
               "ratio": ms[base] / ms[f"triton{sfx}"],
               "ratio_eager": ms["dense"] / ms["triton"],
               "ratio_torch_eager": ms["dense"] / ms["torch"],
               "dense_GBps": nbytes / ms[base] / 1e6,
               "triton_GBps": sparse_bytes / ms[f"triton{sfx}"] / 1e6}
        if f"triton_thr{sfx}" in ms:
            row["ratio_thr"] = ms[base] / ms[f"triton_thr{sfx}"]
        rows.append(row)
        print(_fmt(row), flush=True)
    return rows


def _fmt(r: dict) -> str:
    ms = r["ms"]
    sfx = "@graph" if r["baseline"].endswith("@graph") else ""

    def c(name):
        v = ms.get(name + sfx, ms.get(name))
        return f"{v * 1e3:10.1f}" if v is not None else f"{'-':>10}"

    case = f"{r['d_out']}x{r['d_in']} {r['kind']} {r['dtype']} b{r['batch']}"
    return (f"{case:<28}{r['active']:5.0%}{c('dense')}{c('triton')}{c('triton_thr')}{c('torch')}"
            f"{r['ratio']:7.2f}{r['ceiling']:6.1f}{r['triton_GBps']:10.0f}{r['dense_GBps']:10.0f}")


HEADER = (f"{'case':<28}{'act':>5}{'dense us':>10}{'triton':>10}{'thr':>10}{'torch':>10}"
          f"{'ratio':>7}{'ceil':>6}{'tri GB/s':>10}{'dns GB/s':>10}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="gemma-3-270m,llama-1b,llama-2-7b")
    ap.add_argument("--cases", default=",".join(f"{p}:{k}" for p, k in CASES),
                    help="projection:kind pairs, kind in/out")
    ap.add_argument("--dtype", default="bf16", help="comma list of fp32, bf16, fp16")
    ap.add_argument("--batches", default="1,4,8", help=f"comma list, 1..{triton_backend.MAX_ROWS}")
    ap.add_argument("--fractions", default=",".join(map(str, FRACTIONS)))
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--iters", type=int, default=50, help="calls per timed sample")
    ap.add_argument("--no-graphs", action="store_true", help="eager launches only")
    ap.add_argument("--device", default="cuda", help="cuda (cpu: a check of the script only)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("kernels_cuda: no CUDA GPU (torch.cuda.is_available() is False)")
    info = triton_backend.info()
    if not info["available"]:
        raise SystemExit(f"kernels_cuda: the Triton kernels are unavailable: {info['error']}")
    if device.type == "cpu" and not info["interpreted"]:
        raise SystemExit("kernels_cuda: --device cpu needs TRITON_INTERPRET=1")
    t0 = time.perf_counter()
    machine = {"torch": torch.__version__, "python": platform.python_version(),
               "triton": info["version"], "device": str(device),
               "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               "cuda": torch.version.cuda, "graphs": not args.no_graphs}
    print(json.dumps(machine))
    rows: list[dict] = []

    def save(done: bool) -> None:
        result = {"machine": machine, "rounds": args.rounds, "iters": args.iters,
                  "complete": done, "seconds": time.perf_counter() - t0, "rows": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, args.out)

    print("times in microseconds per call (medians; CUDA-graph replays where they apply, torch "
          "eager); ratio = dense / triton; ceil = bytes ratio")
    for dname in args.dtype.split(","):
        dtype = DTYPES[dname]
        for batch in (int(b) for b in args.batches.split(",")):
            print(HEADER)
            for model in args.models.split(","):
                for proj, kind in (c.split(":") for c in args.cases.split(",")):
                    d_out, d_in = SHAPES[model][proj]
                    for r in bench_case(d_out, d_in, kind, dtype, batch,
                                        [float(f) for f in args.fractions.split(",")],
                                        args.rounds, args.iters, not args.no_graphs, device):
                        rows.append({"model": model, "proj": proj, **r})
                    save(False)
    save(True)
    print(f"wrote {args.out}")
    return json.loads(args.out.read_text())


if __name__ == "__main__":
    main()
