"""Input-sparse decode rows over the quantized format, four ways, side by side in one process:

- ``dense``: every linear's dense decode GEMV (the integer tiles where the CPU has VNNI);
- ``input-major``: TEAL's threshold linear on the fp32 input-major kernel;
- ``vnni``: the same on the VNNI columns (``csrc/vnni_sparse.h``, opt-in ``TDA_VNNI_SPARSE=1``);
- ``tiles``: the same rule on the dense tiles, the inactive inputs zeroed (``vnni_gemv_threshold``:
  what a decode row keeping at least ``quant_kernels.dense_from()`` of its inputs takes).

``--model llama-1b`` (default): the linears of a llama-1b-shaped stack (per layer q and o 2048 x
2048, k and v 256 x 2048, gate and up 5632 x 2048, down 2048 x 5632; random weights quantized to
``--qtype``); ``--model gemma-3-270m``: the embedded model's block linears on the GGUF's own blocks
(``--qtype`` ignored), with the time of each projection per layer too. One call of each per "step"
on one row of x, the cut-off at the ``--density`` quantile of |x|. ``--layers 22`` (llama-1b) holds
several hundred MB, so the weights come cold from memory as in a decode step; ``--layers 1`` fits in
cache and shows the kernels' arithmetic. Rounds alternate the ways; medians and each sparse way's
ratio to dense are printed (and written to ``--out`` as JSON when given). Run on a quiet machine.

Usage:
    python benchmarks/vnni_sparse.py --qtype Q4_K --layers 22 --density 0.5 --rounds 5
    python benchmarks/vnni_sparse.py --qtype Q8_0 --layers 1 --density 1.0
    python benchmarks/vnni_sparse.py --model gemma-3-270m --density 0.5 --rounds 8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tda.engine import quant_kernels  # noqa: E402
from tda.engine.layouts import quant_input_major  # noqa: E402
from tda.engine.tokenwise import quant_threshold_linear  # noqa: E402
from tda.evaluate.bench import machine_info  # noqa: E402
from tda.models import quant  # noqa: E402
from tda.models.quant import QuantLinear  # noqa: E402

SHAPES = [(2048, 2048), (256, 2048), (256, 2048), (2048, 2048), (5632, 2048), (5632, 2048), (2048, 5632)]


def _linears(a) -> tuple[list, list[str]]:
    """The benchmark's quantized linears, one step's calls in order, and each one's role."""
    if a.model == "gemma-3-270m":
        from tda.models.load import load_model

        lm = load_model("gemma-3-270m", dtype="gguf")
        roles = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        mods = [getattr(layer.self_attn, r, None) or getattr(layer.mlp, r) for layer in lm.model.model.layers
                for r in roles]
        return mods, [r for _ in lm.model.model.layers for r in roles]
    torch.manual_seed(0)
    mods = [QuantLinear(quant.to_blocks(quant.quantize(torch.randn(n, d) * 0.02, a.qtype))) for n, d in SHAPES * a.layers]
    return mods, [f"{n}x{d}" for n, d in SHAPES * a.layers]


def _threshold_fns(mods, cuts, dense, *, columns: bool, dense_from: str) -> list:
    """TEAL's threshold linear of every module, made under ``TDA_QUANT_DENSE_FROM=dense_from``."""
    old = os.environ.get("TDA_QUANT_DENSE_FROM")
    os.environ["TDA_QUANT_DENSE_FROM"] = dense_from
    try:
        fns = []
        for m, f in zip(mods, dense):
            qwt = dataclasses.replace(quant_input_major(m), vq=None)
            if columns:
                qwt = dataclasses.replace(qwt, vq=quant.vnni_columns(m.qweight))
            fns.append(quant_threshold_linear(qwt, None, cuts[m.in_features], f))
        return fns
    finally:
        if old is None:
            os.environ.pop("TDA_QUANT_DENSE_FROM")
        else:
            os.environ["TDA_QUANT_DENSE_FROM"] = old


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-1b", choices=["llama-1b", "gemma-3-270m"])
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
    mods, roles = _linears(a)
    g = torch.Generator().manual_seed(0)
    xs = {d: torch.randn(d, generator=g) for d in {m.in_features for m in mods}}
    cuts = {d: (0.0 if a.density >= 1.0 else float(x.abs().quantile(1 - a.density))) for d, x in xs.items()}
    dense = [quant_kernels.linear_fn(m) for m in mods]
    ways = {"dense": dense,
            "input-major": _threshold_fns(mods, cuts, dense, columns=False, dense_from="2"),
            "vnni": _threshold_fns(mods, cuts, dense, columns=True, dense_from="2"),
            "tiles": _threshold_fns(mods, cuts, dense, columns=False, dense_from="0")}
    times: dict[str, list[float]] = {k: [] for k in ways}
    per_role: dict[str, dict[str, list[float]]] = {k: {r: [] for r in dict.fromkeys(roles)} for k in ways}
    for r in range(a.rounds):
        order = list(ways)[r % len(ways):] + list(ways)[:r % len(ways)]
        for k in order:
            for m, f in zip(mods, ways[k]):  # warm-up step
                f(xs[m.in_features])
            spent = dict.fromkeys(per_role[k], 0.0)
            t0 = time.perf_counter()
            for _ in range(a.steps):
                for m, f, role in zip(mods, ways[k], roles):
                    t1 = time.perf_counter()
                    f(xs[m.in_features])
                    spent[role] += time.perf_counter() - t1
            times[k].append((time.perf_counter() - t0) / a.steps * 1e3)
            for role, v in spent.items():
                per_role[k][role].append(v / a.steps / roles.count(role) * 1e6)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {k: [d / t for d, t in zip(times["dense"], times[k])] for k in ways if k != "dense"}
    out = {"command": "python benchmarks/vnni_sparse.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "timestamp": time.strftime("%Y-%m-%d %H:%M"),
           "model": a.model, "qtype": a.qtype if a.model == "llama-1b" else "the GGUF's", "layers": a.layers,
           "density": a.density, "rounds": a.rounds, "cpu": machine_info()["cpu"],
           "threads": torch.get_num_threads(), "env": {k: v for k, v in os.environ.items() if k.startswith("TDA_")},
           "ms_per_step": med, "speedup_vs_dense": {k: statistics.median(v) for k, v in ratios.items()},
           "ms_per_step_rounds": times,
           "us_per_call": {k: {role: statistics.median(v) for role, v in d.items()} for k, d in per_role.items()}}
    what = f"{a.qtype}, {a.layers} layer(s) of llama-1b linears" if a.model == "llama-1b" else "Gemma 3 270M's block linears, gguf"
    print(f"{what}, density {a.density}, {a.rounds} rounds (medians; ratio = dense ÷ way, per round):")
    for k in ways:
        extra = "" if k == "dense" else f"  {out['speedup_vs_dense'][k]:.2f}x vs dense " \
                                        f"[{min(ratios[k]):.2f}, {max(ratios[k]):.2f}]"
        print(f"  {k:12s} {med[k]:8.2f} ms/step{extra}")
    if a.model == "gemma-3-270m":
        print("  µs per call: " + "; ".join(f"{role} " + " / ".join(f"{out['us_per_call'][k][role]:.0f}" for k in ways)
                                           for role in per_role["dense"]) + f"  ({' / '.join(ways)})")
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
