"""Page 5 (Generate): dense vs a sparse method on the same prompt."""

from __future__ import annotations

import statistics

REPEATS = 3  # paired timed repeats (dense and sparse alternate) per Generate press


def generate_pair(lm, prompt: str, method: str, *, density, cett: float, max_new_tokens: int,
                  warmup: bool = True, repeats: int = REPEATS, progress=None) -> dict:
    """Dense and ``method`` greedy generations of the same prompt (:func:`tda.engine.generate.generate`),
    each timed ``repeats`` times in alternating order (dense first, then sparse first, ...).

    Both produce exactly ``max_new_tokens`` tokens (``min_new_tokens``) so that timings compare.
    ``timings`` of each side are the medians over the repeats; ``runs`` keeps every repeat's.
    """
    from app.views.captures import token_label
    from tda.engine.generate import generate

    sides = {"dense": ("dense", {}), "sparse": (method, {"density": density, "cett": cett})}
    if warmup:  # first calls pay one-time costs (probes, allocation): keep them out of the timings
        if progress:
            progress("warm-up (2 tokens each, not timed)…")
        for name, kw in sides.values():
            generate(lm, prompt, name, max_new_tokens=2, **kw)
    out: dict = {}
    runs: dict[str, list[dict]] = {"dense": [], "sparse": []}
    for r in range(max(1, int(repeats))):
        for side in (("dense", "sparse") if r % 2 == 0 else ("sparse", "dense")):
            name, kw = sides[side]
            if progress:
                progress(f"repeat {r + 1}/{repeats}: {name}, {max_new_tokens} tokens…")
            res = generate(lm, prompt, name, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, **kw)
            runs[side].append(res.timings)
            if side not in out:
                out[side] = {
                    "method": res.method, "text": res.texts[0], "token_ids": list(res.token_ids[0]),
                    "tokens": [token_label(lm.tokenizer, i) for i in res.token_ids[0]],
                    "density": res.density, "density_per_layer": res.density_per_layer[0],
                }
    for side in ("dense", "sparse"):
        out[side]["timings"] = {k: statistics.median(t[k] for t in runs[side])
                                for k in ("prefill_s", "decode_ms_per_token", "total_s", "new_tokens")}
    out["runs"] = runs
    first = divergence(out["dense"]["token_ids"], out["sparse"]["token_ids"])["first"]
    out["sparse"]["shared_text"] = (None if first is None else
                                    lm.tokenizer.decode(out["sparse"]["token_ids"][:first], skip_special_tokens=True))
    return out


def divergence(a: list[int], b: list[int]) -> dict:
    """Where token sequence ``b`` first leaves ``a`` (None when it never does, over the shorter
    length) and the fraction of positions with the same token."""
    n = min(len(a), len(b))
    first = next((i for i in range(n) if a[i] != b[i]), None)
    same = sum(a[i] == b[i] for i in range(n))
    return {"first": first, "agreement": same / n if n else float("nan"), "n": n}


def paired_ratios(pair: dict, key: str) -> list[float]:
    """Dense ÷ sparse ``key`` of each repeat (its own pair of runs)."""
    return [d[key] / s[key] for d, s in zip(pair["runs"]["dense"], pair["runs"]["sparse"], strict=True) if s[key]]


def agreement_figure(pair: dict, title: str = ""):
    """Dense and sparse tokens in two rows; cells coloured by whether the position agrees, a line at
    the first divergence."""
    import plotly.graph_objects as go

    from app.figures import BLUE, VERMILLION, tidy

    d, s = pair["dense"]["tokens"], pair["sparse"]["tokens"]
    dv = divergence(pair["dense"]["token_ids"], pair["sparse"]["token_ids"])
    n = max(len(d), len(s))
    same = [1.0 if i < dv["n"] and pair["dense"]["token_ids"][i] == pair["sparse"]["token_ids"][i] else 0.0
            for i in range(n)]
    rows = [d + [""] * (n - len(d)), s + [""] * (n - len(s))]
    fig = go.Figure(go.Heatmap(
        z=[same, same], x=list(range(n)), y=["dense", "sparse"], text=rows, texttemplate="%{text}",
        textfont={"size": 10, "color": "white"}, zmin=0, zmax=1, showscale=False,
        colorscale=[[0, VERMILLION], [0.5, VERMILLION], [0.5, BLUE], [1, BLUE]],
        hovertemplate="position %{x}: %{text}<extra></extra>", xgap=1, ygap=2,
    ))
    if dv["first"] is not None:
        fig.add_vline(x=dv["first"] - 0.5, line={"color": "black", "width": 2, "dash": "dash"})
        fig.add_annotation(x=dv["first"] - 0.5, y=1.0, yref="paper", yanchor="bottom", showarrow=False,
                           text=f"first divergence: token {dv['first']}", font={"size": 11})
    fig.update_xaxes(title="generated token position", dtick=1 if n <= 40 else None)
    fig.update_yaxes(autorange="reversed")
    return tidy(fig, title, height=230, legend=False)


