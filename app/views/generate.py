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


# ----- methods (the frontier tab: app/views/frontier.py) -----------------------------------------
METHOD_LABELS = {"tda": "TDA", "griffin": "Griffin", "tt": "TT (token-wise threshold)",
                 "static": "static (weight magnitudes)", "random": "random"}


def sparse_methods() -> list[str]:
    """Every sparse method the engine has (:data:`tda.engine.generate.METHODS` without ``dense``)."""
    from tda.engine.generate import METHODS

    return [m for m in METHODS if m != "dense"]


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)
