"""Page 5 (Generate): dense vs a sparse method on the same prompt."""

from __future__ import annotations

import statistics

REPEATS = 3  # paired timed repeats (dense and sparse alternate) per Generate press


def speculative_available(lm) -> bool:
    """Whether ``lm`` can decode with a speculative lm_head (:mod:`tda.engine.speculate`)."""
    from tda.common.errors import BadInput
    from tda.engine.speculate import check_speculative

    try:
        check_speculative(lm)
    except BadInput:
        return False
    return True


def generate_pair(lm, prompt: str, method: str, *, density, cett: float, max_new_tokens: int,
                  warmup: bool = True, repeats: int = REPEATS, progress=None, speculate: int = 0) -> dict:
    """Dense and ``method`` greedy generations of the same prompt (:func:`tda.engine.generate.generate`),
    each timed ``repeats`` times in alternating order (dense first, then sparse first, ...).

    Both produce exactly ``max_new_tokens`` tokens (``min_new_tokens``) so that timings compare.
    ``timings`` of each side are the medians over the repeats; ``runs`` keeps every repeat's.
    ``speculate=K``: the sparse side decodes with a speculative lm_head of up to K drafts
    (:func:`tda.engine.speculate.generate_speculative`: its own greedy tokens; it ends at a stop token)
    and ``pair["sparse"]["speculative"]`` holds its counts.
    """
    from app.views.captures import token_label
    from tda.engine.generate import generate
    from tda.engine.speculate import generate_speculative

    def run(name, tokens, **kw):
        if speculate and name != "dense":
            return generate_speculative(lm, prompt, name, max_new_tokens=tokens, k=speculate, **kw)
        return generate(lm, prompt, name, max_new_tokens=tokens, min_new_tokens=tokens, **kw)

    sides = {"dense": ("dense", {}), "sparse": (method, {"density": density, "cett": cett})}
    if warmup:  # first calls pay one-time costs (probes, allocation): keep them out of the timings
        if progress:
            progress("warm-up (2 tokens each, not timed)…")
        for name, kw in sides.values():
            run(name, 2, **kw)
    out: dict = {}
    runs: dict[str, list[dict]] = {"dense": [], "sparse": []}
    for r in range(max(1, int(repeats))):
        for side in (("dense", "sparse") if r % 2 == 0 else ("sparse", "dense")):
            name, kw = sides[side]
            if progress:
                progress(f"repeat {r + 1}/{repeats}: {name}, {max_new_tokens} tokens…")
            res = run(name, max_new_tokens, **kw)
            runs[side].append(res.timings)
            if side not in out:
                out[side] = {
                    "method": res.method, "text": res.texts[0], "token_ids": list(res.token_ids[0]),
                    "tokens": [token_label(lm.tokenizer, i) for i in res.token_ids[0]],
                    "density": res.density, "density_per_layer": res.density_per_layer[0],
                }
                if "speculative" in res.params:
                    out[side]["speculative"] = res.params["speculative"]
    for side in ("dense", "sparse"):
        out[side]["timings"] = {k: statistics.median(t[k] for t in runs[side])
                                for k in ("prefill_s", "decode_ms_per_token", "total_s", "new_tokens")}
    out["runs"] = runs
    first = divergence(out["dense"]["token_ids"], out["sparse"]["token_ids"])["first"]
    out["sparse"]["shared_text"] = (None if first is None else
                                    lm.tokenizer.decode(out["sparse"]["token_ids"][:first], skip_special_tokens=True))
    return out


def aligned_matches(a: list[int], b: list[int]) -> tuple[list[bool], list[bool]]:
    """Which tokens of ``a`` and of ``b`` belong to one longest common subsequence of the two
    (a token-level alignment: a continuation that only shifts by a token still matches)."""
    n, m = len(a), len(b)
    L = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            L[i][j] = L[i + 1][j + 1] + 1 if a[i] == b[j] else max(L[i + 1][j], L[i][j + 1])
    in_a, in_b = [False] * n, [False] * m
    i = j = 0
    while i < n and j < m:
        if a[i] == b[j]:
            in_a[i] = in_b[j] = True
            i, j = i + 1, j + 1
        elif L[i + 1][j] >= L[i][j + 1]:
            i += 1
        else:
            j += 1
    return in_a, in_b


