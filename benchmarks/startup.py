"""Start-up time of the `tda` command, before/after side by side: help, models, an argument error,
and a warm `tda capture` on the embedded model broken into imports, model load and compute.

    git worktree add --detach /tmp/tda-before 374babd     # any older checkout to compare with
    python benchmarks/startup.py --before /tmp/tda-before [--rounds 5] [--json out.json]

Every measurement is a fresh interpreter (``python -m tda ...`` or a small probe) run with the
tree as its working directory, so ``tda`` is imported from that tree. Trees alternate within each
round (these machines are shared and drift by ±15%); medians over rounds are printed, with the
ratio after/before. Without ``--before`` only this tree is measured. "Warm" means the embedded
model is already converted and cached (run `tda models` once) and its files are in the page cache
(one untimed capture runs first).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Almost one million people visited the city"

# A warm capture in phases, measured inside one interpreter: the imports the command needs
# (CLI + torch + transformers + the capture module), the model load, the capture, the save.
PHASES = r"""
import json, sys, time
t0 = time.perf_counter()
from tda.cli.main import _register
_register()
import tda.models.load, tda.activations.capture
from transformers.models.gemma3 import modeling_gemma3  # the model class import is part of imports
t1 = time.perf_counter()
lm = tda.models.load.load_model("gemma-3-270m")
t2 = time.perf_counter()
cap = tda.activations.capture.capture(lm, sys.argv[1], layers=[0, 3, 17])
t3 = time.perf_counter()
cap.save(sys.argv[2])
t4 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "load": t2 - t1, "compute": t3 - t2, "save": t4 - t3,
                  "transformer_lens": any(m.startswith("transformer_lens") for m in sys.modules)}))
"""


def _run(tree: Path, args: list[str], *, expect: int | None = 0) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t = time.perf_counter()
    p = subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if expect is not None and p.returncode != expect:
        raise SystemExit(f"{tree}: {' '.join(args)} exited {p.returncode}: {p.stderr.strip()[-500:]}")
    return dt


def measure(tree: Path, tmp: Path) -> dict[str, float]:
    out = tmp / f"{tree.name}.safetensors"
    row = {
        "tda --help": _run(tree, ["-m", "tda", "--help"]),
        "tda models": _run(tree, ["-m", "tda", "models"]),
        "bad argument (capture --layers a,b)": _run(
            tree, ["-m", "tda", "capture", "--prompt", "hi", "--layers", "a,b", "--out", str(out)], expect=2),
        "warm tda capture (whole command)": _run(
            tree, ["-m", "tda", "capture", "--prompt", PROMPT, "--layers", "0,3,17", "--out", str(out)]),
    }
    env = {**os.environ, "PYTHONPATH": str(tree)}
    p = subprocess.run([sys.executable, "-c", PHASES, PROMPT, str(out)], cwd=tree, env=env, capture_output=True,
                       text=True, check=True)
    phases = json.loads(p.stdout.strip().splitlines()[-1])
    for k in ("imports", "load", "compute", "save"):
        row[f"  warm capture: {k}"] = phases[k]
    row["  (TransformerLens imported)"] = float(phases["transformer_lens"])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, default=None, help="an older checkout to compare with")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    trees = {"after": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    runs: dict[str, list[dict]] = {k: [] for k in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for tree in trees.values():  # warm-up: page cache, .pyc files
            measure(tree, Path(tmp))
        for r in range(args.rounds):
            for name, tree in (trees.items() if r % 2 == 0 else reversed(trees.items())):
                runs[name].append(measure(tree, Path(tmp)))
                print(f"[startup] round {r + 1}/{args.rounds} {name} done", file=sys.stderr, flush=True)
    keys = list(runs["after"][0])
    med = {name: {k: statistics.median(row[k] for row in rows) for k in keys} for name, rows in runs.items()}
    cols = [n for n in ("before", "after") if n in med]
    print(f"medians of {args.rounds} rounds, seconds (fresh interpreter each; trees alternate)")
    print(f"| step | {' | '.join(cols)} |" + (" after/before |" if len(cols) == 2 else ""))
    print("|---|" + "---|" * len(cols) + ("---|" if len(cols) == 2 else ""))
    for k in keys:
        vals = [med[c][k] for c in cols]
        if "TransformerLens" in k:
            print(f"| {k.strip()} | " + " | ".join("yes" if v else "no" for v in vals) + " |" + (" |" if len(cols) == 2 else ""))
            continue
        ratio = f" {vals[1] / vals[0]:.2f}× |" if len(cols) == 2 and vals[0] > 0 else ""
        print(f"| {k.strip()} | " + " | ".join(f"{v:.2f}" for v in vals) + " |" + ratio)
    if args.json:
        from tda.evaluate.bench import machine_info

        args.json.write_text(json.dumps({"rounds": args.rounds, "medians": med, "runs": runs,
                                         "trees": {k: str(v) for k, v in trees.items()},
                                         "machine": machine_info()}, indent=1))


if __name__ == "__main__":
    main()
