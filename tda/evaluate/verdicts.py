"""Decisions over a frontier: its Pareto set and a verdict for each pair of methods at each density.

Speed: each row's decode speedup with its interval over rounds (``speedup_lo``/``speedup_hi``);
two speeds are *separated* when their intervals do not overlap. Quality: one primary metric
(:func:`primary_metric`: perplexity when scored), compared between two variants by the paired
bootstrap on the same texts (:func:`tda.evaluate.paired.compare`); separated when the paired
interval excludes zero.

- Pareto: a variant is off the set when another one is at least as fast and at least as good
  (point estimates) and separated from it on at least one of the two (so noise alone never
  removes a point).
- Verdict for methods A, B at one density: "A beats B" when A is separated-better on one axis and
  not separated-worse on the other; "trade-off" when each wins one axis; else "not separated at
  this sample size".
"""

from __future__ import annotations

from itertools import combinations

from tda.engine.variant_names import split_speculate
from tda.evaluate.paired import METRICS, better_sign, compare, units

PRIMARY_ORDER = ("ppl", "cloze_acc", "mc_acc", "gen_rougeL")


def row_label(r: dict) -> str:
    """The quality result's label of a frontier row (``dense``, ``method@density``). A speculative
    variant (``tt+spec4``) is its base method's: the speculative lm_head leaves the method's tokens and
    logits as they are (:mod:`tda.engine.speculate`), so only its speed is its own."""
    m, d = split_speculate(r["method"])[0], r.get("density_target")
    return m if m == "dense" or d is None else f"{m}@{float(d):g}"


def primary_metric(quality: dict) -> str | None:
    """The first metric of :data:`PRIMARY_ORDER` that dense was scored on."""
    return next((m for m in PRIMARY_ORDER if units(quality, "dense", m) is not None), None)


MIN_ROUNDS = 3  # a speed interval from fewer timed rounds is not an interval: shown "n/a", never separates


def speed_interval(r: dict) -> tuple[float, float] | None:
    """The row's 95% speedup interval, or None when it came from fewer than :data:`MIN_ROUNDS` rounds
    (``speedup_rounds``; rows without that list keep their stored interval) or is missing. Dense is
    the reference: its speedup is 1 exactly."""
    if r.get("method") == "dense" and r.get("decode_speedup") is not None:
        return float(r["decode_speedup"]), float(r["decode_speedup"])
    lo, hi = r.get("speedup_lo"), r.get("speedup_hi")
    rounds = r.get("speedup_rounds")
    if lo is None or hi is None or (rounds is not None and len(rounds) < MIN_ROUNDS):
        return None
    return float(lo), float(hi)


def _speed(r: dict) -> tuple[float, float, float]:
    """(speedup, lo, hi); without an interval (:func:`speed_interval`) lo/hi are ∓inf: never separated."""
    s = r.get("decode_speedup")
    s = float("nan") if s is None else float(s)
    iv = speed_interval(r)
    if iv is None:
        return s, float("-inf"), float("inf")
    return s, iv[0], iv[1]


def speed_order(a: dict, b: dict) -> int:
    """+1 when ``b`` is separated-faster than ``a``, −1 when separated-slower, 0 otherwise."""
    _, alo, ahi = _speed(a)
    _, blo, bhi = _speed(b)
    return 1 if blo > ahi else -1 if bhi < alo else 0


def quality_order(quality: dict, a: str, b: str, metric: str, **kw) -> tuple[int, tuple | None]:
    """(+1 b separated-better, −1 separated-worse, 0 not separated; the paired ``(delta, lo, hi)`` of b from a)."""
    c = compare(quality, a, b, metric, **kw)
    if c is None or c[1] != c[1]:
        return 0, c
    sign = better_sign(metric)
    lo, hi = sorted((sign * c[1], sign * c[2]))
    return (1 if lo > 0 else -1 if hi < 0 else 0), c


def pareto_flags(rows: list[dict], quality: dict, metric: str | None = None, **kw) -> list[bool]:
    """For each row: is it on the Pareto set of speed × ``metric`` (default :func:`primary_metric`)?"""
    metric = metric or primary_metric(quality)
    flags = []
    for a in rows:
        on = True
        if metric is not None and units(quality, row_label(a), metric) is not None:
            for b in rows:
                if b is a or units(quality, row_label(b), metric) is None:
                    continue
                qo, c = quality_order(quality, row_label(a), row_label(b), metric, **kw)
                if c is None or c[0] != c[0]:
                    continue
                faster_or_equal = _speed(b)[0] >= _speed(a)[0]
                as_good = better_sign(metric) * c[0] >= 0
                if faster_or_equal and as_good and (qo > 0 or speed_order(a, b) > 0):
                    on = False
                    break
        flags.append(on)
    return flags


def _fmt_delta(metric: str, c: tuple) -> str:
    unit = "%" if METRICS[metric].log else ""
    return f"{c[0]:+.3g}{unit} [{c[1]:+.3g}, {c[2]:+.3g}]"


def _fmt_speed(r: dict) -> str:
    s, lo, hi = _speed(r)
    return f"{s:.3f}× " + ("[n/a]" if speed_interval(r) is None else f"[{lo:.3f}, {hi:.3f}]")


