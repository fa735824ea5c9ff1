"""Capture overhead: a plain forward pass vs a full all-layer capture, side by side in one run.

    python benchmarks/capture.py [--model gemma-3-270m] [--tokens 64,512] [--repeats 5]

For each prompt length it alternates (plain forward, hook capture, TransformerLens capture) and
prints medians and the ratio capture / forward. Goal: hook capture ≤ 1.3× a plain forward.
The plain forward is ``model(input_ids, logits_to_keep=1)`` (logits for the last token only,
as generation's prefill does); capture stores acts[layer, token, neuron] for all layers on CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from tda.activations.capture import capture
from tda.evaluate.bench import bench_prompt, machine_info
from tda.models.load import load_model


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--tokens", default="64,512")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    lm = load_model(args.model)
    rows = []
    for n in [int(x) for x in args.tokens.split(",")]:
        text = bench_prompt(lm, n)
        ids = torch.tensor([lm.tokenizer(text).input_ids])

        def forward(ids=ids):
            with torch.inference_mode():
                lm.model(ids, logits_to_keep=1)

        runs = {"forward": forward, "capture_hooks": lambda text=text: capture(lm, text),
                "capture_tl": lambda text=text: capture(lm, text, backend="tl")}
        for fn in runs.values():  # warm-up (also builds the TransformerLens bridge once)
            fn()
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.repeats):
            for k, fn in runs.items():
                times[k].append(timed(fn))
        med = {k: statistics.median(v) for k, v in times.items()}
        ratios = [h / f for h, f in zip(times["capture_hooks"], times["forward"])]
        row = {"tokens": ids.shape[1], **{f"{k}_s": round(v, 4) for k, v in med.items()},
               "ratio_hooks": round(statistics.median(ratios), 3),
               "ratio_tl": round(med["capture_tl"] / med["forward"], 3)}
        rows.append(row)
        print(f"{row['tokens']:>4} tokens | forward {med['forward'] * 1e3:7.1f} ms | hook capture "
              f"{med['capture_hooks'] * 1e3:7.1f} ms (x{row['ratio_hooks']:.2f}) | TransformerLens capture "
              f"{med['capture_tl'] * 1e3:7.1f} ms (x{row['ratio_tl']:.2f})")
    verdict = all(r["ratio_hooks"] <= 1.3 for r in rows)
    print(f"goal hook capture <= 1.3x forward: {'met' if verdict else 'NOT met'}")
    if args.json:
        info = {"machine": machine_info(), "model": args.model, "rows": rows}
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()
