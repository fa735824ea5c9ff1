"""The arithmetic floor of a full-set frontier's quality scoring, against this CPU's matrix-multiply rate.

Teacher-forced scoring puts every scored position through all of the model's weights (a token-wise
rule masks the dense product: it saves no arithmetic), so a run's work is fixed:
``variants x scored positions x 2 x parameters`` FLOPs for the continuations alone (the shared dense
prefills come on top: each passage's first half and each cloze item's context, once per run). This
benchmark measures, side by side in one process,
the fp32 and bf16 ``torch.mm`` rate (square ``--gemm`` matrices, best of ``--repeats``) and a whole
dense fp32 forward of ``--tokens`` tokens of the model, reads the scored positions and the variants
at one density from a stored frontier (``--frontier``), and prints the minutes that work needs at
each rate: a lower bound on any run of that size on this machine. Run on a quiet machine.

Usage:
    python benchmarks/scoring_floor.py --out benchmarks/results/scoring-floor-gemma-3-270m-amd-epyc.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tda.evaluate.bench import machine_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def gemm_gflops(n: int, dtype: torch.dtype, repeats: int) -> float:
    """Best ``n x n @ n x n`` rate in GFLOPS."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def shared_prefill_positions(lm, meta: dict) -> int:
    """Positions of the dense prefills a run shares over its variants: each passage's first half
    (``tda.evaluate.scoring.split_point``) and each cloze item's context, as the frontier scores them."""
    from tda.common.evalsets import get_set
    from tda.evaluate.scoring import split_point

    sets = meta.get("sets") or {}
    n = 0
    for name in filter(None, str(sets.get("text", "")).split(",")):
        for t in get_set(name, "text").load():
            ids = lm.tokenizer(t, add_special_tokens=True).input_ids[: lm.n_ctx]
            n += split_point(len(ids)) if len(ids) >= 4 else 0
    cloze = [c for c in str(sets.get("cloze", "")).split(",") if c]
    per_set = int(meta.get("cloze_items") or 0) // max(len(cloze), 1)
    for name in cloze:
        for r in get_set(name, "cloze").load()[:per_set]:
            n += len(lm.tokenizer(r["context"], add_special_tokens=True).input_ids)
    return n


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--frontier", default="benchmarks/results/frontier-gemma-3-270m-full/frontier.json")
    ap.add_argument("--gemm", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from tda.models.load import load_model

    fr = json.loads((ROOT / a.frontier).read_text())
    meta = fr["meta"]
    rows = [r for r in fr["rows"] if r.get("corpus", "pooled") == "pooled"]
    densities = sorted({r["density_target"] for r in rows if r["method"] != "dense"})
    variants = 1 + sum(1 for r in rows if r["method"] != "dense" and r["density_target"] == densities[0])
    positions = int(meta["heldout_tokens"])
    lm = load_model(a.model, dtype="fp32")
    params = sum(p.numel() for p in lm.model.parameters())
    vocab = lm.model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (1, a.tokens), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        lm.model(input_ids=ids)
        fwd = min(_timed(lambda: lm.model(input_ids=ids)) for _ in range(3))
    rates = {"gemm_fp32": gemm_gflops(a.gemm, torch.float32, a.repeats),
             "gemm_bf16": gemm_gflops(a.gemm, torch.bfloat16, a.repeats),
             "forward_fp32": 2 * params * a.tokens / fwd / 1e9}
    prefill = shared_prefill_positions(lm, meta)
    work = variants * positions * 2 * params  # FLOPs of the continuations alone
    work_all = work + prefill * 2 * params  # and the dense prefills every variant shares
    out = {"command": "python benchmarks/scoring_floor.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "timestamp": time.strftime("%Y-%m-%d %H:%M"), "cpu": machine_info()["cpu"],
           "threads": torch.get_num_threads(), "model": a.model, "parameters": params, "frontier": a.frontier,
           "variants_per_density": variants, "scored_positions": positions, "prefill_positions": prefill,
           "work_tflop": work / 1e12, "work_with_prefills_tflop": work_all / 1e12, "gflops": rates,
           "floor_minutes": {k: work / (v * 1e9) / 60 for k, v in rates.items()},
           "floor_minutes_with_prefills": {k: work_all / (v * 1e9) / 60 for k, v in rates.items()}}
    print(f"{a.model}: {params / 1e6:.1f}M parameters; {variants} variants x {positions} scored positions "
          f"(one density of {a.frontier}) = {work / 1e12:.0f} TFLOP; with {prefill} prefill positions "
          f"{work_all / 1e12:.0f} TFLOP")
    for k, v in rates.items():
        print(f"  {k:13s} {v:7.1f} GFLOPS -> at least {out['floor_minutes'][k]:6.1f} min "
              f"({out['floor_minutes_with_prefills'][k]:.1f} with the prefills)")
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
