"""Whole decode steps of the quantized format under each kernel choice, side by side.

    python benchmarks/decode_kernels.py [--model gemma-3-270m] [--rounds 3] [--new-tokens 64]

The choices are read when a process first builds a layer's function, so each runs in a fresh
process of its own, rounds alternating:

- ``default``       a decode step's row on the AVX512-VNNI integer tiles, weights in huge pages;
- ``blocks GEMV``   ``TDA_NO_VNNI_GEMV=1``: the blocks' own fp32 GEMVs (what the tiles replace);
- ``AMX-INT8``      ``TDA_AMX_GEMV=1``: the same tiles through AMX-INT8 (opt-in);
- ``no huge pages`` ``TDA_HUGEPAGES=0``: the default kernels, weights in base pages;
- ``lm_head on tiles`` / ``lm_head on blocks`` ``TDA_HEAD_TILES=1`` / ``0``: the lm_head's decode rows
  on its integer tiles, or on its blocks (:func:`tda.engine.quant_kernels.head_tiles`: unset, the
  tiles on AMD CPUs).

Each process times greedy ``generate`` with 4 and with 4 + ``--new-tokens`` new tokens (dense, the
same prompt) three times and takes the median of the differences per token: ms per decode step,
prefill and start-up left out. Writes ``benchmarks/results/decode-kernels-<model>.json`` (with the CPU's
name: which choice wins depends on it);
``benchmarks/report.py`` renders it on the quantized-format results page. Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "The history of the city begins with a small settlement on the river"
CHOICES = {
    "default": {},
    "blocks GEMV": {"TDA_NO_VNNI_GEMV": "1"},
    "AMX-INT8": {"TDA_AMX_GEMV": "1"},
    "no huge pages": {"TDA_HUGEPAGES": "0"},
    "lm_head on tiles": {"TDA_HEAD_TILES": "1"},
    "lm_head on blocks": {"TDA_HEAD_TILES": "0"},
}
_CHILD = """
import json, statistics, sys, time
import torch
torch.set_num_threads(int(sys.argv[3]))
from tda.engine.generate import generate
from tda.engine.quant_kernels import decode_kernel
from tda.models.load import load_model
lm = load_model(sys.argv[1], dtype="gguf")
prompt, n = sys.argv[4], int(sys.argv[2])
generate(lm, prompt, "dense", max_new_tokens=4)
ms = []
for _ in range(3):
    t = time.perf_counter(); generate(lm, prompt, "dense", max_new_tokens=4); short = time.perf_counter() - t
    t = time.perf_counter(); generate(lm, prompt, "dense", max_new_tokens=4 + n); long = time.perf_counter() - t
    ms.append((long - short) / n * 1e3)
print(json.dumps({"ms": statistics.median(ms), "kernel": decode_kernel() or "blocks"}))
"""


def run_choice(model: str, env: dict, new_tokens: int, threads: int) -> dict:
    """``{"ms": ms per decode step, "kernel": the decode kernel}`` of one fresh process under ``env``."""
    out = subprocess.run([sys.executable, "-c", _CHILD, model, str(new_tokens), str(threads), PROMPT],
                         env={**os.environ, **env}, capture_output=True, text=True)
    if out.returncode != 0:
        tail = "\n".join(out.stderr.strip().splitlines()[-5:])
        raise SystemExit(f"decode_kernels: the process with {env or 'the defaults'} failed (exit {out.returncode}):\n{tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from tda.evaluate.bench import machine_info

    if a.rounds < 1 or a.new_tokens < 1 or a.threads < 1:
        ap.error("--rounds, --new-tokens and --threads must be at least 1")
    rounds: dict[str, list[float]] = {k: [] for k in CHOICES}
    kernels: dict[str, str] = {}
    for r in range(a.rounds):  # rounds alternate the choices
        for name, env in CHOICES.items():
            got = run_choice(a.model, env, a.new_tokens, a.threads)
            rounds[name].append(got["ms"])
            kernels[name] = got["kernel"]
            print(f"round {r + 1}: {name:14s} {got['ms']:6.2f} ms/token ({got['kernel']})", flush=True)
    med = {k: statistics.median(v) for k, v in rounds.items()}
    out = {
        "model": a.model, "prompt": PROMPT, "new_tokens": a.new_tokens, "rounds": a.rounds, "threads": a.threads,
        "timestamp": time.strftime("%Y-%m-%d %H:%M"), "cpu": machine_info()["cpu"],
        "command": "python benchmarks/decode_kernels.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "choices": {k: {"env": CHOICES[k], "kernel": kernels[k], "ms_per_token": med[k], "rounds_ms": rounds[k],
                        "default_speedup": med[k] / med["default"]} for k in CHOICES},
    }
    path = Path(a.out) if a.out else RESULTS / f"decode-kernels-{a.model.replace(':', '-').replace('/', '-')}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    for k, d in out["choices"].items():
        print(f"{k:14s} {d['ms_per_token']:6.2f} ms/token; the default is {d['default_speedup']:.3f}x as fast")
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