def divergence(a: list[int], b: list[int]) -> dict:
    """How token sequence ``b`` (sparse) agrees with ``a`` (dense).

    - ``first``: the first position where they differ (None when they never do over the shorter length);
      the ``first`` tokens before it are identical.
    - ``aligned``: tokens in a longest common subsequence ÷ the longer length (an alignment: a later token
      that only moved by one position still counts).
    - ``positional``: the fraction of positions with the same token (after a divergence every shifted
      token counts as different).
    """
    n = min(len(a), len(b))
    first = next((i for i in range(n) if a[i] != b[i]), None)
    same = sum(a[i] == b[i] for i in range(n))
    in_a, _ = aligned_matches(a, b)
    longest = max(len(a), len(b))
    return {"first": first, "positional": same / n if n else float("nan"), "n": n, "longest": longest,
            "common": sum(in_a), "aligned": sum(in_a) / longest if longest else float("nan")}


def paired_ratios(pair: dict, key: str) -> list[float]:
    """Dense ÷ sparse ``key`` of each repeat (its own pair of runs)."""
    return [d[key] / s[key] for d, s in zip(pair["runs"]["dense"], pair["runs"]["sparse"], strict=True) if s[key]]


STRIP_WIDTH = 16  # tokens per row of the token strip (longer generations wrap, labels never overlap)
STRIP_LABEL = 7  # characters of a token shown in its cell (the whole token in the hover)


def agreement_figure(pair: dict, title: str = ""):
    """Dense and sparse tokens in pairs of rows (``STRIP_WIDTH`` tokens per row, wrapped); a cell is blue
    when its token is part of the aligned common subsequence with the other run, vermillion when not;
    a dashed line before the first divergence."""
    import plotly.graph_objects as go

    from app.figures import BLUE, VERMILLION, tidy

    da, sa = pair["dense"]["token_ids"], pair["sparse"]["token_ids"]
    d, s = pair["dense"]["tokens"], pair["sparse"]["tokens"]
    in_d, in_s = aligned_matches(da, sa)
    dv = divergence(da, sa)
    n = max(len(d), len(s))
    w = min(STRIP_WIDTH, max(n, 1))
    chunks = max(1, -(-n // w))

    def cell(tokens, flags, k):
        return (tokens[k] if k < len(tokens) else "", (1.0 if flags[k] else 0.0) if k < len(flags) else None)

    z, text, hover, ylab = [], [], [], []
    for c in range(chunks):
        for name, tokens, flags in (("dense", d, in_d), ("sparse", s, in_s)):
            row = [cell(tokens, flags, k) for k in range(c * w, c * w + w)]
            z.append([v for _, v in row])
            text.append([t if len(t) <= STRIP_LABEL else t[:STRIP_LABEL - 1] + "…" for t, _ in row])
            hover.append([f"{name}, token {k}: {t}" for k, (t, _) in zip(range(c * w, c * w + w), row, strict=True)])
            ylab.append(f"{name} {c * w}–{min(n, c * w + w) - 1}" if chunks > 1 else name)
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(w)), y=list(range(len(z))), text=text, customdata=hover, texttemplate="%{text}",
        textfont={"size": 10, "color": "white"}, zmin=0, zmax=1, showscale=False,
        colorscale=[[0, VERMILLION], [0.5, VERMILLION], [0.5, BLUE], [1, BLUE]],
        hovertemplate="%{customdata}<extra></extra>", xgap=1, ygap=2,
    ))
    if dv["first"] is not None:
        c, k = divmod(dv["first"], w)
        fig.add_shape(type="line", x0=k - 0.5, x1=k - 0.5, y0=2 * c - 0.5, y1=2 * c + 1.5,
                      line={"color": "black", "width": 3, "dash": "dash"})
    fig.update_xaxes(title=f"generated token position{' within the row' if chunks > 1 else ''}",
                     range=[-0.5, w - 0.5], tickvals=list(range(w)), showgrid=False, zeroline=False)
    fig.update_yaxes(autorange=False, range=[len(z) - 0.5, -0.5], tickvals=list(range(len(z))), ticktext=ylab,
                     showgrid=False, zeroline=False)
    return tidy(fig, title, height=110 + 46 * len(z), legend=False)


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

