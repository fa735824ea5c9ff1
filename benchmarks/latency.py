"""Latency benchmark: dense / tt / griffin / tda side by side, with the roofline ceiling.

Usage (CPU presets; each takes a few minutes on 2 shared cores):
    python benchmarks/latency.py gemma        # gemma-3-270m fp32, prompt 32, 32 new tokens, 5 rounds
    python benchmarks/latency.py llama-1b     # random:llama-1b fp32, prompt 16, 24 new tokens, 4 rounds
    python benchmarks/latency.py llama-2-7b-cuda   # random:llama-2-7b fp16 on CUDA, 1024 + 1024
Writes benchmarks/results/latency-<preset>.json and prints a markdown table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PRESETS = {
    "gemma": dict(spec="gemma-3-270m", dtype="fp32", device="cpu", prompt_tokens=32, new_tokens=32, rounds=5,
                  batch_modes=True),
    "llama-1b": dict(spec="random:llama-1b", dtype="fp32", device="cpu", prompt_tokens=16, new_tokens=24, rounds=4),
    "llama-2-7b-cuda": dict(spec="random:llama-2-7b", dtype="fp16", device="cuda", prompt_tokens=1024,
                            new_tokens=1024, rounds=3),
    "tiny": dict(spec="tiny-llama", dtype="fp32", device="cpu", prompt_tokens=16, new_tokens=4, rounds=1),
}
RESULTS = Path(__file__).resolve().parent / "results"


def main(preset: str, out: str | None = None) -> dict:
    from tda.common.atomic import write_text_atomic
    from tda.common.data import load_texts
    from tda.evaluate.bench import batch_mode_bench, format_table, run_bench
    from tda.models.load import load_model

    cfg = PRESETS[preset]
    lm = load_model(cfg["spec"], dtype=cfg["dtype"], device=cfg["device"])
    # random-weight models: a small calibration set is enough for timing (outputs are meaningless)
    cal = load_texts(limit=4) if lm.is_random else None
    res = run_bench(lm, prompt_tokens=cfg["prompt_tokens"], new_tokens=cfg["new_tokens"], rounds=cfg["rounds"],
                    calibration_texts=cal, progress=lambda m: print(m, file=sys.stderr, flush=True))
    if cfg.get("batch_modes"):
        res["batch_modes"] = batch_mode_bench(lm, new_tokens=8, rounds=1, calibration_texts=cal)
    res["preset"] = preset
    path = Path(out) if out else RESULTS / f"latency-{preset}.json"
    write_text_atomic(path, json.dumps(res, indent=1))
    print(format_table(res))
    if "batch_modes" in res:
        print("batch layouts (decode ms/token, batch 4, tda 0.5):", res["batch_modes"]["decode_ms_per_token"])
    print(f"wrote {path}")
    return res


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "gemma", sys.argv[2] if len(sys.argv) > 2 else None)
