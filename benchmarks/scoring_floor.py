"""The arithmetic floor of a full-set frontier's quality scoring, against this CPU's matrix-multiply rate.

Teacher-forced scoring puts every scored position through all of the model's weights (a token-wise
rule masks the dense product: it saves no arithmetic), so a run's work is fixed:
``variants x scored positions x 2 x parameters`` FLOPs for the continuations alone (the shared dense
prefills come on top: each passage's first half and each cloze item's context, once per run). This
benchmark measures, side by side in one process,
the fp32 and bf16 ``torch.mm`` rate (square ``--gemm`` matrices, best of ``--repeats``) and a whole
dense forward of ``--tokens`` tokens of the model in fp32 and in bf16, reads the scored positions and the variants
at one density from a stored frontier (``--frontier``), and prints the minutes that work needs at
each rate: a lower bound on any run of that size on this machine. Run on a quiet machine.

Usage:
    python benchmarks/scoring_floor.py --out benchmarks/results/scoring-floor-gemma-3-270m-amd-epyc.json
"""

from __future__ import annotations

import argparse
import copy
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


def forward_gflops(model, params: int, tokens: int) -> float:
    """Best whole dense forward of ``tokens`` random tokens (one sequence), in GFLOPS of ``2 x params``
    per token."""
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        model(input_ids=ids)
        best = min(_timed(lambda: model(input_ids=ids)) for _ in range(3))
    return 2 * params * tokens / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_inputs(meta: dict, texts_per_set: int | None = None, items_per_set: int | None = None):
    """``(texts, cloze items)`` of a run's sets (``meta["sets"]``): every passage and the run's cloze
    items, or the first ``texts_per_set``/``items_per_set`` of each set (a sample)."""
    from tda.common.evalsets import get_set

    sets = meta.get("sets") or {}
    texts = [t for name in filter(None, str(sets.get("text", "")).split(","))
             for t in get_set(name, "text").load()[:texts_per_set]]
    cloze = [c for c in str(sets.get("cloze", "")).split(",") if c]
    per_set = int(meta.get("cloze_items") or 0) // max(len(cloze), 1)
    n = per_set if items_per_set is None else min(per_set, items_per_set)
    items = [r for name in cloze for r in get_set(name, "cloze").load()[:n]]
    return texts, items


def run_positions(lm, texts: list[str], items: list[dict]) -> dict[str, int]:
    """The positions quality scoring puts through the model: ``scored`` — the perplexity targets a
    variant predicts (each passage's second half); ``prefill`` — the dense prefills every variant
    shares (each passage's first half, :func:`tda.evaluate.scoring.split_point`, and each cloze item's
    first half of its context, as :func:`tda.evaluate.cloze.cloze_eval` splits it); ``cloze`` — each
    cloze item's teacher-forced rest (every variant runs it through the layers); ``cloze_targets`` —
    its target tokens (every variant runs them through the lm_head too)."""
    from tda.evaluate.cloze import item_ids
    from tda.evaluate.scoring import split_point

    n = {"scored": 0, "prefill": 0, "cloze": 0, "cloze_targets": 0}
    for t in texts:
        ids = lm.tokenizer(t, add_special_tokens=True).input_ids[: lm.n_ctx]
        if len(ids) >= 4:
            k = split_point(len(ids))
            n["prefill"] += k
            n["scored"] += len(ids) - k
    for r in items:
        ids, nt = item_ids(lm, r)
        k = split_point(len(ids) - nt, 0.5)
        n["prefill"] += k
        n["cloze"] += len(ids) - 1 - k
        n["cloze_targets"] += nt
    return n


def run_work(pos: dict[str, int], variants: int, params: int, head: int) -> dict[str, float]:
    """FLOPs of a run whose positions are ``pos`` (:func:`run_positions`): ``continuations`` — every
    variant's perplexity targets through all ``params`` weights; ``with_prefills`` — and the shared
    dense prefills; ``run`` — and every variant's cloze rests through the layers (``params - head``),
    their targets through the lm_head (``head`` weights) too."""
    work = variants * pos["scored"] * 2 * params
    work_all = work + pos["prefill"] * 2 * params
    work_run = work_all + variants * (pos["cloze"] * 2 * (params - head) + pos["cloze_targets"] * 2 * head)
    return {"continuations": work, "with_prefills": work_all, "run": work_run}