def density_note(method: str, density, used: float, cett: float) -> str:
    """One line on the density the sparse run kept against the one asked for."""
    from tda.engine.methods.registry import get_method

    kind = get_method(method).kind
    if density is None:
        return f"{method} at its calibrated CETT {cett:g} thresholds (no target density): kept {used:.3f}."
    if kind in ("token", "combo"):
        return (f"{method}'s thresholds were calibrated to keep {density:g} on the shipped corpus; on this prompt's "
                f"tokens they kept {used:.3f} (mean over layers and decode steps), so the two differ a little.")
    return f"{method} keeps {density:g} of the neurons per layer (k rounded to whole neurons: {used:.3f})."


def marked_text(pair: dict) -> str:
    """The sparse text as HTML: the part shared with dense plain, from the first divergence on
    highlighted (orange, colour-blind safe) after a ▶ mark."""
    import html

    text, shared = pair["sparse"]["text"], pair["sparse"].get("shared_text")
    if shared is None or not text.startswith(shared):
        body = html.escape(text)
    else:
        body = (html.escape(shared) + '<b title="first divergence from dense">▶</b>'
                + f'<mark style="background:#E69F00;color:black">{html.escape(text[len(shared):])}</mark>')
    return ('<div style="font-family:monospace;white-space:pre-wrap;border:1px solid #ddd;border-radius:6px;'
            f'padding:8px;max-height:180px;overflow:auto">{body}</div>')


def generate_view(pair: dict) -> dict:
    """Page 5: the side-by-side rows, the speedups (median of paired repeats, with their range) and
    the token agreement."""
    d, s = pair["dense"]["timings"], pair["sparse"]["timings"]
    dec, tot = paired_ratios(pair, "decode_ms_per_token"), paired_ratios(pair, "total_s")
    nan = float("nan")
    rows = [
        {"": name, "method": p["method"], "FFN density": round(p["density"], 3),
         "prefill ms": round(p["timings"]["prefill_s"] * 1000, 1),
         "decode ms/token": round(p["timings"]["decode_ms_per_token"], 2),
         "decode ms/token, each repeat": ", ".join(f"{t['decode_ms_per_token']:.3g}" for t in pair["runs"][name]),
         "total s": round(p["timings"]["total_s"], 3), "new tokens": p["timings"]["new_tokens"]}
        for name, p in (("dense", pair["dense"]), ("sparse", pair["sparse"]))
    ]
    return {"rows": rows,
            "decode_speedup": statistics.median(dec) if dec else nan,
            "decode_spread": (min(dec), max(dec)) if dec else (nan, nan),
            "total_speedup": statistics.median(tot) if tot else nan,
            "total_spread": (min(tot), max(tot)) if tot else (nan, nan),
            "repeats": len(dec),
            "divergence": divergence(pair["dense"]["token_ids"], pair["sparse"]["token_ids"]),
            "medians": (d, s)}


# ----- methods (the frontier tab: app/views/frontier.py) -----------------------------------------


def sparse_methods() -> list[str]:
    """Every sparse method the engine has (:data:`tda.engine.generate.METHODS` without ``dense``)."""
    from tda.engine.generate import METHODS

    return [m for m in METHODS if m != "dense"]


def method_label(method: str) -> str:
    """``name — one-line description`` from the method registry (the class's ``summary``)."""
    from tda.engine.methods.registry import get_method

    try:
        summary = get_method(method).summary
    except Exception:  # noqa: BLE001 - an unknown name still gets a label
        return method
    head, sep, tail = summary.partition(": ")
    if sep and head.replace(" ", "").lower() == method.lower():
        summary = tail
    return f"{method} — {summary}"

