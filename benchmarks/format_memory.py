"""Peak memory of a decode process per weight format: `tda generate` on the same prompt in each
format, each in its own fresh process, its peak resident set size read from the kernel (the
``ru_maxrss`` of the finished child, what ``/usr/bin/time -v`` prints as "Maximum resident set size").

    python benchmarks/format_memory.py [--model gemma-3-270m] [--formats gguf,bf16,fp32] [--rounds 2]

Run the model once before (its caches built: conversion, GGUF index, kernels) so that no one-time
job is measured. Writes ``benchmarks/results/format-memory-<model>.json``; ``benchmarks/report.py``
renders it on the quantized-format results page.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "The capital of France is"


def peak_rss_mb(cmd: list[str]) -> float:
    """Peak RSS of ``cmd`` run to completion in a child of a fresh helper process (MB): the helper's
    ``RUSAGE_CHILDREN`` then holds that one child only."""
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
             "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[-1]) / 1024


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--formats", default="gguf,bf16,fp32")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    formats = [f.strip() for f in a.formats.split(",") if f.strip()]
    rows: dict[str, list[float]] = {f: [] for f in formats}
    for _ in range(a.rounds):  # rounds alternate the formats
        for f in formats:
            cmd = [sys.executable, "-m", "tda.cli.main", "generate", "--model", a.model, "--dtype", f,
                   "--prompt", PROMPT, "--max-new-tokens", str(a.new_tokens)]
            rows[f].append(peak_rss_mb(cmd))
            print(f"{f}: peak RSS {rows[f][-1]:.0f} MB", flush=True)
    out = {
        "model": a.model, "prompt": PROMPT, "new_tokens": a.new_tokens, "rounds": a.rounds,
        "timestamp": time.strftime("%Y-%m-%d %H:%M"), "command": "python benchmarks/format_memory.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "peak_rss_mb": {f: max(v) for f, v in rows.items()}, "rounds_mb": rows,
    }
    if "fp32" in rows:
        out["vs_fp32"] = {f: max(v) / max(rows["fp32"]) for f, v in rows.items()}
        print("  ".join(f"{f} {r:.1%} of fp32" for f, r in out["vs_fp32"].items()))
    path = Path(a.out) if a.out else RESULTS / f"format-memory-{a.model}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    os.environ.setdefault("TDA_PROGRESS", "0")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