def measured_scoring(lm, methods: list[str], density: float, texts: list[str], items: list[dict]) -> dict:
    """Seconds the frontier's own quality scoring (:func:`tda.evaluate.quality.perplexity_eval` and
    :func:`tda.evaluate.cloze.cloze_eval`, batched as a run batches them) takes on ``texts`` and
    ``items`` for dense and ``methods`` at ``density``, on the loaded model ``lm`` (in its own dtype)."""
    from tda.evaluate.cloze import cloze_eval
    from tda.evaluate.quality import perplexity_eval, variants

    vs = variants([m for m in methods if m != "dense"], [density])
    t0 = time.perf_counter()
    perplexity_eval(lm, texts, vs, boot_iters=10)
    t1 = time.perf_counter()
    cloze_eval(lm, items, vs)
    t2 = time.perf_counter()
    return {"variants": len(vs), "perplexity_seconds": t1 - t0, "cloze_seconds": t2 - t1, "seconds": t2 - t0}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--frontier", default="benchmarks/results/frontier-gemma-3-270m-full/frontier.json")
    ap.add_argument("--gemm", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--sample-texts", type=int, default=0,
                    help="also time the frontier's own scoring on the first N passages of each text set "
                         "(and --sample-items cloze items of each cloze set) and project the whole run from it")
    ap.add_argument("--sample-items", type=int, default=16)
    ap.add_argument("--sample-dtypes", default="fp32,bf16")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from tda.models.load import load_model

    fr = json.loads((ROOT / a.frontier).read_text())
    meta = fr["meta"]
    rows = [r for r in fr["rows"] if r.get("corpus", "pooled") == "pooled"]
    densities = sorted({r["density_target"] for r in rows if r["method"] != "dense"})
    density = 0.5 if 0.5 in densities else densities[0]
    methods = [r["method"] for r in rows if r["method"] != "dense" and r["density_target"] == density]
    variants = 1 + len(methods)
    positions = int(meta["heldout_tokens"])
    lm = load_model(a.model, dtype="fp32")
    head_w, emb_w = lm.model.get_output_embeddings().weight, lm.model.get_input_embeddings().weight
    # the weights a position's arithmetic reads: an untied input embedding is a lookup
    params = sum(p.numel() for p in lm.model.parameters()) - (0 if head_w is emb_w else emb_w.numel())
    head = head_w.numel()
    rates = {"gemm_fp32": gemm_gflops(a.gemm, torch.float32, a.repeats),
             "gemm_bf16": gemm_gflops(a.gemm, torch.bfloat16, a.repeats),
             "forward_fp32": forward_gflops(lm.model, params, a.tokens)}
    # a bf16 copy: casting the model there and back would leave bf16-rounded weights in the fp32 one
    rates["forward_bf16"] = forward_gflops(copy.deepcopy(lm.model).to(torch.bfloat16), params, a.tokens)
    pos = run_positions(lm, *run_inputs(meta))
    prefill = pos["prefill"]
    pos["scored"] = positions  # as the run counted them
    w = run_work(pos, variants, params, head)
    work, work_all, work_run = w["continuations"], w["with_prefills"], w["run"]
    out = {"command": "python benchmarks/scoring_floor.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "timestamp": time.strftime("%Y-%m-%d %H:%M"), "cpu": machine_info()["cpu"],
           "threads": torch.get_num_threads(), "model": a.model, "parameters": params, "frontier": a.frontier,
           "variants_per_density": variants, "scored_positions": positions, "prefill_positions": prefill,
           "cloze_positions": pos["cloze"], "cloze_target_tokens": pos["cloze_targets"],
           "work_tflop": work / 1e12, "work_with_prefills_tflop": work_all / 1e12, "work_run_tflop": work_run / 1e12,
           "gflops": rates,
           "floor_minutes": {k: work / (v * 1e9) / 60 for k, v in rates.items()},
           "floor_minutes_with_prefills": {k: work_all / (v * 1e9) / 60 for k, v in rates.items()},
           "floor_minutes_run": {k: work_run / (v * 1e9) / 60 for k, v in rates.items()}}
    if a.sample_texts:
        texts, items = run_inputs(meta, a.sample_texts, a.sample_items)
        sample_work = run_work(run_positions(lm, texts, items), variants, params, head)["run"]
        out["sample"] = {"texts": len(texts), "cloze_items": len(items), "density": density,
                         "work_tflop": sample_work / 1e12, "by_dtype": {}}
        for dt in filter(None, a.sample_dtypes.split(",")):
            m = measured_scoring(lm if dt == "fp32" else load_model(a.model, dtype=dt), methods, density, texts, items)
            m["gflops"] = sample_work / m["seconds"] / 1e9
            m["projected_run_minutes"] = work_run / (m["gflops"] * 1e9) / 60
            out["sample"]["by_dtype"][dt] = m
    print(f"{a.model}: {params / 1e6:.1f}M parameters; {variants} variants x {positions} scored positions "
          f"(one density of {a.frontier}) = {work / 1e12:.0f} TFLOP; with {prefill} prefill positions "
          f"{work_all / 1e12:.0f} TFLOP; with the {pos['cloze']} cloze positions {work_run / 1e12:.0f} TFLOP")
    for k, v in rates.items():
        print(f"  {k:13s} {v:7.1f} GFLOPS -> at least {out['floor_minutes'][k]:6.1f} min "
              f"({out['floor_minutes_with_prefills'][k]:.1f} with the prefills, "
              f"{out['floor_minutes_run'][k]:.1f} with the cloze items too)")
    for dt, m in (out.get("sample") or {}).get("by_dtype", {}).items():
        print(f"  scoring {dt}: {m['seconds']:.0f} s for the sample ({m['gflops']:.1f} GFLOPS) -> the whole run "
              f"in about {m['projected_run_minutes']:.0f} min")
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
