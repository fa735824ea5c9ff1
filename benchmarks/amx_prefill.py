"""Prefill (many rows at once) on the GGUF format's own weights: the AMX group product of
``csrc/amx_gemm.h`` against the path it replaced (dequantised tiles through ``at::mm``, in a child
process with ``TDA_NO_AMX=1``) and against fp32 ``F.linear`` on the de-quantised weights (oneDNN,
what ``--dtype fp32`` runs), measured side by side, rounds alternating between the processes.

    python benchmarks/amx_prefill.py [--model gemma-3-270m] [--rows 32,128,512] [--rounds 3]

Per kind of linear of the first layer (and the lm_head) and per row count: ms per call, median over
rounds; then one whole prefill (the model's forward over ``--prompt-tokens`` tokens) in each.
Prints the ratios; writes ``benchmarks/results/amx-prefill-<model>.json``. Run on a quiet machine.
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
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's tda


def _time(fn, reps: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps * 1e3


def measure(model: str, rows: list[int], prompt_tokens: int, fp32: bool) -> dict:
    """``{"<kind>@<rows>": ms, "prefill": ms}`` for the gguf format in this process (and, with
    ``fp32``, ``"fp32 <kind>@<rows>"`` for fp32 oneDNN on the same de-quantised weights)."""
    import torch
    import torch.nn.functional as F

    from tda.engine import quant_kernels
    from tda.models import quant
    from tda.models.load import load_model

    torch.manual_seed(0)
    lm = load_model(model, dtype="gguf")
    head = lm.model.get_output_embeddings()
    first = lm.model.model.layers[0]
    mods = [(f"{n.rsplit('.', 1)[-1]}:{m.qtype}", m) for n, m in first.named_modules() if isinstance(m, quant.QuantLinear)]
    mods.append(("lm_head", head))
    out: dict = {}
    for kind, m in mods:
        fn = quant_kernels.linear_fn(m)
        w = m.qweight.dequantize() if fp32 else None
        for r in rows:
            x = torch.randn(r, m.in_features)
            reps = max(1, min(20, int(2e5 // (r * max(m.out_features // 256, 1)))))
            out[f"{kind}@{r}"] = _time(lambda fn=fn, x=x: fn(x), reps)
            if w is not None:
                out[f"fp32 {kind}@{r}"] = _time(lambda x=x, w=w: F.linear(x, w), reps)
    ids = torch.randint(0, lm.tokenizer.vocab_size, (1, prompt_tokens))
    with torch.inference_mode():
        out["prefill"] = _time(lambda: lm.model(ids, logits_to_keep=1), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--rows", default="32,128,512")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    rows = [int(r) for r in a.rows.split(",")]
    if a.child:
        print(json.dumps(measure(a.model, rows, a.prompt_tokens, fp32=False)))
        return
    import torch

    from tda.engine import quant_kernels

    ops = quant_kernels.quant_ops()
    if ops is None or not hasattr(ops, "amx_prefill_ready") or not ops.amx_prefill_ready():
        sys.exit("amx_prefill: this CPU or build has no AMX prefill (nothing to compare)")
    runs: dict = {"amx": [], "no_amx": []}
    cmd = [sys.executable, __file__, "--child", "--model", a.model, "--rows", a.rows,
           "--prompt-tokens", str(a.prompt_tokens)]
    for k in range(a.rounds):
        print(f"round {k + 1}/{a.rounds}", file=sys.stderr, flush=True)
        runs["amx"].append(measure(a.model, rows, a.prompt_tokens, fp32=True))
        got = subprocess.run(cmd, env=dict(os.environ, TDA_NO_AMX="1"), capture_output=True, text=True, check=True)
        runs["no_amx"].append(json.loads(got.stdout.strip().splitlines()[-1]))
    med = {side: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for side, rs in runs.items()}
    table = []
    for key, ms in med["amx"].items():
        if key.startswith("fp32 "):
            continue
        row = {"what": key, "amx_ms": ms, "no_amx_ms": med["no_amx"][key], "fp32_ms": med["amx"].get(f"fp32 {key}")}
        row["vs_no_amx"] = row["no_amx_ms"] / ms
        row["vs_fp32"] = None if row["fp32_ms"] is None else row["fp32_ms"] / ms
        table.append(row)
    print("| linear@rows | AMX ms | dequant+mm ms | fp32 oneDNN ms | AMX speedup vs dequant+mm | vs fp32 |\n|---|---|---|---|---|---|")
    for r in table:
        fp = "" if r["fp32_ms"] is None else f"{r['fp32_ms']:.2f}"
        vf = "" if r["vs_fp32"] is None else f"{r['vs_fp32']:.2f}x"
        print(f"| {r['what']} | {r['amx_ms']:.2f} | {r['no_amx_ms']:.2f} | {fp} | {r['vs_no_amx']:.2f}x | {vf} |")
    res = {"model": a.model, "threads": torch.get_num_threads(), "rounds": a.rounds, "rows": rows,
           "prompt_tokens": a.prompt_tokens, "timestamp": time.strftime("%Y-%m-%d %H:%M"),
           "command": "python benchmarks/amx_prefill.py " + " ".join(sys.argv[1:]), "table": table, "runs": runs}
    out = a.out or RESULTS / f"amx-prefill-{a.model.replace('/', '_').replace(':', '_')}.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
