"""Seconds from `streamlit run` to the first chart in Chromium, on an empty (or a given) model cache,
and optionally a walk through every page with the server's memory (RSS, with its children) after each
one and its peak. Where the conversion's time goes: benchmarks/convert_profile.py.

    python benchmarks/first_chart.py                       # fresh cache in a temporary folder
    python benchmarks/first_chart.py --cache DIR --walk    # reuse DIR (warm), then every page
    python benchmarks/first_chart.py --json out.json

Needs Debian's Chromium (/usr/bin/chromium) and the playwright package (as tests/test_app_browser.py).
Run it under the shared lock (`flock /tmp/heavy.lock ...`): it converts and loads the real model.
Times on a shared machine are noisy: say so when reporting them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_app_browser import CHROMIUM, N_CHARTS, PAGES, RUNNING, _free_port, _healthy  # noqa: E402


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children, MB."""
    import psutil

    p = psutil.Process(pid)
    return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20


def run_once(a) -> dict:
    """One start of the server on the cache of ``a`` (a fresh temporary one unless --cache)."""

    cache = a.cache or Path(tempfile.mkdtemp(prefix="tda-first-chart-"))
    env = {**os.environ, "TDA_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT), "TDA_PROGRESS": "1"}
    if a.model:
        env["TDA_APP_MODEL"] = a.model
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "main.py"), "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[tuple[float, str]] = []
    peak = [0.0]

    def read():
        for line in proc.stdout:
            lines.append((time.perf_counter() - t0, line.rstrip()))

    def sample():
        while proc.poll() is None:
            try:
                peak[0] = max(peak[0], rss_mb(proc.pid))
            except Exception:  # noqa: BLE001 - the process is ending
                pass
            time.sleep(0.5)

    threading.Thread(target=read, daemon=True).start()
    threading.Thread(target=sample, daemon=True).start()
    out: dict = {"cache": str(cache), "fresh": a.cache is None}
    from playwright.sync_api import sync_playwright

    try:
        while not _healthy(url):
            if proc.poll() is not None:
                raise SystemExit("streamlit exited early:\n" + "\n".join(x for _, x in lines))
            time.sleep(0.2)
        out["server_up_s"] = round(time.perf_counter() - t0, 1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_function(f"({N_CHARTS})() >= 1", timeout=a.timeout * 1000)
            out["first_chart_s"] = round(time.perf_counter() - t0, 1)
            page.wait_for_function(f"!({RUNNING})()", timeout=a.timeout * 1000)
            out["rss_mb"] = {"first page": round(rss_mb(proc.pid))}
            print(f"first chart after {out['first_chart_s']} s (server up after {out['server_up_s']} s)", flush=True)
            if a.walk:
                for path, button, charts in PAGES:
                    t = time.perf_counter()
                    page.goto(f"{url}/{path}", wait_until="domcontentloaded")
                    if button:
                        page.get_by_role("button", name=button).wait_for(timeout=a.timeout * 1000)
                        page.wait_for_function(f"!({RUNNING})()", timeout=a.timeout * 1000)
                        page.get_by_role("button", name=button).click()
                    page.wait_for_function(f"({N_CHARTS})() >= {charts}", timeout=a.timeout * 1000)
                    page.wait_for_function(f"!({RUNNING})()", timeout=a.timeout * 1000)
                    out["rss_mb"][path or "inertia"] = round(rss_mb(proc.pid))
                    print(f"/{path}: {time.perf_counter() - t:.1f} s, server RSS {out['rss_mb'][path or 'inertia']} MB",
                          flush=True)
            browser.close()
    finally:
        out["peak_rss_mb"] = round(peak[0])
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    out["log_tail"] = [f"{t:7.1f}s {x}" for t, x in lines if "[tda]" in x][-30:]
    if a.cache is None:  # the temporary cache (the converted model, 1.5 GB) goes with the run
        shutil.rmtree(cache, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, help="TDA_CACHE_DIR to use (default: a new empty folder)")
    ap.add_argument("--model", default="", help="TDA_APP_MODEL (default: the embedded Gemma)")
    ap.add_argument("--walk", action="store_true", help="then open every page, pressing its run button")
    ap.add_argument("--json", type=Path, help="write the numbers here")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--repeat", type=int, default=1,
                    help="start the server this many times (each on a fresh cache unless --cache) and "
                         "report the median first chart, with every run's time")
    ap.add_argument("--store", metavar="LABEL",
                    help="add this run to benchmarks/results/first-chart.json under LABEL (e.g. quiet, busy: "
                         "say what else ran on the cores); rendered by benchmarks/report.py")
    a = ap.parse_args()
    runs = [run_once(a) for _ in range(max(1, a.repeat))]
    out = runs[0]
    if len(runs) > 1:  # the median start, every start's time beside it
        times = sorted(r["first_chart_s"] for r in runs)
        out["first_chart_runs_s"] = [r["first_chart_s"] for r in runs]
        out["first_chart_s"] = times[len(times) // 2]
        print(f"first chart after {out['first_chart_s']} s (median of {len(runs)}: {out['first_chart_runs_s']})")
    print(json.dumps(out, indent=1))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    if a.store:
        store = ROOT / "benchmarks" / "results" / "first-chart.json"
        runs = json.loads(store.read_text()) if store.exists() else {}
        runs[a.store] = {k: v for k, v in out.items() if k not in ("cache", "log_tail")} | {
            "timestamp": time.strftime("%Y-%m-%d %H:%M"), "model": a.model or "the embedded Gemma 3 270M",
            "command": "python benchmarks/first_chart.py" + (" --cache DIR" if a.cache else "")
            + (" --walk" if a.walk else "") + (f" --repeat {a.repeat}" if a.repeat > 1 else "")
            + f" --store {a.store}"}
        store.write_text(json.dumps(runs, indent=1) + "\n")
        print(f"stored under {a.store!r} in {store}")


if __name__ == "__main__":
    main()
