"""Is a method timed the same in one process with other methods as alone? (issue: a method's weight
layout belongs to the method, not to whichever method ran before it.)

    python benchmarks/layout_fairness.py [--model gemma-3-270m] [--dtype fp32] \\
        [--methods teal,wina,scap,rsparse,cats,chess,tt] [--density 0.5] [--rounds 3]

For each method M: ``tda bench --methods dense,M`` in a fresh process ("alone"); then one
``tda bench --methods dense,<every M>`` process ("together", the way a frontier times them). Each
speedup is paired with dense in its own process (``tda bench``'s paired rounds), so the two
columns compare like with like. ``together ÷ alone`` outside 0.95–1.05 is flagged when the two 95%
intervals do not overlap; where they do, the difference is within this machine's noise at that many
rounds and is said so ("within noise"), not flagged. Writes
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


def verdict(alone: dict, together: dict, tolerance: float = TOLERANCE) -> str:
    """``"within"`` (together ÷ alone inside 1 ± tolerance), ``"differs"`` (outside, and the two
    speedups' 95% intervals ``[speedup_lo, speedup_hi]`` do not overlap) or ``"noise"`` (outside, but
    the intervals overlap: more rounds are needed to tell)."""
    r = together["decode_speedup_vs_dense"] / alone["decode_speedup_vs_dense"]
    if abs(r - 1) <= tolerance:
        return "within"
    a_lo, a_hi, t_lo, t_hi = alone["speedup_lo"], alone["speedup_hi"], together["speedup_lo"], together["speedup_hi"]
    if None in (a_lo, a_hi, t_lo, t_hi):
        return "differs"
    return "differs" if (t_lo > a_hi or a_lo > t_hi) else "noise"


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
        v = verdict(alone[m], together[m])
        rows.append({"method": m, "alone": alone[m], "together": together[m], "together_over_alone": r,
                     "verdict": v, "flagged": v == "differs"})
        print(f"together {m:10s} {together[m]['decode_speedup_vs_dense']:.3f}x  ratio {r:.3f}"
              + {"within": "", "differs": "  <- differs by more than 5%",
                 "noise": "  (outside 5%, intervals overlap: within noise)"}[v], flush=True)
    out = {"model": a.model, "dtype": a.dtype, "density": a.density, "rounds": a.rounds, "new_tokens": a.new_tokens,
           "tolerance": TOLERANCE, "timestamp": time.strftime("%Y-%m-%d %H:%M"),
           "command": "python benchmarks/layout_fairness.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "rows": rows, "flagged": sum(r["flagged"] for r in rows),
           "within_noise": sum(r["verdict"] == "noise" for r in rows)}
    path = Path(a.out) if a.out else RESULTS / f"layout-fairness-{a.model.replace(':', '-')}-{a.dtype}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{out['flagged']} of {len(rows)} methods differ by more than 5% beyond the noise "
          f"({out['within_noise']} more outside 5% within it); wrote {path}")
    return out


if __name__ == "__main__":
    main()
