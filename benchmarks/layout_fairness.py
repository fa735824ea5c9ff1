"""Is a method timed the same in one process with other methods as alone? (issue: a method's weight
layout belongs to the method, not to whichever method ran before it.)

    python benchmarks/layout_fairness.py [--model gemma-3-270m] [--dtype fp32] \\
        [--methods teal,wina,scap,rsparse,cats,chess,tt] [--density 0.5] [--rounds 3]

For each method M: ``tda bench --methods dense,M`` in a fresh process ("alone"); then one
``tda bench --methods dense,<every M>`` process ("together", the way a frontier times them). Each
speedup is paired with dense in its own process (``tda bench``'s paired rounds), so the two
columns compare like with like; ``together ÷ alone`` outside 0.95–1.05 is flagged. Writes
``benchmarks/results/layout-fairness-<model>-<dtype>.json`` (rendered by ``benchmarks/report.py``).
Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TOLERANCE = 0.05


def _bench(model: str, dtype: str, methods: list[str], density: float, rounds: int, new_tokens: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "bench.json"
        cmd = [sys.executable, "-m", "tda.cli.main", "bench", "--model", model, "--dtype", dtype,
               "--methods", ",".join(["dense", *methods]), "--density", str(density), "--rounds", str(rounds),
               "--new-tokens", str(new_tokens), "--bandwidth-mb", "0", "-o", str(out)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        res = json.loads(out.read_text())["results"]
    return {m: {k: res[m][k] for k in ("decode_speedup_vs_dense", "speedup_lo", "speedup_hi", "decode_ms_per_token")}
            for m in methods if m in res}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--methods", default="teal,wina,scap,rsparse,cats,chess,tt")
    ap.add_argument("--density", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    alone = {}
    for m in methods:
        alone.update(_bench(a.model, a.dtype, [m], a.density, a.rounds, a.new_tokens))
        print(f"alone    {m:10s} {alone[m]['decode_speedup_vs_dense']:.3f}x", flush=True)
    together = _bench(a.model, a.dtype, methods, a.density, a.rounds, a.new_tokens)
    rows = []
    for m in methods:
        r = together[m]["decode_speedup_vs_dense"] / alone[m]["decode_speedup_vs_dense"]
        rows.append({"method": m, "alone": alone[m], "together": together[m], "together_over_alone": r,
                     "flagged": abs(r - 1) > TOLERANCE})
        print(f"together {m:10s} {together[m]['decode_speedup_vs_dense']:.3f}x  ratio {r:.3f}"
              + ("  <- differs by more than 5%" if rows[-1]["flagged"] else ""), flush=True)
    out = {"model": a.model, "dtype": a.dtype, "density": a.density, "rounds": a.rounds, "new_tokens": a.new_tokens,
           "tolerance": TOLERANCE, "timestamp": time.strftime("%Y-%m-%d %H:%M"),
           "command": "python benchmarks/layout_fairness.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "rows": rows, "flagged": sum(r["flagged"] for r in rows)}
    path = Path(a.out) if a.out else RESULTS / f"layout-fairness-{a.model.replace(':', '-')}-{a.dtype}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{out['flagged']} of {len(rows)} methods differ by more than 5%; wrote {path}")
    return out


if __name__ == "__main__":
    main()
