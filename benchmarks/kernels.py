"""Dense vs sparse linear kernels (tda.engine.kernels) at Gemma 3 270M and Llama-1B shapes.

For every weight shape and active fraction (10%, 20%, ..., 90%) this times, interleaved round
by round (so machine noise hits all of them alike):

* ``dense``   -- the project's fast dense linear: oneDNN ``mkldnn._linear_pointwise`` on
  ``W[d_out, d_in]`` (fp32 CPU), the baseline the ratios are against;
* ``F.linear`` -- plain PyTorch;
* ``dense_t`` -- the dense product from the transposed ``W_t`` (``SparseLinear(layout="in")``),
  the one copy an input-sparse layer holds;
* ``dense_cpp`` -- the C++ row-major GEMV (``kernels.dense``), the engine's dense decode step;
  ``r_eng`` is the paired ratio against the faster of ``dense_cpp`` and ``dense_t``;
* ``cpp`` / ``torch`` -- the sparse kernel through each backend (``auto`` picks ``cpp`` on CPU).

Kinds: ``in`` = input-sparse (down projection in TT/CATS, every linear in TEAL), ``out`` =
output-sparse (CATS up projection). ``ratio`` is the median over rounds of the paired ratio
``dense / sparse(auto)``; ``ceiling`` is the bytes ratio (``d_in / k`` for ``in``, ``d_out / k``
for ``out``). Cache modes: ``cold`` rotates through enough weight copies (>= 8x the L3 size) and
16 random active sets that every call streams its weights from DRAM, as in real decoding;
``hot`` reuses one weight (L3-resident when it fits), as a micro-benchmark would.

Rounds in which any call was preempted by another process are dropped (``_time_rounds``): on
a shared 2-core machine one busy neighbour turns every 2-thread call into a ~10 ms wait.

Usage: ``PYTHONPATH=. python benchmarks/kernels.py [--threads 2] [--rounds 40] [--bf16]``.
Results: ``benchmarks/results/kernels.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tda.engine import kernels as K

SHAPES = {  # model: {projection: (d_out, d_in)}
    "gemma-3-270m": {"up": (2048, 640), "down": (640, 2048)},
    "llama-1b": {"up": (5632, 2048), "down": (2048, 5632)},
}
CASES = [("down", "in"), ("up", "in"), ("up", "out")]
FRACTIONS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
OUT = Path(__file__).resolve().parent / "results" / "kernels.json"


def _l3_bytes() -> int:
    try:
        for p in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
            if (p / "level").read_text().strip() == "3":
                s = (p / "size").read_text().strip().upper()
                mult = {"K": 1 << 10, "M": 1 << 20}.get(s[-1], 1)
                return int(s.rstrip("KM")) * mult
    except (OSError, ValueError):
        pass
    return 32 << 20


def _load() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


def machine_info(threads: int) -> dict:
    info = K.backend_info()
    return {
        "torch": torch.__version__, "python": platform.python_version(),
        "threads": threads, "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "processor": _cpu_name(), "l3_bytes": _l3_bytes(), "kernel_backend": info["backend"],
        "kernel_flags": info["flags"], "kernel_build_seconds": info["build_seconds"],
        "mkldnn": K._mkldnn_ok(), "cpp_max_rows": K.CPP_MAX_ROWS,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


class _RunDelay:
    """Total time this process's threads spent waiting for a CPU (``/proc/self/task/*/
    schedstat``, ns). A call during which it grows was preempted by another process."""

    def __init__(self):
        self.fds: dict[str, int] = {}

    def __call__(self) -> int | None:
        try:
            tids = os.listdir("/proc/self/task")
            if tids != list(self.fds):
                self.close()
                self.fds = {t: os.open(f"/proc/self/task/{t}/schedstat", os.O_RDONLY)
                            for t in tids}
            return sum(int(os.pread(fd, 128, 0).split()[1]) for fd in self.fds.values())
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = {}


def _time_rounds(fns: dict, rounds: int, gate: bool, max_s: float = 30.0,
                 max_wait_us: float = 50.0) -> tuple[dict[str, list[float]], dict]:
    """Interleaved timing: each round calls every fn once (fn(i) picks its own data).

    With ``gate`` (and Linux schedstat), a round is kept only when none of its calls was
    preempted -- no thread of this process waited more than ``max_wait_us`` for a CPU -- so a
    busy neighbour on a shared machine (which turns a 2-thread call into a ~10 ms scheduler
    wait) does not leak into the numbers. After ``max_s`` seconds the preempted rounds are used
    too (flagged "contended" in the result).
    """
    counter = itertools.count()
    for f in fns.values():  # warm-up (and first-call dispatch)
        f(next(counter))
    delay = _RunDelay()
    gate = gate and delay() is not None
    kept: dict[str, list[float]] = {k: [] for k in fns}
    spare: dict[str, list[float]] = {k: [] for k in fns}
    stats = {"rounds_kept": 0, "rounds_dropped": 0, "contended": False, "gated": gate}
    start = time.perf_counter()
    first = next(iter(fns))
    while len(kept[first]) < rounds:
        times, clean = {}, True
        for k, f in fns.items():
            i = next(counter)
            d0 = delay() if gate else 0
            t0 = time.perf_counter()
            f(i)
            times[k] = time.perf_counter() - t0
            if gate and delay() - d0 > max_wait_us * 1e3:
                clean = False
        stats["rounds_kept" if clean else "rounds_dropped"] += 1
        for k in fns:
            (kept if clean else spare)[k].append(times[k])
        if not clean and time.perf_counter() - start > max_s:
            stats["contended"] = True
            for k in fns:
                kept[k].extend(spare[k])
                spare[k].clear()
    delay.close()
    return kept, stats


def bench_case(d_out: int, d_in: int, kind: str, dtype: torch.dtype, fractions, rounds: int,
               mode: str, batch: int, l3: int, gate: bool = True, max_wait: float = 60.0,
               seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    nbytes = d_out * d_in * torch.finfo(dtype).bits // 8
    ncopy = 1 if mode == "hot" else max(2, -(-8 * l3 // nbytes))
    ws = [(torch.randn(d_out, d_in, generator=g) / d_in**0.5).to(dtype) for _ in range(ncopy)]
    lins = [K.SparseLinear.from_linear(w, layout=kind) for w in ws]
    wts = [lin.weight if kind == "in" else w.t().contiguous() for lin, w in zip(lins, ws)]
    x = torch.randn(batch, d_in, generator=g).to(dtype)
    op = torch.ops.mkldnn._linear_pointwise
    fast = dtype == torch.float32 and K._mkldnn_ok()
    n_sparse = d_in if kind == "in" else d_out
    rows = []
    for frac in fractions:
        k = max(1, round(frac * n_sparse))
        sets = [torch.randperm(n_sparse, generator=g)[:k].sort().values for _ in range(16)]
        if kind == "in":

            def sparse(i, be, sets=sets):  # entries of x outside the active set are ignored
                return lins[i % ncopy].input_sparse(x, sets[i % 16], backend=be)
        else:

            def sparse(i, be, sets=sets):
                return lins[i % ncopy].output_sparse(x, sets[i % 16], backend=be)

        fns = {}
        if fast:
            fns["dense"] = lambda i: op(x, ws[i % ncopy], None, "none", [], "")
        fns["F.linear"] = lambda i: F.linear(x, ws[i % ncopy])
        fns["dense_t"] = lambda i: K.input_dense(x, wts[i % ncopy])
        fns["dense_cpp"] = lambda i: K.dense(x, ws[i % ncopy])  # the engine's decode-step dense
        fns["sparse"] = lambda i: sparse(i, None)
        if K.backend() == "cpp":
            fns["cpp"] = lambda i: sparse(i, "cpp")
        fns["torch"] = lambda i: sparse(i, "torch")
        load0 = _load()
        ts, stats = _time_rounds(fns, rounds, gate, max_s=max_wait)
        base = "dense" if fast else "F.linear"
        ratios = [a / b for a, b in zip(ts[base], ts["sparse"])]
        row = {
            "d_out": d_out, "d_in": d_in, "kind": kind, "dtype": str(dtype).split(".")[-1],
            "mode": mode, "batch": batch, "active": frac, "k": k, "baseline": base,
            "ms": {name: statistics.median(v) * 1e3 for name, v in ts.items()},
            "ratio": statistics.median(ratios), "ceiling": n_sparse / k,
            "ratio_vs_flinear": statistics.median(
                a / b for a, b in zip(ts["F.linear"], ts["sparse"])),
            # against the engine's own dense decode step (the faster of its C++ GEMVs per round)
            "ratio_vs_engine_dense": statistics.median(
                min(a, b) / c for a, b, c in zip(ts["dense_cpp"], ts["dense_t"], ts["sparse"])),
            "loadavg": [load0, _load()], "rounds": len(ts[base]), **stats,
        }
        rows.append(row)
        print(_fmt(row), flush=True)
    return rows


HEADER = (f"{'case':<26}{'act':>5}{'dense':>9}{'F.lin':>9}{'dense_t':>9}{'d_cpp':>9}{'sparse':>9}"
          f"{'cpp':>9}{'torch':>9}{'ratio':>7}{'r_eng':>7}{'ceil':>6}")


def _fmt(r: dict) -> str:
    ms = r["ms"]

    def c(name):
        return f"{ms[name]:9.3f}" if name in ms else f"{'-':>9}"

    case = f"{r['d_out']}x{r['d_in']} {r['kind']} {r['dtype']} {r['mode']}"
    return (f"{case:<26}{r['active']:5.0%}{c('dense')}{c('F.linear')}{c('dense_t')}{c('dense_cpp')}"
            f"{c('sparse')}{c('cpp')}{c('torch')}{r['ratio']:7.2f}{r['ratio_vs_engine_dense']:7.2f}"
            f"{r['ceiling']:6.1f}"
            f"{'  CONTENDED' if r.get('contended') else ''}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--modes", default="cold,hot")
    ap.add_argument("--models", default=",".join(SHAPES))
    ap.add_argument("--cases", default=",".join(f"{p}:{k}" for p, k in CASES),
                    help="projection:kind pairs, kind in/out")
    ap.add_argument("--bf16", action="store_true", help="also bf16 (fewer fractions/rounds)")
    ap.add_argument("--no-gate", action="store_true",
                    help="keep rounds measured while other processes were busy")
    ap.add_argument("--max-wait", type=float, default=60.0,
                    help="seconds per cell to wait for clean rounds before using preempted ones")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    K.build()
    info = machine_info(args.threads)
    print(json.dumps(info))
    l3 = info["l3_bytes"]
    if _load() > 0.5:
        print(f"WARNING: load average {_load():.2f} before starting; timings will be noisy")
    runs = [(torch.float32, FRACTIONS, args.rounds)]
    if args.bf16:
        runs.append((torch.bfloat16, [0.1, 0.3, 0.5, 0.7, 0.9], max(5, args.rounds // 4)))
    rows = []

    def save(done: bool) -> None:
        result = {"machine": info, "rounds": args.rounds, "batch": args.batch, "complete": done,
                  "seconds": time.perf_counter() - t0, "rows": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, args.out)

    print("times in ms (medians); ratio = dense / sparse(auto), paired per round; "
          "ceil = bytes ratio")
    for mode in args.modes.split(","):
        for dtype, fracs, rounds in runs:
            print(HEADER)
            for model in args.models.split(","):
                for proj, kind in (c.split(":") for c in args.cases.split(",")):
                    d_out, d_in = SHAPES[model][proj]
                    for r in bench_case(d_out, d_in, kind, dtype, fracs, rounds, mode,
                                        args.batch, l3, gate=not args.no_gate,
                                        max_wait=args.max_wait):
                        rows.append({"model": model, "proj": proj, **r})
                    save(False)  # partial results survive an interrupted run
    save(True)
    print(f"wrote {args.out}")
    return json.loads(args.out.read_text())


if __name__ == "__main__":
    main()