def verdicts(rows: list[dict], quality: dict, metric: str | None = None, **kw) -> list[dict]:
    """One verdict per pair of sparse methods at each density they share, in row order:
    ``{density, a, b, verdict, winner, metric, delta, delta_lo, delta_hi, speed_a, speed_b, text}``
    (``delta``: paired difference of b from a on ``metric``)."""
    metric = metric or primary_metric(quality)
    by_density: dict[float, list[dict]] = {}
    for r in rows:
        if r["method"] != "dense" and r.get("density_target") is not None:
            by_density.setdefault(round(float(r["density_target"]), 6), []).append(r)
    out = []
    for d in sorted(by_density):
        for ra, rb in combinations(by_density[d], 2):
            a, b = ra["method"], rb["method"]
            qo, c = quality_order(quality, row_label(ra), row_label(rb), metric, **kw) if metric else (0, None)
            so = speed_order(ra, rb)
            if qo == so == 0 or qo * so < 0:
                winner = None
            else:
                winner = b if (qo > 0 or so > 0) else a
            if winner is None:
                verdict = (f"trade-off: {b if qo > 0 else a} better quality, {b if so > 0 else a} faster"
                           if qo * so < 0 else "not separated at this sample size")
            else:
                verdict = f"{winner} beats {a if winner == b else b}"
            q = "" if c is None else f"Δ{metric} {b} vs {a} {_fmt_delta(metric, c)}; "
            out.append({"density": d, "a": a, "b": b, "verdict": verdict, "winner": winner, "metric": metric,
                        "delta": None if c is None else c[0], "delta_lo": None if c is None else c[1],
                        "delta_hi": None if c is None else c[2], "speed_a": _speed(ra)[0], "speed_b": _speed(rb)[0],
                        "text": f"{q}speedup {a} {_fmt_speed(ra)}, {b} {_fmt_speed(rb)}"})
    return out


def verdicts_markdown(vs: list[dict]) -> str:
    """The verdicts section of frontier.md."""
    if not vs:
        return ""
    m = vs[0]["metric"]
    lab = METRICS[m].label if m in METRICS else "quality"
    out = ["## Verdicts", "",
           f"Quality: paired difference in {lab} ({m}; 95% paired bootstrap over the same texts/items); speed: "
           "decode speedup with its interval over rounds. A beats B when A is separated-better on one axis "
           "and not separated-worse on the other.", "",
           "| density | A | B | verdict | numbers |", "|---|---|---|---|---|"]
    out += [f"| {v['density']:g} | {v['a']} | {v['b']} | {v['verdict']} | {v['text']} |" for v in vs]
    return "\n".join(out) + "\n"


# ----- across corpora ----------------------------------------------------------------------------------
def _kind(v: dict) -> str:
    return "open" if v["verdict"].startswith("not separated") else "decided"


def cross_verdicts(per_corpus: dict[str, list[dict]], pooled: list[dict] | None = None) -> list[dict]:
    """One verdict per pair and density over several corpora (each list from :func:`verdicts` on one
    corpus; ``pooled``: the verdicts on all corpora's units together):

    - ``holds``: the same decided verdict ("A beats B", or the same trade-off) on every corpus;
    - ``not separated``: not separated on any corpus;
    - ``corpus-dependent``: anything else — opposite winners, or decided on one corpus and not on
      another — with every corpus's verdict and paired delta in ``text``.

    ``{density, a, b, status, verdict, metric, per_corpus: {name: {verdict, delta, delta_lo, delta_hi}},
    pooled, text}``, in the order of the first corpus."""
    names = list(per_corpus)
    if not names:
        return []
    index = {name: {(v["density"], v["a"], v["b"]): v for v in vs} for name, vs in per_corpus.items()}
    pooled_ix = {(v["density"], v["a"], v["b"]): v for v in (pooled or [])}
    out = []
    for v0 in per_corpus[names[0]]:
        key = (v0["density"], v0["a"], v0["b"])
        vs = {n: index[n].get(key) for n in names}
        if any(v is None for v in vs.values()):
            continue
        texts = {v["verdict"] for v in vs.values()}
        kinds = {_kind(v) for v in vs.values()}
        if kinds == {"open"}:
            status, verdict = "not separated", "not separated on any corpus"
        elif len(texts) == 1:
            status, verdict = "holds", v0["verdict"]
        else:
            status, verdict = "corpus-dependent", "corpus-dependent"
        m = v0["metric"]
        parts = []
        for n, v in vs.items():
            d = "" if v.get("delta") is None else f" (Δ{m} {v['b']} vs {v['a']} {_fmt_delta(m, (v['delta'], v['delta_lo'], v['delta_hi']))})"
            parts.append(f"{n}: {v['verdict']}{d}")
        pv = pooled_ix.get(key)
        out.append({"density": key[0], "a": key[1], "b": key[2], "status": status, "verdict": verdict, "metric": m,
                    "per_corpus": {n: {k: v.get(k) for k in ("verdict", "delta", "delta_lo", "delta_hi")}
                                   for n, v in vs.items()},
                    "pooled": pv["verdict"] if pv else None, "text": "; ".join(parts)})
    return out


def cross_verdicts_markdown(cvs: list[dict]) -> str:
    """The cross-corpus section of frontier.md: what holds on every corpus first."""
    if not cvs:
        return ""
    order = {"holds": 0, "corpus-dependent": 1, "not separated": 2}
    rows = sorted(cvs, key=lambda v: (order.get(v["status"], 3), v["density"]))
    n_hold = sum(v["status"] == "holds" for v in cvs)
    n_dep = sum(v["status"] == "corpus-dependent" for v in cvs)
    out = ["## Verdicts across corpora", "",
           f"{n_hold} of {len(cvs)} verdicts hold on every corpus, {n_dep} are corpus-dependent. A verdict "
           "holds only when it is the same decided verdict on every corpus; otherwise each corpus's verdict "
           "and paired difference are listed.", "",
           "| density | A | B | status | verdict | pooled | per corpus |", "|---|---|---|---|---|---|---|"]
    out += [f"| {v['density']:g} | {v['a']} | {v['b']} | **{v['status']}** | {v['verdict']} | {v['pooled'] or ''} "
            f"| {v['text']} |" for v in rows]
    return "\n".join(out) + "\n"
