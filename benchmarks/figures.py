"""Time ``tda figures``: total and per study, on one model.

    python benchmarks/figures.py [--model gemma-3-270m] [--out DIR] [--repeats 1] [--no-png] [--json FILE]

Runs exactly what ``tda figures`` runs (``analysis.pipeline.run_studies`` + ``write_outputs``)
into a temporary folder (or ``--out``), and prints seconds per stage: model load, Study 1
(trained + random-weights control, including the control's one-time CETT calibration when not
cached), Appendix C, Study 2, building the figures, writing them (PNG export through kaleido
dominates). With ``--repeats 2`` or more it also checks that every run's ``results.json`` is
byte-identical (the determinism promise of ``tda figures``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from tda.evaluate.bench import machine_info


def main() -> None:
    from analysis.pipeline import FigureSettings, run_studies, write_outputs
    from analysis.random_control import control_id
    from tda.common.data import load_texts
    from tda.masks.calibrate import cache_path, data_hash
    from tda.models.load import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-png", action="store_true")
    ap.add_argument("--scale-samples", type=int, default=120)
    ap.add_argument("--scale-tokens", type=int, default=32)
    ap.add_argument("--json", default=None, help="also write the timings here")
    args = ap.parse_args()

    t0 = time.perf_counter()
    lm = load_model(args.model)
    t_load = time.perf_counter() - t0
    settings = FigureSettings(png=not args.no_png, scale_samples=args.scale_samples, scale_tokens=args.scale_tokens)
    cal_cached = cache_path(control_id(lm, settings.seed), data_hash(load_texts()), settings.cett).exists()
    runs, texts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            out = Path(args.out) if args.out else Path(tmp) / f"run{r}"
            t1 = time.perf_counter()
            studies = run_studies(lm, settings, log=lambda m: None)
            info = write_outputs(out, studies, log=lambda m: None)
            t = dict(studies["timings"])
            t["total_after_load"] = time.perf_counter() - t1
            runs.append({k: round(v, 2) for k, v in t.items()})
            texts.append((out / "results.json").read_text())
            size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
            print(f"run {r + 1}: " + ", ".join(f"{k} {v:.1f} s" for k, v in runs[-1].items())
                  + f"; {len(info['files'])} files, {size / 1e6:.1f} MB, png: {'ok' if not info['png_error'] else info['png_error']}")
    identical = all(x == texts[0] for x in texts) if len(texts) > 1 else None
    result = {
        "model": args.model, "load_s": round(t_load, 2), "runs": runs,
        "control_calibration_cached_before_first_run": cal_cached,
        "results_identical_across_runs": identical,
        "machine": {**machine_info(), "load_average_at_end": os.getloadavg()},
        "settings": {"png": not args.no_png, "scale_samples": args.scale_samples, "scale_tokens": args.scale_tokens},
    }
    print(f"model load {t_load:.1f} s; control calibration cached before run 1: {cal_cached}; "
          f"results identical across runs: {identical}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
