"""Latency benchmark (the paper's table 4, done better): methods side by side in one process.

Every round runs each method once (the order rotates each round, after one warm-up round that
is not counted), so slow spells of a shared machine hit all methods alike. Reported: medians
of prefill time and decode ms/token, and each method's speedup over our dense path as the
median of the per-round *paired* ratios. Next to it the roofline ceiling (:mod:`tda.evaluate.ceiling`)
and the fraction of the ceiling's gain reached. ``stock`` is plain Hugging Face ``generate``
without any override (the baseline a user has today).
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import torch

from tda.common.errors import BadInput
from tda.engine.generate import generate
from tda.evaluate.ceiling import ceiling, fraction_of_gain

BENCH_METHODS = ("stock", "dense", "tt", "griffin", "tda")


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()), "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def bench_prompt(lm, n_tokens: int) -> str:
    """A prompt of about ``n_tokens`` tokens made from the shipped corpus."""
    from tda.common.data import load_texts

    if n_tokens < 1:
        raise BadInput("prompt tokens must be >= 1")
    texts = load_texts()
    ids: list[int] = []
    i = 0
    while len(ids) < n_tokens:
        ids += lm.tokenizer(" " + texts[i % len(texts)], add_special_tokens=False).input_ids
        i += 1
    return lm.tokenizer.decode(ids[: max(n_tokens - 1, 1)])


def _median(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def run_bench(lm, *, methods=BENCH_METHODS, density: float = 0.5, prompt_tokens: int = 64,
              new_tokens: int = 32, rounds: int = 5, calibration_texts: list[str] | None = None,
              progress=None) -> dict:
    """Alternating runs of ``methods`` on one prompt; returns the result dict (see module doc)."""
    for m in methods:
        if m not in BENCH_METHODS:
            raise BadInput(f"unknown bench method '{m}'; use {', '.join(BENCH_METHODS)}")
    if rounds < 1 or new_tokens < 2:
        raise BadInput("need rounds >= 1 and new tokens >= 2")
    prompt = bench_prompt(lm, prompt_tokens)

    def once(m):
        kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, calibration_texts=calibration_texts)
        if m == "stock":
            return generate(lm, prompt, "dense", stock=True, **kw)
        return generate(lm, prompt, m, density=None if m == "dense" else density, **kw)

    runs: dict[str, list[dict]] = {m: [] for m in methods}
    densities: dict[str, float] = {}
    for r in range(rounds + 1):
        order = list(methods[r % len(methods):]) + list(methods[: r % len(methods)])
        for m in order:
            res = once(m)
            densities[m] = res.density
            if r > 0:  # round 0 is the warm-up
                runs[m].append(res.timings)
        if progress:
            progress(f"round {r}/{rounds} done" + (" (warm-up)" if r == 0 else ""))
    n_prompt = runs[methods[0]][0]["prompt_tokens"]
    table = {}
    base = "dense" if "dense" in methods else methods[0]
    for m in methods:
        dec = [t["decode_ms_per_token"] for t in runs[m]]
        paired = [b["decode_ms_per_token"] / t["decode_ms_per_token"] for b, t in zip(runs[base], runs[m])]
        paired_total = [b["total_s"] / t["total_s"] for b, t in zip(runs[base], runs[m])]
        ceil = ceiling(lm, densities[m], n_prompt, new_tokens, method="tt" if m in ("tt",) else "sliced") \
            if m not in ("stock", "dense") else None
        row = {
            "prefill_ms": 1000 * _median([t["prefill_s"] for t in runs[m]]),
            "mask_ms": 1000 * _median([t["mask_s"] for t in runs[m]]),
            "decode_ms_per_token": _median(dec),
            "decode_ms_per_token_all": dec,
            "total_s": _median([t["total_s"] for t in runs[m]]),
            "decode_speedup_vs_dense": _median(paired),
            "total_speedup_vs_dense": _median(paired_total),
            "density": densities[m],
        }
        if ceil is not None:
            row["ceiling_speedup"] = ceil["ceiling_speedup"]
            row["fraction_of_ceiling_gain"] = fraction_of_gain(row["decode_speedup_vs_dense"], ceil["ceiling_speedup"])
        table[m] = row
    if "stock" in methods and "dense" in methods:
        table["dense"]["decode_speedup_vs_stock"] = _median(
            [s["decode_ms_per_token"] / d["decode_ms_per_token"] for s, d in zip(runs["stock"], runs["dense"])])
    return {
        "model": lm.info(), "machine": machine_info(), "density": density, "prompt_tokens": n_prompt,
        "new_tokens": new_tokens, "rounds": rounds, "methods": list(methods), "results": table,
        "ceiling": ceiling(lm, density, n_prompt, new_tokens),
        "note": ("medians over alternating rounds (one warm-up round dropped); speedups are medians of "
                 "per-round paired ratios; the CPU is shared with other processes, so absolute times are noisy"),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def batch_mode_bench(lm, *, batch: int = 4, density: float = 0.5, new_tokens: int = 16, rounds: int = 3,
                     method: str = "tda", calibration_texts: list[str] | None = None) -> dict:
    """Decode ms/token of the two batch layouts (``union``, ``rows``) for per-row masks."""
    from tda.common.data import load_texts

    prompts = [" ".join(t.split()[:40]) for t in load_texts(limit=batch)]
    out: dict[str, list[float]] = {"union": [], "rows": []}
    dens = {}
    for r in range(rounds + 1):
        for mode in (("union", "rows") if r % 2 else ("rows", "union")):
            res = generate(lm, prompts, method, density=density, max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, batch_mode=mode, calibration_texts=calibration_texts)
            dens[mode] = res.density
            if r:
                out[mode].append(res.timings["decode_ms_per_token"])
    return {"batch": batch, "method": method, "density": density,
            "decode_ms_per_token": {k: _median(v) for k, v in out.items()}, "runs": out}


def format_table(result: dict) -> str:
    """A markdown table of one :func:`run_bench` result."""
    lines = [
        f"model {result['model']['model_id']} ({result['model']['dtype']}, {result['model'].get('device', '')}), "
        f"prompt {result['prompt_tokens']} tokens, {result['new_tokens']} new tokens, density {result['density']}, "
        f"{result['rounds']} rounds",
        "",
        "| method | prefill ms | decode ms/token | decode speedup vs dense | ceiling | fraction of ceiling gain |",
        "|---|---|---|---|---|---|",
    ]
    for m, r in result["results"].items():
        extra = f" ({r['decode_speedup_vs_stock']:.2f}x vs stock)" if "decode_speedup_vs_stock" in r else ""
        ceil = f"{r['ceiling_speedup']:.3f}x" if "ceiling_speedup" in r else ""
        frac = f"{100 * r['fraction_of_ceiling_gain']:.0f}%" if "fraction_of_ceiling_gain" in r and \
            r["fraction_of_ceiling_gain"] == r["fraction_of_ceiling_gain"] else ""
        lines.append(f"| {m} | {r['prefill_ms']:.0f} | {r['decode_ms_per_token']:.1f} | "
                     f"{r['decode_speedup_vs_dense']:.3f}x{extra} | {ceil} | {frac} |")
    c = result["ceiling"]
    w = c["weight_bytes"]
    lines += ["", f"bytes per decode step: dense {c['dense_bytes_per_step'] / 1e6:.1f} MB "
              f"(FFN {w['ffn'] / 1e6:.1f}, lm_head {w['lm_head'] / 1e6:.1f}, other {w['other'] / 1e6:.1f}, "
              f"KV {c['kv_bytes_per_step'] / 1e6:.2f}); sliced at {c['density']}: "
              f"{c['sliced_bytes_per_step'] / 1e6:.1f} MB -> ceiling {c['ceiling_speedup']:.3f}x"]
    return "\n".join(lines)
