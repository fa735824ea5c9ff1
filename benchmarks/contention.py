"""Decode under contention: every method with and without a busy neighbour process, side by side.

The neighbour is a single-threaded busy loop (``python -c "while True: pass"``) this script starts
and stops itself. Rounds alternate quiet/busy (ABBA order, methods rotated each round) so drift
cancels; each method's slowdown is the median over rounds of its busy/quiet ms-per-token pair, and
its speedup over dense is taken within the same condition and round. Thread policies
(``--threads all,auto``, see tda/engine/threads.py) run in the same rounds; OpenMP wait policies
(``--wait-policy default,passive``) need a fresh process each (OMP_WAIT_POLICY is read at start),
so the script re-runs itself once per wait policy.

Targets (issue 17): with one busy neighbour every method slows <= 1.6x, speedups within 10% of quiet.

Usage (a quiet machine; ~10 min for gemma at 4 rounds):
    python benchmarks/contention.py --model gemma-3-270m --dtype fp32 --rounds 4
    python benchmarks/contention.py --model random:llama-1b --dtype bf16 --methods dense,teal --rounds 3
    python benchmarks/contention.py --model tiny-llama --rounds 1 --new-tokens 4   # smoke test
Writes benchmarks/results/contention-<model>-<dtype>.json and prints one markdown table per setting.
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
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's tda, not an installed one


class Neighbour:
    """A single-threaded busy process, started and stopped on demand (always stopped at exit)."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None

    def set(self, on: bool) -> None:
        if on and self.proc is None:
            self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.3)  # let the scheduler see it
        elif not on and self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None
            time.sleep(0.3)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.set(False)


def _med(xs):
    return statistics.median(xs) if xs else float("nan")


def measure(args) -> dict:
    """Time every (thread policy, method) under both conditions; raw ms/token per round."""
    from tda.common.data import load_texts
    from tda.engine.generate import generate
    from tda.evaluate.bench import bench_prompt
    from tda.models.load import load_model

    lm = load_model(args.model, dtype=args.dtype)
    prompt = bench_prompt(lm, args.prompt_tokens)
    cal = load_texts(limit=4) if lm.is_random else None
    methods = args.methods.split(",")
    policies = [p.strip() for p in args.threads.split(",")]

    def run(method, policy):
        kw = {} if method == "dense" else {"density": args.density}
        if cal is not None and method != "dense":
            kw["calibration_texts"] = cal
        r = generate(lm, prompt, method, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                     threads=policy, **kw)
        return r.timings["decode_ms_per_token"], r.timings["threads"]

    for m in methods:  # warm-up: calibration, kernel build, layouts
        run(m, "all")
    raw = {p: {c: {m: [] for m in methods} for c in ("quiet", "busy")} for p in policies}
    used = {p: {"quiet": set(), "busy": set()} for p in policies}
    with Neighbour() as nb:
        for r in range(args.rounds):
            for cond in (("quiet", "busy") if r % 2 == 0 else ("busy", "quiet")):
                nb.set(cond == "busy")
                order = methods[r % len(methods):] + methods[:r % len(methods)]
                for p in policies:
                    for m in order:
                        ms, n = run(m, p)
                        raw[p][cond][m].append(ms)
                        used[p][cond].add(n)
                print(f"round {r + 1}/{args.rounds} {cond} done", file=sys.stderr, flush=True)
    return {"raw": raw, "threads_used": {p: {c: sorted(v) for c, v in d.items()} for p, d in used.items()},
            "methods": methods, "policies": policies}


def summarise(res: dict) -> dict:
    """Per policy and method: medians, the paired slowdown, and speedups over dense per condition."""
    out = {}
    for p, conds in res["raw"].items():
        rows = {}
        for m in res["methods"]:
            q, b = conds["quiet"][m], conds["busy"][m]
            row = {"quiet_ms": _med(q), "busy_ms": _med(b), "slowdown": _med([y / x for x, y in zip(q, b)])}
            if "dense" in conds["quiet"]:
                dq, db = conds["quiet"]["dense"], conds["busy"]["dense"]
                row["speedup_quiet"] = _med([d / x for d, x in zip(dq, q)])
                row["speedup_busy"] = _med([d / x for d, x in zip(db, b)])
                row["speedup_change"] = row["speedup_busy"] / row["speedup_quiet"] - 1
            rows[m] = row
        out[p] = rows
    return out


def table(title: str, rows: dict) -> str:
    lines = [f"### {title}", "", "| method | quiet ms/token | busy ms/token | slowdown (<= 1.6) "
             "| speedup quiet | speedup busy | change (within 10%) |", "|---|---|---|---|---|---|---|"]
    for m, r in rows.items():
        lines.append(f"| {m} | {r['quiet_ms']:.1f} | {r['busy_ms']:.1f} | {r['slowdown']:.2f}x | "
                     f"{r.get('speedup_quiet', float('nan')):.3f} | {r.get('speedup_busy', float('nan')):.3f} | "
                     f"{100 * r.get('speedup_change', float('nan')):+.1f}% |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--methods", default="dense,tt,teal,griffin")
    ap.add_argument("--density", type=float, default=0.5)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", default="all,auto", help="thread policies to compare: all, auto, N")
    ap.add_argument("--wait-policy", default="default",
                    help="OpenMP wait policies, each in a fresh process: default, passive, active")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args)))
        return
    results = {}
    for wp in args.wait_policy.split(","):
        env = dict(os.environ)
        if wp != "default":
            env["OMP_WAIT_POLICY"] = wp.upper()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *(argv if argv is not None else sys.argv[1:])]
        done = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True)
        res = json.loads(done.stdout.strip().splitlines()[-1])
        res["summary"] = summarise(res)
        results[wp] = res
    meta = {k: v for k, v in vars(args).items() if k not in ("child", "out")}
    meta["cores"] = os.cpu_count()
    path = Path(args.out) if args.out else RESULTS / f"contention-{args.model.replace(':', '-')}-{args.dtype}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": meta, "results": results}, indent=1))
    print(f"{args.model} {args.dtype}, density {args.density}, {args.rounds} rounds alternating quiet/busy "
          f"(one single-threaded busy neighbour), {args.new_tokens} new tokens")
    for wp, res in results.items():
        for p, rows in res["summary"].items():
            print()
            print(table(f"threads={p}, OMP wait policy={wp} (threads used: {res['threads_used'][p]})", rows))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
