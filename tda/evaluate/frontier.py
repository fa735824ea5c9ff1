"""The quality × speed frontier: every method at every density, timed and scored in one run.

:func:`run_frontier` runs the latency bench (:func:`tda.evaluate.bench.run_bench`: every variant
timed right beside dense, decode speedup as the median over rounds with a 95% interval
``speedup_lo``/``speedup_hi``, re-measured when its interval lies above the bytes ceiling; the
roofline from the streaming-read bandwidth measured in the same run) and the quality evaluation
(:func:`tda.evaluate.quality.run_eval`: perplexity and teacher-forced top-1 agreement on a text
set, cloze accuracy, multiple-choice accuracy, free-running generation against dense's), then
joins them into one row per variant (dense once, every other method at every density)::

    {method, density_target, density_run, decode_ms_per_token, decode_speedup, speedup_lo, speedup_hi,
     speedup_rounds, [remeasured, above_ceiling], ceiling, bytes_per_step, read_ffn, read_other,
     read_lm_head, roofline_ms, roofline_pct, pareto, <metric>, <metric>_lo, <metric>_hi, ...,
     <metric>_delta[_pct], <metric>_delta[_pct]_lo, <metric>_delta[_pct]_hi, ...}

for the metrics of :data:`tda.evaluate.paired.METRICS` that were scored (95% bootstrap intervals;
the ``_delta`` columns: paired difference from dense on the same units, paired bootstrap). The
``pareto`` flag and the verdicts come from :mod:`tda.evaluate.verdicts`.

Everything else here is pure: joining and the CSV / JSON / markdown renderings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from tda.common.errors import BadInput
from tda.evaluate.paired import METRICS, delta_columns, deltas_vs
from tda.evaluate.verdicts import (
    pareto_flags,
    primary_metric,
    row_label,
    verdicts,
    verdicts_markdown,
)

VALUE_KEYS = tuple(k for m in METRICS for k in (m, f"{m}_lo", f"{m}_hi"))
QUALITY_KEYS = (*VALUE_KEYS, "mc_items", "cloze_items", "gen_items")
COLUMNS = ("method", "density_target", "density_run", "decode_ms_per_token", "decode_speedup", "speedup_lo",
           "speedup_hi", "speedup_rounds", "remeasured", "above_ceiling", "ceiling", "bytes_per_step", "read_ffn",
           "read_other", "read_lm_head", "roofline_ms", "roofline_pct", "pareto", *QUALITY_KEYS, *delta_columns())


def check_frontier_args(methods: list[str], densities: list[float], *,
                        dense_only: bool = False) -> tuple[list[str], list[float]]:
    """``dense`` first (added when missing), then the other methods (any of the engine's); densities
    each in (0, 1]. Raises :class:`BadInput` (the engine's message for an unknown method).
    ``dense_only``: dense alone is a run too (a weight format's cost against fp32 dense)."""
    from tda.evaluate.quality import variants

    ms = ["dense"] + [m for m in dict.fromkeys(methods) if m != "dense"]
    if len(ms) == 1 and dense_only:
        return ms, sorted({float(d) for d in densities})
    if len(ms) == 1:
        raise BadInput("give at least one sparse method besides dense")
    if "stock" in ms:
        raise BadInput("'stock' is a bench baseline only; the frontier compares against our dense")
    vs = variants(ms, list(densities))  # checks every method name and density
    return ms, sorted({v.density for v in vs if v.density is not None})


def _key(method: str, density) -> tuple:
    return (method, None if method == "dense" or density is None else round(float(density), 6))


def join_rows(bench: dict, quality: dict, *, boot_iters: int = 1000, seed: int = 0) -> list[dict]:
    """One row per variant in the bench's order, joined on ``(method, target density)``; every sparse
    row also carries its paired differences from dense (:func:`tda.evaluate.paired.deltas_vs`, when
    the quality result keeps per-unit scores) and every row its ``pareto`` flag."""
    q = {_key(r["method"], r.get("density")): r for r in quality.get("rows", [])}
    rows = []
    for r in bench["results"].values():
        if r.get("method") == "stock":
            continue
        rf = r.get("read_fraction") or {}
        row = {
            "method": r["method"], "density_target": r.get("density_target"), "density_run": r.get("density"),
            "decode_ms_per_token": r.get("decode_ms_per_token"),
            "decode_speedup": r.get("decode_speedup_vs_dense"),
            "speedup_lo": r.get("speedup_lo"), "speedup_hi": r.get("speedup_hi"),
            "speedup_rounds": list(r.get("decode_speedup_rounds") or []),
            "ceiling": r.get("ceiling_speedup", 1.0), "bytes_per_step": r.get("bytes_per_step"),
            "read_ffn": rf.get("ffn"), "read_other": rf.get("other"), "read_lm_head": rf.get("lm_head"),
            "roofline_ms": r.get("roofline_ms"), "roofline_pct": r.get("roofline_pct"),
        }
        if r.get("remeasured"):
            row["remeasured"] = r["remeasured"]
        if r.get("above_ceiling"):
            row["above_ceiling"] = True
        qr = q.get(_key(r["method"], r.get("density_target")), {})
        row.update({k: qr[k] for k in QUALITY_KEYS if k in qr})
        if row["method"] != "dense":
            row.update(deltas_vs(quality, "dense", row_label(row), iters=boot_iters, seed=seed))
        rows.append(row)
    if rows:
        for row, on in zip(rows, pareto_flags(rows, quality, iters=boot_iters, seed=seed)):
            row["pareto"] = on
    return rows


def run_frontier(lm, methods: list[str], densities: list[float], *, rounds: int = 3, prompt_tokens: int = 32,
                 new_tokens: int = 32, heldout: list[str] | None = None, limit: int | None = None,
                 mc_limit: int | None = -1, cloze: list[dict] | None = None, cloze_limit: int | None = None,
                 gen_prompts: int = 0, gen_tokens: int = 64, cett: float = 0.2,
                 calibration_texts: list[str] | None = None, bandwidth_mb: float | None = 256,
                 boot_iters: int = 1000, seed: int = 0, target_ci: float | None = None,
                 max_rounds: int | None = None, sets: dict | None = None,
                 progress: Callable[[str], None] | None = None) -> dict:
    """Bench + quality for ``methods`` × ``densities``; ``{"rows", "verdicts", "meta", "bench", "quality"}``.

    ``heldout``: texts for perplexity and agreement (default: the default text set of
    :mod:`tda.common.evalsets`), the first ``limit``; ``mc_limit``: multiple-choice items (-1 or
    None: all, 0: skip); ``cloze``: last-word items (the first ``cloze_limit``); ``gen_prompts``:
    greedy continuations of ``gen_tokens`` tokens from the first that many texts (0: skip).
    ``target_ci``/``max_rounds``: the bench stops rounds early (:func:`tda.evaluate.bench.run_bench`).
    """
    from tda.common.evalsets import DEFAULT_TEXT_SET, get_set
    from tda.evaluate.bench import machine_info, run_bench
    from tda.evaluate.quality import run_eval

    ms, ds = check_frontier_args(methods, densities, dense_only=getattr(lm, "weight_format", None) == "gguf")
    if limit is not None and limit < 1:
        raise BadInput("the held-out text limit must be >= 1")
    texts = list(heldout) if heldout is not None else get_set(DEFAULT_TEXT_SET).load()
    texts = [t for t in texts if t.strip()][:limit]
    if not texts:
        raise BadInput("no held-out texts")
    cloze_items = list(cloze or [])[:cloze_limit]
    t0 = time.perf_counter()
    if progress:
        progress(f"bench: {len(ms)} methods × {len(ds)} densities, {rounds} round(s) + warm-up")
    bench = run_bench(lm, methods=tuple(ms), densities=ds, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                      rounds=rounds, calibration_texts=calibration_texts, bandwidth_mb=bandwidth_mb,
                      target_ci=target_ci, max_rounds=max_rounds, progress=progress)
    if progress:
        progress(f"quality: {len(texts)} held-out texts, {len(cloze_items)} cloze items, {gen_prompts} generations"
                 + ("" if mc_limit == 0 else f", multiple choice ({'all' if not mc_limit or mc_limit < 0 else mc_limit} items)"))
    quality = run_eval(lm, ms, ds, heldout=texts, summaries=[],
                       mc_limit=-1 if mc_limit is None else mc_limit, cett=cett, progress=progress,
                       boot_iters=boot_iters, seed=seed, cloze=cloze_items,
                       gen_texts=texts[:gen_prompts] if gen_prompts else [], gen_tokens=gen_tokens)
    rows = join_rows(bench, quality, boot_iters=boot_iters, seed=seed)
    vrows = verdicts(rows, quality, iters=boot_iters, seed=seed)
    meta = {
        "model": lm.info(), "machine": machine_info(), "methods": ms, "densities": ds, "rounds": bench["rounds"],
        "rounds_run": bench.get("rounds_run", bench["rounds"]), "target_ci": target_ci, "max_rounds": max_rounds,
        "prompt_tokens": bench["prompt_tokens"], "new_tokens": new_tokens, "heldout_texts": len(texts),
        "heldout_tokens": max((sum(v["tokens"]) for v in quality.get("per_text", {}).values()), default=0),
        "mc_limit": mc_limit, "mc_items": max((r.get("mc_items", 0) for r in rows), default=0), "cett": cett,
        "cloze_items": len(cloze_items), "gen_prompts": min(gen_prompts, len(texts)), "gen_tokens": gen_tokens,
        "sets": sets or {}, "pareto_metric": primary_metric(quality),
        "bandwidth_gbps": bench["bandwidth"]["gbps"],
        "bootstrap": {"iters": boot_iters, "seed": seed, "level": 0.95,
                      "over": "held-out texts (ppl, agreement, generations), items (mc_acc, cloze_acc)",
                      "paired": "the *_delta* columns resample the units once for both arms (variant and dense)"},
        "speedup": bench.get("note_speedup", "median over rounds of paired ratios vs dense"),
        "pareto": "off the set when another variant is at least as fast and at least as good (points) and "
                  "separated on one axis (speed intervals apart, or the paired quality interval excludes 0)",
        "ceiling": "dense bytes per decode step ÷ the bytes this method read (its read fractions, KV cache in full)",
        "roofline": "bytes read per step ÷ streaming-read bandwidth of this run; roofline_pct = roofline ÷ measured",
        "seconds": round(time.perf_counter() - t0, 1), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    keep = ("rows", "per_text", "mc_per_item", "cloze_per_item", "gen_per_text", "gen_outputs", "meta")
    return {"rows": rows, "verdicts": vrows, "meta": meta, "bench": bench,
            "quality": {k: quality[k] for k in keep if k in quality}}


# ----- renderings (pure) -----------------------------------------------------------------------------
def _fmt(x) -> str:
    if x is None:
        return ""
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, float):
        if x != x:
            return "nan"
        return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.6g}"
    if isinstance(x, (list, tuple)):
        return ";".join(_fmt(v) for v in x)
    return str(x)


def to_csv(rows: list[dict]) -> str:
    """Every column of :data:`COLUMNS` present in any row; ``speedup_rounds`` joined with ``;``."""
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    lines = [",".join(cols)] + [",".join(_fmt(r.get(c)) for c in cols) for r in rows]
    return "\n".join(lines) + "\n"


def to_json(result: dict) -> str:
    def clean(o):  # NaN is not JSON: write null
        if isinstance(o, float) and o != o:
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    return json.dumps(clean(result), indent=1)


def _ms(v: float) -> str:
    return "nan" if v != v else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"


def _pct(v) -> str:
    return "" if v is None or v != v else f"{v:.0f}%" if abs(v) >= 10 else f"{v:.2g}%"


def _ci(r: dict, k: str, nd: str = ".3g") -> str:
    if r.get(k) is None:
        return ""
    lo, hi = r.get(f"{k}_lo"), r.get(f"{k}_hi")
    s = format(r[k], nd)
    return s + (f" [{format(lo, nd)}, {format(hi, nd)}]" if lo is not None and hi is not None else "")


def _delta(r: dict, k: str) -> str:
    if r.get(k) is None:
        return ""
    unit = "%" if k.endswith("_pct") else ""
    lo, hi = r.get(f"{k}_lo"), r.get(f"{k}_hi")
    s = f"{r[k]:+.3g}{unit}"
    return s + (f" [{lo:+.3g}, {hi:+.3g}]" if lo is not None and hi is not None else "")


def _speedup(r: dict) -> str:
    sp = r.get("decode_speedup")
    if sp is None:
        return ""
    lo, hi = r.get("speedup_lo"), r.get("speedup_hi")
    if lo is not None and hi is not None and r["method"] != "dense":
        s = f"{sp:.3f}x [{lo:.3f}, {hi:.3f}]"
    else:
        rs = r.get("speedup_rounds") or []
        s = f"{sp:.3f}x" + (f" [{min(rs):.2f}–{max(rs):.2f}]" if len(rs) > 1 else "")
    return (s + (f" (re-measured {r['remeasured']}×)" if r.get("remeasured") else "")
            + (" above its ceiling" if r.get("above_ceiling") else ""))


# (header, key whose presence shows the column, cell) for the quality part of the markdown table
_MD_QUALITY = (
    ("ppl [95%]", "ppl", lambda r: _ci(r, "ppl")),
    ("Δppl % vs dense [paired 95%]", "ppl_delta_pct", lambda r: _delta(r, "ppl_delta_pct")),
    ("agreement [95%]", "agreement", lambda r: _ci(r, "agreement")),
    ("cloze acc [95%]", "cloze_acc", lambda r: _ci(r, "cloze_acc")),
    ("Δcloze [paired 95%]", "cloze_acc_delta", lambda r: _delta(r, "cloze_acc_delta")),
    ("MC acc [95%]", "mc_acc", lambda r: _ci(r, "mc_acc")),
    ("ΔMC [paired 95%]", "mc_acc_delta", lambda r: _delta(r, "mc_acc_delta")),
    ("gen ROUGE-L vs dense [95%]", "gen_rougeL", lambda r: _ci(r, "gen_rougeL")),
    ("gen repeated 4-grams [95%]", "gen_rep", lambda r: _ci(r, "gen_rep")),
    ("Δgen ppl under dense % [paired 95%]", "gen_ppl_delta_pct", lambda r: _delta(r, "gen_ppl_delta_pct")),
)


def to_markdown(rows: list[dict], meta: dict | None = None, verdict_rows: list[dict] | None = None) -> str:
    """A readable table (speedup with its interval over rounds, ceiling, roofline share, Pareto flag,
    quality with 95% intervals and paired differences from dense), then the verdicts section."""
    out = []
    if meta:
        m = meta.get("model", {})
        bw = meta.get("bandwidth_gbps")
        sets = meta.get("sets") or {}
        out += [f"model {m.get('model_id', '?')} ({m.get('dtype', '')}, {m.get('device', '')}); "
                f"{meta.get('rounds')} round(s), prompt {meta.get('prompt_tokens')} + {meta.get('new_tokens')} "
                f"new tokens; {meta.get('heldout_texts')} held-out texts"
                + (f" ({sets['text']})" if sets.get("text") else "")
                + (f", {meta.get('cloze_items')} cloze items" if meta.get("cloze_items") else "")
                + f", {meta.get('mc_items')} MC items"
                + (f", {meta.get('gen_prompts')} generations of {meta.get('gen_tokens')} tokens"
                   if meta.get("gen_prompts") else "") + "; "
                + (f"streaming read {bw:.1f} GB/s; " if isinstance(bw, float) and bw == bw else "")
                + "quality intervals: 95% bootstrap; Δ: paired bootstrap on the same texts/items", ""]
    qcols = [c for c in _MD_QUALITY if any(r.get(c[1]) is not None for r in rows)]
    pareto = any("pareto" in r for r in rows)
    head = ["method", "density (run)", "decode ms/token (roofline)", "decode speedup [95%]", "ceiling",
            "% of roofline"] + (["Pareto"] if pareto else []) + [c[0] for c in qcols]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        dens = "1" if r["method"] == "dense" else f"{_fmt(r.get('density_target'))} ({_fmt(r.get('density_run'))})"
        ms, rl = r.get("decode_ms_per_token"), r.get("roofline_ms")
        dec = "" if ms is None else _ms(ms) + ("" if rl is None or rl != rl else f" ({_ms(rl)})")
        cells = [r["method"], dens, dec, _speedup(r),
                 "" if r.get("ceiling") is None else format(r["ceiling"], ".3f") + "x", _pct(r.get("roofline_pct"))]
        if pareto:
            cells.append("yes" if r.get("pareto") else "")
        cells += [c[2](r) for c in qcols]
        out.append("| " + " | ".join(cells) + " |")
    text = "\n".join(out) + "\n"
    if verdict_rows:
        text += "\n" + verdicts_markdown(verdict_rows)
    return text


def model_slug(spec: str) -> str:
    """A folder-safe name for a model spec (``random:llama-1b`` → ``random-llama-1b``; a path or
    ``owner/name``: its last part)."""
    import re

    s = str(spec).strip().rstrip("/")
    if "/" in s:
        s = s.rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-.") or "model"
