"""What the test suite costs: its wall time and the peak resident memory of its largest process.

    python benchmarks/suite_cost.py [-- extra pytest arguments]

Runs ``python -m pytest -q -p no:cacheprovider`` (the README's test command) in a child process and
reads the peak RSS from the kernel (``RUSAGE_CHILDREN``: the largest process of the tree, as
``/usr/bin/time -v`` reports it). Run it with nothing else on the cores. Writes
``benchmarks/results/suite-cost.json`` (the pass/fail counts from pytest's summary line, the
machine's cores and memory); ``benchmarks/report.py`` renders it into the README and the tests guide.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "suite-cost.json"


def main(argv: list[str]) -> int:
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *argv]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", tail[0])}
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    out = {"command": "python -m pytest -q" + (" " + " ".join(argv) if argv else ""), "returncode": proc.returncode,
           "wall_s": round(wall, 1), "peak_rss_mb": round(peak_mb), "counts": counts, "summary": tail[0],
           "cores": os.cpu_count(), "memory_gb": round(mem_gb, 1), "timestamp": time.strftime("%Y-%m-%d %H:%M")}
    failed = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith(("FAILED", "ERROR"))]
    if failed:
        out["failed"] = failed
    print(json.dumps(out, indent=1))
    if proc.returncode == 0 and not argv:  # only a whole, green run is stored
        OUT.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {OUT}")
    return proc.returncode


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(args[1:] if args[:1] == ["--"] else args))
