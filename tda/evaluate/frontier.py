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
from tda.engine.variant_names import split_speculate
from tda.evaluate.paired import METRICS, delta_columns, deltas_vs
from tda.evaluate.verdicts import (
    cross_verdicts,
    cross_verdicts_markdown,
    pareto_flags,
    primary_metric,
    row_label,
    speed_interval,
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
    vs = variants(quality_methods(ms), list(densities))  # checks every method name and density
    return ms, sorted({v.density for v in vs if v.density is not None})


def quality_methods(methods: list[str]) -> list[str]:
    """The methods whose quality a frontier scores: each speculative variant (``tt+spec4``) is scored
    as its base method (the same tokens and logits; :func:`tda.evaluate.verdicts.row_label`)."""
    return list(dict.fromkeys(split_speculate(m)[0] for m in methods))


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
        qr = q.get(_key(quality_methods([r["method"]])[0], r.get("density_target")), {})
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
                 max_rounds: int | None = None, sets: dict | None = None, corpora: list[dict] | None = None,
                 batch_tokens: int | None = None, journal=None,
                 progress: Callable[[str], None] | None = None) -> dict:
    """Bench + quality for ``methods`` × ``densities``; ``{"rows", "verdicts", "meta", "bench", "quality"}``.

    ``corpora``: several corpora ``[{"name", "texts", "cloze"}]`` (``heldout``/``cloze`` ignored;
    ``limit``/``cloze_limit`` apply to each): one bench, quality on each corpus (multiple choice on
    the first only), and the result also has ``"corpora": {name: {"rows", "verdicts", "quality",
    "texts", "cloze_items"}}`` and ``"cross_verdicts"`` (:func:`tda.evaluate.verdicts.cross_verdicts`);
    ``rows``/``verdicts``/``quality`` are then the pooled ones (every corpus's units together).

    ``heldout``: texts for perplexity and agreement (default: the default text set of
    :mod:`tda.common.evalsets`), the first ``limit``; ``mc_limit``: multiple-choice items (-1 or
    None: all, 0: skip); ``cloze``: last-word items (the first ``cloze_limit``); ``gen_prompts``:
    greedy continuations of ``gen_tokens`` tokens from the first that many texts (0: skip).
    ``target_ci``/``max_rounds``: the bench stops rounds early (:func:`tda.evaluate.bench.run_bench`).
    ``journal`` (:class:`tda.evaluate.journal.Journal`): the perplexity and cloze scoring of every
    corpus resume from it and append to it (the bench is timed again: timings are not journalled).
    """
    from tda.common.evalsets import DEFAULT_TEXT_SET, get_set
    from tda.evaluate.bench import machine_info, run_bench
    from tda.evaluate.quality import run_eval

    ms, ds = check_frontier_args(methods, densities, dense_only=getattr(lm, "weight_format", None) == "gguf")
    if limit is not None and limit < 1:
        raise BadInput("the held-out text limit must be >= 1")
    if not corpora:
        corpora = [{"name": (sets or {}).get("text"),
                    "texts": list(heldout) if heldout is not None else get_set(DEFAULT_TEXT_SET).load(),
                    "cloze": cloze}]
    corpora = [{"name": c.get("name") or f"corpus{j + 1}", "texts": [t for t in c["texts"] if t.strip()][:limit],
                "cloze": list(c.get("cloze") or [])[:cloze_limit]} for j, c in enumerate(corpora)]
    if len({c["name"] for c in corpora}) != len(corpora):
        raise BadInput("give each corpus once")
    for c in corpora:
        if not c["texts"]:
            raise BadInput(f"no held-out texts in {c['name']}")
    texts = [t for c in corpora for t in c["texts"]]
    cloze_items = [it for c in corpora for it in c["cloze"]]
    t0 = time.perf_counter()
    if progress:
        progress(f"bench: {len(ms)} methods × {len(ds)} densities, {rounds} round(s) + warm-up")
    bench = run_bench(lm, methods=tuple(ms), densities=ds, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                      rounds=rounds, calibration_texts=calibration_texts, bandwidth_mb=bandwidth_mb,
                      target_ci=target_ci, max_rounds=max_rounds, progress=progress)
    per_corpus: dict[str, dict] = {}
    qs = []
    for j, c in enumerate(corpora):
        mc = (-1 if mc_limit is None else mc_limit) if j == 0 else 0
        if progress:
            progress(f"quality{' on ' + c['name'] if len(corpora) > 1 else ''}: {len(c['texts'])} held-out texts, "
                     f"{len(c['cloze'])} cloze items, {min(gen_prompts, len(c['texts']))} generations"
                     + ("" if mc == 0 else f", multiple choice ({'all' if mc < 0 else mc} items)"))
        q = run_eval(lm, quality_methods(ms), ds, heldout=c["texts"], summaries=[], mc_limit=mc, cett=cett, progress=progress,
                     boot_iters=boot_iters, seed=seed, cloze=c["cloze"],
                     gen_texts=c["texts"][:gen_prompts] if gen_prompts else [], gen_tokens=gen_tokens,
                     batch_tokens=batch_tokens, journal=journal)
        qs.append(q)
        if len(corpora) > 1:
            crows = join_rows(bench, q, boot_iters=boot_iters, seed=seed)
            for r in crows:
                r["corpus"] = c["name"]
            per_corpus[c["name"]] = {"rows": crows, "verdicts": verdicts(crows, q, iters=boot_iters, seed=seed),
                                     "texts": len(c["texts"]), "cloze_items": len(c["cloze"]),
                                     "quality": {k: q[k] for k in _KEEP if k in q}}
    quality = qs[0] if len(qs) == 1 else pool_quality(qs, quality_methods(ms), ds, boot_iters=boot_iters, seed=seed)
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
        "batch_tokens": batch_tokens, "seconds": round(time.perf_counter() - t0, 1), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if journal is not None:  # a run resumed over several processes: what its scoring cost in all
        meta["journal_scoring"] = journal.scoring_time()
    out = {"rows": rows, "verdicts": vrows, "meta": meta, "bench": bench,
           "quality": {k: quality[k] for k in _KEEP if k in quality}}
    if len(corpora) > 1:
        for r in rows:
            r["corpus"] = "pooled"
        out["corpora"] = per_corpus
        out["cross_verdicts"] = cross_verdicts({n: p["verdicts"] for n, p in per_corpus.items()}, vrows)
        meta["corpora"] = [{"name": c["name"], "texts": len(c["texts"]), "cloze_items": len(c["cloze"])}
                           for c in corpora]
    return out


