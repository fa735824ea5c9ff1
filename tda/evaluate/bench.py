"""Latency benchmark (the paper's table 4, done better): methods side by side in one process.

Every round measures each variant right beside dense (:mod:`tda.evaluate.paired_timing`:
``d v1 v2 d v3 v4 d …``, the order rotating each round, after one warm-up pass that is not
counted), so slow spells of a shared machine hit a variant and its dense reference alike.
Reported: medians of prefill time and decode ms/token, and each variant's speedup over our dense
path as the median over rounds of its dense neighbours ÷ its time, with a 95% interval over
rounds; rounds can stop early at a target interval width, and a speedup whose interval lies
above its bytes ceiling is re-measured. Next to it the bytes ceiling (:mod:`tda.evaluate.ceiling`,
from the fractions of each weight group the method actually read) and the fraction of the
ceiling's gain reached, and the roofline: bytes read per step ÷ the streaming-read bandwidth
measured in the same run (:mod:`tda.evaluate.bandwidth`). Methods: any of the engine's
(``dense`` once, every other one at every density) plus ``stock``, plain Hugging Face
``generate`` without any override (the baseline a user has today).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass

import torch

from tda.common.errors import BadInput
from tda.engine.generate import check_method, generate
from tda.engine.speculate import generate_speculative
from tda.engine.variant_names import split_speculate
from tda.evaluate.bandwidth import measure_bandwidth, roofline_ms, roofline_pct
from tda.evaluate.ceiling import (
    ceiling,
    ceiling_from_read,
    fraction_of_gain,
    mean_read_fraction,
    read_fraction_of,
    weight_bytes,
)
from tda.evaluate.paired_timing import MAX_RETRIES, paired_rounds, speedup_interval
from tda.masks.build import check_density

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


def _mean(xs):
    xs = [x for x in xs if x == x]
    return sum(xs) / len(xs) if xs else float("nan")


def _median(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


@dataclass(frozen=True)
class BenchVariant:
    """One timed configuration: ``stock`` / ``dense`` once, every other method at each density."""

    label: str
    method: str
    density: float | None  # the target density (None: stock / dense)

    @property
    def stock(self) -> bool:
        return self.method == "stock"


def bench_variants(methods, densities) -> list[BenchVariant]:
    """Validate ``methods`` (``stock`` or any name in :data:`tda.engine.generate.METHODS`: the engine's
    message speaks for unknown ones) and ``densities``; labels are the bare method name when there is
    one density (as before), ``method@density`` when there are several. ``method@cett`` runs the
    method once with no density: its calibrated rule (CETT thresholds for tt, tda, cats)."""
    methods = list(methods)
    if not methods:
        raise BadInput("no bench methods given")
    for m in methods:
        if m != "stock":
            check_method(split_speculate(m.removesuffix("@cett"))[0])
    ds = [check_density(d) for d in densities]
    if not ds and any(m not in ("stock", "dense") for m in methods):
        raise BadInput("no densities given")
    out: list[BenchVariant] = []
    for m in dict.fromkeys(methods):  # keep order, drop repeats
        if m in ("stock", "dense") or split_speculate(m)[0] == "dense":  # dense+specK: no density either
            out.append(BenchVariant(m, m, None))
        elif m.endswith("@cett"):
            out.append(BenchVariant(m, m.removesuffix("@cett"), None))
        else:
            out += [BenchVariant(m if len(ds) == 1 else f"{m}@{d:g}", m, d) for d in ds]
    return out


def run_bench(lm, *, methods=BENCH_METHODS, density: float = 0.5, densities=None, prompt_tokens: int = 64,
              new_tokens: int = 32, rounds: int = 5, calibration_texts: list[str] | None = None,
              bandwidth_mb: float | None = 256, target_ci: float | None = None, max_rounds: int | None = None,
              max_retries: int = MAX_RETRIES, progress=None, measure=None) -> dict:
    """Paired rounds (:func:`tda.evaluate.paired_timing.paired_rounds`) of ``methods`` × ``densities``
    (default ``[density]``) on one prompt: every variant is measured right beside dense.

    Returns ``{"results": {label: row}, "bandwidth": {...}, ...}``. Each row: medians of the timings,
    ``decode_speedup_vs_dense`` (median over rounds of dense-neighbours ÷ variant, all in
    ``decode_speedup_rounds``) with its 95% interval ``speedup_lo``/``_hi``, the density
    actually run, the read fractions (engine-reported or :func:`tda.evaluate.ceiling.default_read_fraction`),
    bytes read per step, their ceiling (``remeasured``/``above_ceiling`` when a speedup's interval
    lay above it), and the roofline ``bytes / bandwidth`` with the share of it reached. The
    bandwidth is measured before, between and after the rounds (the best counts);
    ``bandwidth_mb=None`` or 0 skips it. ``target_ci``/``max_rounds``: stop rounds early.
    ``measure(variant) -> GenerationResult``-like (tests inject one; default: :func:`generate`).
    """
    dens_list = [density] if densities is None else list(densities)
    vs = bench_variants(methods, dens_list)
    if getattr(lm, "weight_format", None) == "gguf":  # before any timing: what runs on quantized blocks
        from tda.engine.session import QUANT_METHODS, runs_on_quant

        bad = sorted({v.method for v in vs if v.method != "stock" and not runs_on_quant(split_speculate(v.method)[0])})
        if bad:
            raise BadInput(f"{', '.join(bad)} do not run on the gguf format yet (these do: "
                           f"{', '.join(QUANT_METHODS)}); leave them out or use --dtype fp32/bf16")
    if measure is None and any(split_speculate(v.method)[1] for v in vs):
        from tda.engine.speculate import check_speculative

        check_speculative(lm)  # before any timing: a speculative head needs the head's integer tiles
    if rounds < 1 or new_tokens < 2:
        raise BadInput("need rounds >= 1 and new tokens >= 2")
    if target_ci is not None and not 0 < target_ci < 1:
        raise BadInput("target CI (relative half-width) must be in (0, 1)")
    if max_rounds is not None and max_rounds < rounds:
        raise BadInput("max rounds must be >= rounds")
    by_label = {v.label: v for v in vs}
    labels = [v.label for v in vs]
    has_dense = "dense" in by_label
    if not has_dense:  # every speedup is paired with dense: time it even when not asked for
        by_label["dense"] = BenchVariant("dense", "dense", None)
    prompt = bench_prompt(lm, prompt_tokens) if measure is None else ""
    bw_before = measure_bandwidth(bandwidth_mb, device=lm.device) if bandwidth_mb else None

    def once(v: BenchVariant):
        kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, calibration_texts=calibration_texts)
        if v.stock:
            return generate(lm, prompt, "dense", stock=True, **kw)
        base, k = split_speculate(v.method)
        if k is not None:  # exact greedy with a speculative lm_head: it ends at a stop token (no minimum)
            kw.pop("min_new_tokens")
            return generate_speculative(lm, prompt, base, k=k, density=v.density, **kw)
        return generate(lm, prompt, v.method, density=v.density, **kw)

    run_one = measure or once
    ran: dict[str, list[float]] = {x: [] for x in by_label}
    reads: dict[str, list[dict]] = {x: [] for x in by_label}
    n_prompt: list[int] = []
    weights = weight_bytes(lm)

    decode_threads: list[int] = []

    def timed(label: str) -> dict:
        v = by_label[label]
        res = run_one(v)
        if isinstance(res.timings.get("threads"), int):
            decode_threads.append(res.timings["threads"])
        ran[label].append(res.density)
        reads[label].append(read_fraction_of(v.method, res.density, res.params))
        n_prompt.append(res.timings["prompt_tokens"])
        return res.timings

    def read_of(label: str) -> dict:
        return mean_read_fraction(reads[label][1:] or reads[label])

    def ceiling_of(label: str) -> float | None:
        v = by_label[label]
        if v.method in ("stock", "dense") or not reads[label]:
            return None
        return ceiling_from_read(lm, read_of(label), n_prompt[0], new_tokens, weights=weights)["ceiling_speedup"]

    bw_rounds: list[float] = []

    def after_round(r: int):
        if bandwidth_mb:  # the bandwidth moves with the machine's load: measure it per round, with the decode's threads
            bw_rounds.append(measure_bandwidth(bandwidth_mb, repeats=3, device=lm.device,
                                               threads=decode_threads[-1] if decode_threads else None)["gbps"])
        if progress:
            progress(f"round {r}/{max_rounds if target_ci and max_rounds else rounds} done")

    pr = paired_rounds(timed, ["dense", *[x for x in labels if x != "dense"]], rounds=rounds, max_rounds=max_rounds,
                       target_ci=target_ci, ceiling_of=ceiling_of, max_retries=max_retries, on_round=after_round)
    runs = pr["timings"]
    bw_after = measure_bandwidth(bandwidth_mb, device=lm.device,
                                 threads=decode_threads[-1] if decode_threads else None) if bandwidth_mb else None
    gbps = max([b["gbps"] for b in (bw_before, bw_after)] + bw_rounds) if bw_before else float("nan")
    table = {}
    for v in vs:
        m = v.label
        dec = [t["decode_ms_per_token"] for t in runs[m]]
        if m == "dense":
            paired, paired_total = [1.0] * pr["rounds_run"], [1.0] * pr["rounds_run"]
        else:
            paired = pr["ratios"][m].get("decode_ms_per_token", [])
            paired_total = pr["ratios"][m].get("total_s", [])
        sp, sp_lo, sp_hi = speedup_interval(paired)
        dens_run = _mean(ran[m][1:] or ran[m])
        rf = read_of(m)
        cl = ceiling_from_read(lm, rf, n_prompt[0], new_tokens, weights=weights)
        roof = roofline_ms(cl["bytes_per_step"], gbps)
        # per round: that round's bandwidth against that round's time; a round above 100% means the
        # probe under-read the machine in that round: flagged and left out of the median
        pct_rounds = [roofline_pct(roofline_ms(cl["bytes_per_step"], g), d) for g, d in zip(bw_rounds, dec)]
        ok_rounds = [p for p in pct_rounds if p <= 100.0]
        row = {
            "method": v.method,
            "density_target": v.density,
            "prefill_ms": 1000 * _median([t["prefill_s"] for t in runs[m]]),
            "mask_ms": 1000 * _median([t["mask_s"] for t in runs[m]]),
            "decode_ms_per_token": _median(dec),
            "decode_ms_per_token_all": dec,
            "total_s": _median([t["total_s"] for t in runs[m]]),
            "decode_speedup_vs_dense": sp,
            "speedup_lo": sp_lo,
            "speedup_hi": sp_hi,
            "decode_speedup_rounds": paired,
            "total_speedup_vs_dense": _median(paired_total),
            "density": dens_run,
            "read_fraction": rf,
            "bytes_per_step": cl["bytes_per_step"],
            "roofline_ms": roof,
            "roofline_pct": roofline_pct(roof, _median(dec)),
            "roofline_pct_rounds": _median(ok_rounds) if ok_rounds else float("nan"),
            "roofline_pct_each_round": pct_rounds,
            "roofline_rounds_above_100": sum(p > 100.0 for p in pct_rounds),
        }
        if v.method not in ("stock", "dense"):
            row["ceiling_speedup"] = cl["ceiling_speedup"]
            row["fraction_of_ceiling_gain"] = fraction_of_gain(row["decode_speedup_vs_dense"], cl["ceiling_speedup"])
        if m in pr["remeasured"]:
            row["remeasured"] = pr["remeasured"][m]
        if m in pr["above_ceiling"]:
            row["above_ceiling"] = True
        table[m] = row
    if "stock" in labels and has_dense:
        table["dense"]["decode_speedup_vs_stock"] = _median(
            [1.0 / x for x in pr["ratios"]["stock"].get("decode_ms_per_token", []) if x > 0])
    return {
        "model": lm.info(), "machine": machine_info(), "density": dens_list[0] if dens_list else None,
        "densities": dens_list, "prompt_tokens": n_prompt[0], "new_tokens": new_tokens, "rounds": rounds,
        "rounds_run": pr["rounds_run"], "stopped_early": pr["stopped_early"], "target_ci": target_ci,
        "max_rounds": max_rounds, "remeasured": pr["remeasured"], "above_ceiling": pr["above_ceiling"],
        "methods": list(dict.fromkeys(methods)), "variants": labels, "results": table,
        "ceiling": ceiling(lm, dens_list[0] if dens_list else 1.0, n_prompt[0], new_tokens),
        "bandwidth": {"gbps": gbps, "before": bw_before, "after": bw_after, "rounds_gbps": bw_rounds},
        "note_speedup": ("paired: each round measures dense first, after every 2 variants and last (order rotating); "
                         "a variant's ratio = mean of its two dense neighbours ÷ its time; median over rounds, "
                         "95% t-interval on log ratios (speedup_lo/hi); a variant whose interval lies above its "
                         f"bytes ceiling is re-measured (at most {max_retries}×, 'remeasured')"),
        "note": ("medians over paired rounds (one warm-up pass dropped); roofline = bytes read per step / "
                 "streaming-read bandwidth (the best of the measurements before, after and between the rounds); "
                 "roofline_pct_rounds pairs each round's time with that round's bandwidth; the CPU is shared with other "
                 "processes, so absolute times are noisy"),
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


def _x(v, fmt="{:.3f}x") -> str:
    return "" if v is None or v != v else fmt.format(v)


def _pct(v) -> str:
    return "" if v is None or v != v else f"{v:.0f}%" if abs(v) >= 10 else f"{v:.2g}%"


def _roof(v) -> str:
    """A roofline share, flagged instead of reported when it exceeds 100% (the bandwidth probe
    under-read the machine)."""
    return f"flagged (>100%: {v:.0f})" if v is not None and v == v and v > 100.0 else _pct(v)


def format_table(result: dict) -> str:
    """A markdown table of one :func:`run_bench` result (older results without the roofline columns too)."""
    dens = result.get("densities") or [result.get("density")]
    bw = (result.get("bandwidth") or {}).get("gbps")
    lines = [
        f"model {result['model']['model_id']} ({result['model'].get('format') or result['model']['dtype']}, "
        f"{result['model'].get('device', '')}), "
        f"prompt {result['prompt_tokens']} tokens, {result['new_tokens']} new tokens, "
        f"densit{'y' if len(dens) == 1 else 'ies'} {', '.join(f'{d:g}' for d in dens if d is not None)}, "
        f"{result.get('rounds_run', result['rounds'])} rounds"
        + (f" (stopped early at ±{100 * result['target_ci']:.0f}%)" if result.get("stopped_early") else "")
        + (f", streaming read {bw:.1f} GB/s ({result['machine'].get('torch_threads')} threads)"
           if bw is not None and bw == bw else ""),
        "",
        "| method | density run | prefill ms | decode ms/token | decode speedup vs dense [95%] | MB read/step | ceiling "
        "| fraction of ceiling gain | roofline ms/token | % of roofline | % per round |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, r in result["results"].items():
        extra = f" ({r['decode_speedup_vs_stock']:.2f}x vs stock)" if "decode_speedup_vs_stock" in r else ""
        rounds = r.get("decode_speedup_rounds") or []
        lo, hi = r.get("speedup_lo"), r.get("speedup_hi")
        if m == "dense":
            spread = ""
        elif lo is not None and hi is not None:  # the 95% interval over paired rounds
            spread = f" [{lo:.2f}, {hi:.2f}]" + (f" re-measured {r['remeasured']}×" if r.get("remeasured") else "") \
                + (" ABOVE CEILING" if r.get("above_ceiling") else "")
        else:  # older results: the range over rounds
            spread = f" [{min(rounds):.2f}–{max(rounds):.2f}]" if len(rounds) > 1 else ""
        frac = r.get("fraction_of_ceiling_gain")
        mb = r.get("bytes_per_step")
        lines.append(
            f"| {m} | {_x(r.get('density'), '{:.3f}')} | {r['prefill_ms']:.0f} | {r['decode_ms_per_token']:.1f} | "
            f"{r['decode_speedup_vs_dense']:.3f}x{spread}{extra} | {_x(None if mb is None else mb / 1e6, '{:.1f}')} | "
            f"{_x(r.get('ceiling_speedup'))} | {_x(None if frac is None else 100 * frac, '{:.0f}%')} | "
            f"{_x(r.get('roofline_ms'), '{:.3g}')} | {_roof(r.get('roofline_pct'))} | "
            f"{_pct(r.get('roofline_pct_rounds'))}"
            + (f" ({r['roofline_rounds_above_100']} round(s) above 100% flagged)" if r.get("roofline_rounds_above_100") else "")
            + " |")
    c = result["ceiling"]
    w = c["weight_bytes"]
    lines += ["", f"bytes per decode step: dense {c['dense_bytes_per_step'] / 1e6:.1f} MB "
              f"(FFN {w['ffn'] / 1e6:.1f}, lm_head {w['lm_head'] / 1e6:.1f}, other {w['other'] / 1e6:.1f}, "
              f"KV {c['kv_bytes_per_step'] / 1e6:.2f}); sliced at {c['density']}: "
              f"{c['sliced_bytes_per_step'] / 1e6:.1f} MB -> ceiling {c['ceiling_speedup']:.3f}x"]
    if bw is not None and bw == bw:
        rb = (result.get("bandwidth") or {}).get("rounds_gbps") or []
        spread = f"; per round {min(rb):.1f}–{max(rb):.1f} GB/s" if rb else ""
        lines.append(f"roofline: bytes read per step / {bw:.1f} GB/s (best streaming read of this run{spread}); "
                     "% of roofline = roofline ms / measured ms; % per round = median over rounds of that "
                     "round's roofline (its own bandwidth) / its time")
    return "\n".join(lines)
