"""Page 5 (Generate): dense vs a sparse method on the same prompt."""

from __future__ import annotations


def generate_pair(lm, prompt: str, method: str, *, density, cett: float, max_new_tokens: int,
                  warmup: bool = True, progress=None) -> dict:
    """Dense and ``method`` greedy generations of the same prompt (:func:`tda.engine.generate.generate`).

    Both produce exactly ``max_new_tokens`` tokens (``min_new_tokens``) so that timings compare.
    """
    from tda.engine.generate import generate

    runs = (("dense", {}), (method, {"density": density, "cett": cett}))
    if warmup:  # first calls pay one-time costs (probes, allocation): keep them out of the timings
        if progress:
            progress("warm-up (2 tokens each, not timed)…")
        for name, kw in runs:
            generate(lm, prompt, "dense" if name == "dense" else method, max_new_tokens=2, **kw)
    out = {}
    for name, kw in runs:
        if progress:
            progress(f"{name}: generating {max_new_tokens} tokens…")
        r = generate(lm, prompt, "dense" if name == "dense" else method, max_new_tokens=max_new_tokens,
                     min_new_tokens=max_new_tokens, **kw)
        out["dense" if name == "dense" else "sparse"] = {
            "method": r.method, "text": r.texts[0], "density": r.density,
            "density_per_layer": r.density_per_layer[0], "timings": r.timings,
        }
    return out


def generate_view(pair: dict) -> dict:
    """Page 5: the side-by-side rows and the speedups (ratios of the measured timings)."""
    d, s = pair["dense"]["timings"], pair["sparse"]["timings"]

    def ratio(a, b):
        return a / b if b else float("nan")

    rows = [
        {"": name, "method": p["method"], "FFN density": round(p["density"], 3),
         "prefill ms": round(p["timings"]["prefill_s"] * 1000, 1),
         "decode ms/token": round(p["timings"]["decode_ms_per_token"], 2),
         "total s": round(p["timings"]["total_s"], 3), "new tokens": p["timings"]["new_tokens"]}
        for name, p in (("dense", pair["dense"]), ("sparse", pair["sparse"]))
    ]
    return {"rows": rows,
            "decode_speedup": ratio(d["decode_ms_per_token"], s["decode_ms_per_token"]),
            "total_speedup": ratio(d["total_s"], s["total_s"])}


# ----- methods and the quality × speed frontier ------------------------------------------------------
RESULTS_ENV = "TDA_RESULTS_DIR"  # where frontier results are looked for (default benchmarks/results)
METHOD_LABELS = {"tda": "TDA", "griffin": "Griffin", "tt": "TT (token-wise threshold)",
                 "static": "static (weight magnitudes)", "random": "random"}
SMALL_FRONTIER = dict(rounds=1, prompt_tokens=16, new_tokens=8, limit=4, mc_limit=8, bandwidth_mb=64,
                      boot_iters=500)


def sparse_methods() -> list[str]:
    """Every sparse method the engine has (:data:`tda.engine.generate.METHODS` without ``dense``)."""
    from tda.engine.generate import METHODS

    return [m for m in METHODS if m != "dense"]


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def results_dir():
    import os
    from pathlib import Path

    from tda.common.paths import REPO_ROOT

    env = os.environ.get(RESULTS_ENV, "").strip()
    return Path(env) if env else REPO_ROOT / "benchmarks" / "results"


def find_frontier(model_id: str, dtype: str | None = None, root=None) -> tuple[str, dict] | None:
    """The newest ``*/frontier.json`` under ``root`` (default :func:`results_dir`) made with
    ``model_id`` (the same dtype preferred): ``(path, result)``, or None."""
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
        if model.get("model_id") == model_id and data.get("rows"):
            same_dtype = dtype is None or model.get("dtype") == dtype
            found.append((same_dtype, data["meta"].get("timestamp", ""), str(path), data))
    if not found:
        return None
    best = max(found, key=lambda f: (f[0], f[1]))
    return best[2], best[3]


def small_frontier(lm, methods: list[str], densities: list[float], *, progress=None) -> dict:
    """A quick frontier for the page: 4 held-out texts, 8 multiple-choice items, one timed round."""
    from tda.common.data import load_texts
    from tda.evaluate.frontier import run_frontier

    return run_frontier(lm, methods, densities, progress=progress,
                        calibration_texts=load_texts(limit=4) if lm.is_random else None, **SMALL_FRONTIER)


def frontier_view(result: dict) -> dict:
    """The figure (:func:`tda.evaluate.frontier_plots.frontier_figure`), the table rows and a caption."""
    from tda.evaluate.frontier_plots import frontier_figure, frontier_title

    meta = result.get("meta", {})
    fig = frontier_figure(result["rows"], title=frontier_title(meta))
    fig.update_layout(width=None)  # the page sets the width
    rows = []
    for r in result["rows"]:
        rows.append({
            "method": r["method"], "density": r.get("density_target") or 1.0,
            "density run": _round(r.get("density_run"), 3), "decode speedup": _round(r.get("decode_speedup"), 3),
            "bytes ceiling": _round(r.get("ceiling"), 3), "% of roofline": _round(r.get("roofline_pct"), 1),
            "ppl": _round(r.get("ppl"), 3), "ppl 95%": _interval(r, "ppl"),
            "agreement": _round(r.get("agreement"), 3), "agreement 95%": _interval(r, "agreement"),
            "MC acc": _round(r.get("mc_acc"), 3), "MC 95%": _interval(r, "mc_acc"),
        })
    m = meta.get("model", {})
    bw = meta.get("bandwidth_gbps")
    caption = (f"{m.get('model_id', '?')} ({m.get('dtype', '')}), {meta.get('rounds')} timed round(s), "
               f"{meta.get('heldout_texts')} held-out texts, {meta.get('mc_items')} multiple-choice items"
               + (f", streaming read {bw:.1f} GB/s" if isinstance(bw, (int, float)) else "")
               + (f", {meta['timestamp']}" if meta.get("timestamp") else ""))
    return {"figure": fig, "rows": rows, "caption": caption}


def _round(x, nd):
    return None if not isinstance(x, (int, float)) or x != x else round(float(x), nd)


def _interval(r: dict, k: str) -> str:
    lo, hi = r.get(f"{k}_lo"), r.get(f"{k}_hi")
    if not isinstance(lo, (int, float)) or not isinstance(hi, (int, float)):
        return ""
    return f"[{lo:.4g}, {hi:.4g}]"
