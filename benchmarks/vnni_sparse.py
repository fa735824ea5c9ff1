"""Input-sparse decode rows over the quantized format, three ways, side by side in one process:

- ``dense``: every linear's dense decode GEMV (the integer tiles where the CPU has VNNI);
- ``input-major``: TEAL's threshold linear on the fp32 input-major kernel (the default);
- ``vnni``: the same on the VNNI columns (``csrc/vnni_sparse.h``, opt-in ``TDA_VNNI_SPARSE=1``).

The linears of a llama-1b-shaped stack (per layer q and o 2048 x 2048, k and v 256 x 2048, gate and
up 5632 x 2048, down 2048 x 5632; random weights quantized to ``--qtype``), one call of each per
"step" on one row of x, the cut-off at the ``--density`` quantile of |x|. ``--layers 22`` holds
several hundred MB, so the weights come cold from memory as in a decode step; ``--layers 1`` fits in
cache and shows the kernels' arithmetic. Rounds alternate the three; medians and each sparse way's
ratio to dense are printed (and written to ``--out`` as JSON when given). Run on a quiet machine.

Usage:
    python benchmarks/vnni_sparse.py --qtype Q4_K --layers 22 --density 0.5 --rounds 5
    python benchmarks/vnni_sparse.py --qtype Q8_0 --layers 1 --density 1.0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tda.engine import quant_kernels  # noqa: E402
from tda.engine.layouts import quant_input_major  # noqa: E402
from tda.engine.tokenwise import quant_threshold_linear  # noqa: E402
from tda.models import quant  # noqa: E402
from tda.models.quant import QuantLinear  # noqa: E402

SHAPES = [(2048, 2048), (256, 2048), (256, 2048), (2048, 2048), (5632, 2048), (5632, 2048), (2048, 5632)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qtype", default="Q4_K", choices=["Q8_0", "Q4_0", "Q4_K"])
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--density", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="steps timed per way and round")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if not 0.0 < a.density <= 1.0:
        ap.error("--density must be in (0, 1]")
    ops = quant_kernels.quant_ops()
    if ops is None or not hasattr(ops, "vnni_input_sparse") or not ops.vnni_gemv_ready():
        sys.exit("vnni_sparse.py: needs the C++ kernels and a CPU with AVX512-VNNI")
    torch.manual_seed(0)
    mods = [QuantLinear(quant.to_blocks(quant.quantize(torch.randn(n, d) * 0.02, a.qtype)))
            for n, d in SHAPES * a.layers]
    xs = {d: torch.randn(d) for d in {d for _, d in SHAPES}}
    cuts = {d: (0.0 if a.density >= 1.0 else float(x.abs().quantile(1 - a.density))) for d, x in xs.items()}
    dense = [quant_kernels.linear_fn(m) for m in mods]
    ways = {"dense": dense, "input-major": [], "vnni": []}
    for m, f in zip(mods, dense):
        qw = m.qweight
        qwt = dataclasses.replace(quant_input_major(m), vq=None)
        ways["input-major"].append(quant_threshold_linear(qwt, None, cuts[m.in_features], f))
        ways["vnni"].append(quant_threshold_linear(dataclasses.replace(qwt, vq=quant.vnni_columns(qw)), None,
                                                   cuts[m.in_features], f))
    times: dict[str, list[float]] = {k: [] for k in ways}
    for r in range(a.rounds):
        order = list(ways)[r % 3:] + list(ways)[:r % 3]
        for k in order:
            for m, f in zip(mods, ways[k]):  # warm-up step
                f(xs[m.in_features])
            t0 = time.perf_counter()
            for _ in range(a.steps):
                for m, f in zip(mods, ways[k]):
                    f(xs[m.in_features])
            times[k].append((time.perf_counter() - t0) / a.steps * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {k: [d / t for d, t in zip(times["dense"], times[k])] for k in ("input-major", "vnni")}
    out = {"qtype": a.qtype, "layers": a.layers, "density": a.density, "rounds": a.rounds,
           "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "env": {k: v for k, v in os.environ.items() if k.startswith("TDA_")},
           "ms_per_step": med, "speedup_vs_dense": {k: statistics.median(v) for k, v in ratios.items()},
           "ms_per_step_rounds": times}
    print(f"{a.qtype}, {a.layers} layer(s) of llama-1b linears, density {a.density}, {a.rounds} rounds "
          f"(medians; ratio = dense ÷ way, per round):")
    for k in ways:
        extra = "" if k == "dense" else f"  {out['speedup_vs_dense'][k]:.2f}x vs dense " \
                                        f"[{min(ratios[k]):.2f}, {max(ratios[k]):.2f}]"
        print(f"  {k:12s} {med[k]:8.2f} ms/step{extra}")
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