_KEEP = ("rows", "per_text", "mc_per_item", "cloze_per_item", "gen_per_text", "gen_outputs", "meta")


def pool_quality(qs: list[dict], methods: list[str], densities: list[float], *, boot_iters: int = 1000,
                 seed: int = 0) -> dict:
    """Several corpora's quality results as one: every per-unit list concatenated (corpus order;
    a group only when every result that has it has it for the label), and rows recomputed from
    the pooled units (the same 95% bootstrap)."""
    from tda.evaluate.quality import Variant, unit_intervals

    pooled: dict = {}
    for g in ("per_text", "gen_per_text"):
        have = [q[g] for q in qs if q.get(g)]
        if not have:
            continue
        labels = [lab for lab in have[0] if all(lab in h for h in have)]
        pooled[g] = {lab: {f: [x for h in have for x in h[lab][f]] for f in have[0][lab]
                           if all(f in h[lab] for h in have)} for lab in labels}
    for g in ("cloze_per_item", "mc_per_item"):
        have = [q[g] for q in qs if q.get(g)]
        if have:
            labels = [lab for lab in have[0] if all(lab in h for h in have)]
            pooled[g] = {lab: [x for h in have for x in h[lab]] for lab in labels}
    rows = []
    vs = [Variant("dense", None)] + [Variant(m, d) for m in methods if m != "dense" for d in densities]
    for v in vs:
        row = {"method": v.method, "density": 1.0 if v.density is None else v.density}
        row.update(unit_intervals(pooled, v.label, METRICS, iters=boot_iters, seed=seed))
        for k, g in (("cloze_items", "cloze_per_item"), ("mc_items", "mc_per_item")):
            if v.label in pooled.get(g, {}):
                row[k] = len(pooled[g][v.label])
        if v.label in pooled.get("gen_per_text", {}):
            row["gen_items"] = sum(q["rows"][0].get("gen_items", 0) for q in qs)
        rows.append(row)
    gen_outputs = {}
    for q in qs:
        for lab, texts in (q.get("gen_outputs") or {}).items():
            gen_outputs.setdefault(lab, []).extend(texts)
    return {"rows": rows, **pooled, "gen_outputs": gen_outputs}


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
    """Every column of :data:`COLUMNS` present in any row (``corpus`` first when the rows carry it);
    ``speedup_rounds`` joined with ``;``; a speed interval from fewer than 3 rounds written ``n/a``."""
    cols = [c for c in ("corpus", *COLUMNS) if any(c in r for r in rows)]

    def cell(r, c):
        if c in ("speedup_lo", "speedup_hi") and r.get("method") != "dense" and speed_interval(r) is None:
            return "n/a"
        return _fmt(r.get(c))

    lines = [",".join(cols)] + [",".join(cell(r, c) for c in cols) for r in rows]
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
    iv = speed_interval(r)
    rs = r.get("speedup_rounds") or []
    if r["method"] != "dense" and iv is None:
        s = f"{sp:.3f}x [n/a: {len(rs)} round(s)" + (f", {min(rs):.2f}–{max(rs):.2f}]" if len(rs) > 1 else "]")
    elif r["method"] != "dense":
        s = f"{sp:.3f}x [{iv[0]:.3f}, {iv[1]:.3f}]"
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
        out += [f"model {m.get('model_id', '?')} ({m.get('format') or m.get('dtype', '')}, {m.get('device', '')}); "
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


def result_markdown(result: dict) -> str:
    """frontier.md of a run: :func:`to_markdown` of its rows; with several corpora the verdicts that
    hold across them first, then the pooled table, then one table per corpus."""
    meta = result.get("meta")
    if not result.get("corpora"):
        return to_markdown(result["rows"], meta, result.get("verdicts"))
    names = ", ".join(f"{n} ({c['texts']} texts, {c['cloze_items']} cloze items)" for n, c in result["corpora"].items())
    out = [f"# Frontier on {len(result['corpora'])} corpora: {names}", "",
           cross_verdicts_markdown(result.get("cross_verdicts") or []),
           "## Pooled (every corpus's texts and items together)", "",
           to_markdown(result["rows"], meta, result.get("verdicts"))]
    for name, c in result["corpora"].items():
        out += [f"## {name}", "", to_markdown(c["rows"], None, c.get("verdicts"))]
    return "\n".join(out)


def result_csv(result: dict) -> str:
    """frontier.csv of a run: its rows; with several corpora the pooled rows then each corpus's,
    told apart by the ``corpus`` column."""
    rows = list(result["rows"])
    for c in (result.get("corpora") or {}).values():
        rows += c["rows"]
    return to_csv(rows)
