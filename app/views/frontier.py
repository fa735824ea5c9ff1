"""Page 5 (Generate), frontier tab: stored `tda frontier` runs, a small run here, and the view of one."""

from __future__ import annotations

RESULTS_ENV = "TDA_RESULTS_DIR"  # where frontier results are looked for (default benchmarks/results)
SMALL_FRONTIER = dict(rounds=1, prompt_tokens=16, new_tokens=8, limit=4, mc_limit=8, cloze_limit=8, gen_prompts=2,
                      gen_tokens=16, bandwidth_mb=64, boot_iters=500)


def results_dir():
    import os
    from pathlib import Path

    from tda.common.paths import REPO_ROOT

    env = os.environ.get(RESULTS_ENV, "").strip()
    return Path(env) if env else REPO_ROOT / "benchmarks" / "results"


def stored_runs(model_id: str, dtype: str | None = None, root=None) -> list[tuple[str, dict]]:
    """Every ``*/frontier.json`` under ``root`` (default :func:`results_dir`) with rows, as
    ``(path, result)``: runs of ``model_id`` first (the same dtype, then the newest first), then the
    other models' runs (newest first)."""
    import json
    from pathlib import Path

    root = Path(root) if root is not None else results_dir()
    found = []
    for path in sorted(root.glob("*/frontier.json")) + sorted(root.glob("frontier.json")):
        try:
            data = json.loads(path.read_text())
            model = data["meta"]["model"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if data.get("rows"):
            mine = model.get("model_id") == model_id
            same_dtype = mine and (dtype is None or _format(model.get("format") or model.get("dtype")) == _format(dtype))
            found.append(((mine, same_dtype, data["meta"].get("timestamp", "")), str(path), data))
    found.sort(key=lambda f: f[0], reverse=True)
    return [(p, d) for _, p, d in found]


def _format(name: str | None) -> str | None:
    """A weight format's short name: torch dtype names (``float32``) as ``fp32``/``bf16``/``fp16``."""
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(name, name)


def find_frontier(model_id: str, dtype: str | None = None, root=None) -> tuple[str, dict] | None:
    """The best stored run of ``model_id`` (:func:`stored_runs`'s first), or None."""
    runs = stored_runs(model_id, dtype, root)
    if not runs or runs[0][1]["meta"]["model"].get("model_id") != model_id:
        return None
    return runs[0]


def run_label(path: str, result: dict) -> str:
    from pathlib import Path

    meta = result.get("meta", {})
    m = meta.get("model", {})
    return (f"{Path(path).parent.name} — {m.get('model_id', '?')} ({m.get('dtype', '')}), "
            f"{meta.get('timestamp', '')}")


def small_frontier(lm, methods: list[str], densities: list[float], *, progress=None) -> dict:
    """A quick frontier for the page (:data:`SMALL_FRONTIER`: a few texts, cloze and MC items, one round)."""
    from tda.common.data import load_texts
    from tda.common.evalsets import DEFAULT_CLOZE_SET, DEFAULT_TEXT_SET, get_set
    from tda.evaluate.frontier import run_frontier

    kw = dict(SMALL_FRONTIER)
    cloze = get_set(DEFAULT_CLOZE_SET).load() if kw.get("cloze_limit") else None
    return run_frontier(lm, methods, densities, progress=progress, cloze=cloze,
                        sets={"text": DEFAULT_TEXT_SET, "cloze": DEFAULT_CLOZE_SET if cloze else None},
                        calibration_texts=load_texts(limit=4) if lm.is_random else None, **kw)


PAGE_RUN = "page"  # the choice id of the run made on the page


def run_choices(here: dict | None, runs: list[tuple[str, dict]]) -> list[tuple[str, str, dict]]:
    """``(id, label, result)`` of every run the tab can show: the one run on this page first (when
    there is one), then the stored ones (:func:`stored_runs`). The ids are stable (the page run's,
    each stored run's path), so the selector keeps naming the run that is plotted."""
    out = []
    if here is not None:
        ts = here.get("meta", {}).get("timestamp", "")
        out.append((PAGE_RUN, f"run on this page{' — ' + ts if ts else ''}", here))
    out += [(path, run_label(path, res), res) for path, res in runs]
    return out


def result_methods(result: dict) -> list[str]:
    """The sparse methods of a result, in row order."""
    return list(dict.fromkeys(r["method"] for r in result["rows"] if r["method"] != "dense"))


def pareto_methods(result: dict) -> list[str]:
    """The sparse methods with at least one row on the Pareto set (the tab's default filter)."""
    return [m for m in result_methods(result) if any(r["method"] == m and r.get("pareto") for r in result["rows"])]


def result_densities(result: dict) -> list[float]:
    """The target densities of a result's sparse rows, ascending."""
    return sorted({float(r["density_target"]) for r in result["rows"]
                   if r["method"] != "dense" and r.get("density_target") is not None})


def result_corpora(result: dict) -> list[str]:
    """``["pooled", <corpus>, ...]`` for a run on several corpora; ``[]`` for one corpus."""
    return ["pooled", *result["corpora"]] if result.get("corpora") else []


def _corpus_part(result: dict, corpus: str | None) -> tuple[list[dict], list[dict]]:
    if corpus and corpus != "pooled" and corpus in (result.get("corpora") or {}):
        c = result["corpora"][corpus]
        return c["rows"], c.get("verdicts") or []
    return result["rows"], result.get("verdicts") or []


def cross_verdict_rows(result: dict, methods: list[str] | None = None) -> list[dict]:
    """The verdicts across corpora of a run on several corpora (holding ones first), for a table."""
    keep = set(methods) if methods is not None else None
    order = {"holds": 0, "corpus-dependent": 1}
    vs = [v for v in result.get("cross_verdicts") or [] if keep is None or (v["a"] in keep and v["b"] in keep)]
    return [{"density": v["density"], "A": v["a"], "B": v["b"], "status": v["status"], "verdict": v["verdict"],
             "pooled": v.get("pooled"), "per corpus": v["text"]}
            for v in sorted(vs, key=lambda v: (order.get(v["status"], 2), v["density"]))]


def frontier_view(result: dict, methods: list[str] | None = None, *, deltas: bool = False,
                  density: float | None = None, corpus: str | None = None) -> dict:
    """The figure (:func:`tda.evaluate.frontier_plots.frontier_figure`; ``methods``: only these and
    dense; ``density``: only the rows at that density, and dense; ``deltas``: paired differences from
    dense; ``corpus``: one corpus of a run on several, default the pooled rows), the table rows, the
    verdicts and a caption."""
    from tda.evaluate.frontier_plots import frontier_figure, frontier_title

    meta = result.get("meta", {})
    all_rows, all_verdicts = _corpus_part(result, corpus)
    keep = set(methods) | {"dense"} if methods is not None else None
    shown = [r for r in all_rows if (keep is None or r["method"] in keep)
             and (density is None or r["method"] == "dense"
                  or (r.get("density_target") is not None and abs(float(r["density_target"]) - density) < 1e-9))]
    title = frontier_title(meta)
    if density is not None:
        title = title.replace("<br>", f" — density {density:g}<br>", 1)
    if corpus and result.get("corpora"):
        title = title.replace("<br>", f" — {corpus}<br>", 1)
    fig = frontier_figure(shown, title=title, deltas=deltas)
    fig.update_layout(width=None)  # the page sets the width
    rows = []
    for r in shown:
        rows.append({
            "method": r["method"], "density": r.get("density_target") or 1.0,
            "density run": _round(r.get("density_run"), 3), "decode speedup": _round(r.get("decode_speedup"), 3),
            "speedup 95%": _speed_interval(r),
            "bytes ceiling": _round(r.get("ceiling"), 3), "% of roofline": _round(r.get("roofline_pct"), 1),
            "Pareto": r.get("pareto"),
            "ppl": _round(r.get("ppl"), 3), "ppl 95%": _interval(r, "ppl"),
            "Δppl %": _round(r.get("ppl_delta_pct"), 2), "Δppl % 95% (paired)": _interval(r, "ppl_delta_pct"),
            "agreement": _round(r.get("agreement"), 3), "agreement 95%": _interval(r, "agreement"),
            "cloze acc": _round(r.get("cloze_acc"), 3), "Δcloze 95% (paired)": _interval(r, "cloze_acc_delta"),
            "MC acc": _round(r.get("mc_acc"), 3), "MC 95%": _interval(r, "mc_acc"),
            "ΔMC 95% (paired)": _interval(r, "mc_acc_delta"),
            "gen ROUGE-L": _round(r.get("gen_rougeL"), 3), "gen repeated 4-grams": _round(r.get("gen_rep"), 3),
            "Δgen ppl % 95% (paired)": _interval(r, "gen_ppl_delta_pct"),
        })
    rows = [{k: v for k, v in row.items() if any(x.get(k) not in (None, "") for x in rows)} for row in rows]
    verdict_rows = [{"density": v["density"], "A": v["a"], "B": v["b"], "verdict": v["verdict"], "numbers": v["text"]}
                    for v in all_verdicts
                    if (keep is None or (v["a"] in keep and v["b"] in keep))
                    and (density is None or abs(float(v["density"]) - density) < 1e-9)]
    m = meta.get("model", {})
    bw = meta.get("bandwidth_gbps")
    sets = meta.get("sets") or {}
    caption = (f"{m.get('model_id', '?')} ({m.get('dtype', '')}), {meta.get('rounds_run', meta.get('rounds'))} timed "
               f"round(s), {meta.get('heldout_texts')} held-out texts"
               + (f" ({sets['text']})" if sets.get("text") else "")
               + (f", {meta['cloze_items']} cloze items" if meta.get("cloze_items") else "")
               + f", {meta.get('mc_items')} multiple-choice items"
               + (f", {meta['gen_prompts']} generations" if meta.get("gen_prompts") else "")
               + (f", streaming read {bw:.1f} GB/s" if isinstance(bw, (int, float)) else "")
               + (f", {meta['timestamp']}" if meta.get("timestamp") else "")
               + ("; speed intervals n/a (fewer than 3 timed rounds)"
                  if any(_speed_interval(r).startswith("n/a") for r in shown) else ""))
    return {"figure": fig, "rows": rows, "verdicts": verdict_rows, "caption": caption}


def _round(x, nd):
    return None if not isinstance(x, (int, float)) or isinstance(x, bool) or x != x else round(float(x), nd)


def _speed_interval(r: dict) -> str:
    """The speed interval cell: "n/a (N round(s))" below 3 rounds (no interval), blank for dense."""
    from tda.evaluate.verdicts import speed_interval

    if r["method"] == "dense":
        return ""
    iv = speed_interval(r)
    if iv is None:
        return f"n/a ({len(r.get('speedup_rounds') or [])} round(s))"
    return f"[{iv[0]:.4g}, {iv[1]:.4g}]"


def _interval(r: dict, k: str, lo_key: str | None = None, hi_key: str | None = None) -> str:
    lo, hi = r.get(lo_key or f"{k}_lo"), r.get(hi_key or f"{k}_hi")
    if not isinstance(lo, (int, float)) or not isinstance(hi, (int, float)) or r["method"] == "dense" and k == "speedup":
        return ""
    return f"[{lo:.4g}, {hi:.4g}]"
