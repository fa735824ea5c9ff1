"""Quality of sparse FFNs (the paper's table 3, honestly on what we have).

- Perplexity on held-out text: the first half of each text (in tokens) is the prompt — a dense
  prefill whose activations build the mask — and the second half is scored teacher-forced with
  the mask fixed (the first continuation token is predicted by the dense prefill, as in
  generation). Also the teacher-forced top-1 agreement with dense at the same positions.
- 1-shot summarisation in GRIFFIN's prompt format: greedy generation, first non-empty line,
  ROUGE-1/2/L F-measure (x100) against the reference and against dense's own output.
- Optionally multiple-choice accuracy through the lm-evaluation-harness wrapper.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tda.common import distributed
from tda.common.errors import BadInput
from tda.engine.generate import check_method, generate
from tda.evaluate.bootstrap import ITERS, SEED, mean_interval, perplexity_interval, ratio_interval
from tda.evaluate.paired import METRICS, delta_columns, deltas_vs, units
from tda.evaluate.scoring import (  # noqa: F401 (continuation_logits, CLOZE_BATCH_TOKENS: re-exported)
    BATCH_TOKENS,
    CLOZE_BATCH_TOKENS,
    continuation_logits,
    score_units,
    split_point,
)
from tda.masks.build import check_density

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


@dataclass
class Variant:
    """One row of the table: a method at a density (``density=None``: dense / calibrated tda)."""

    method: str
    density: float | None

    @property
    def label(self) -> str:
        return self.method if self.density is None else f"{self.method}@{self.density:g}"


def variants(methods: list[str], densities: list[float]) -> list[Variant]:
    """dense once, every other method at every density."""
    if not methods:
        raise BadInput("no methods given")
    for m in methods:
        check_method(m)  # registered names and PROMPT+tt combinations
    ds = [check_density(d) for d in densities]
    out = [Variant("dense", None)]
    for m in methods:
        if m != "dense":
            if not ds:
                raise BadInput("no densities given")
            out += [Variant(m, d) for d in ds]
    return out


def perplexity_eval(lm, texts: list[str], vs: list[Variant], *, prefix_frac: float = 0.5, cett: float = 0.2,
                    fast: bool | None = True, calibration_texts=None, progress=None, boot_iters: int = ITERS,
                    seed: int = SEED, batch_tokens: int = BATCH_TOKENS, journal=None) -> dict[str, dict]:
    """``{label: {"ppl", "ppl_lo", "ppl_hi", "nll", "tokens", "agreement", "agreement_lo", "agreement_hi",
    "per_text"}}`` for every variant (dense included).

    ``per_text`` keeps each text's NLL sum, token count and agreeing-token count; the ``_lo``/``_hi``
    are the 95% percentile bootstrap over texts (:mod:`tda.evaluate.bootstrap`, seeded). Texts are
    scored in batches (:func:`score_units`; ``batch_tokens=0``: one text at a time); ``journal``
    (:class:`tda.evaluate.journal.Journal`): scored texts are journalled, and those already journalled
    under the same key are read back instead of scored (the split point, set by ``prefix_frac``, is
    part of each text's key).
    """
    from tda.evaluate.scoring import nll_and_top

    if not texts:
        raise BadInput("no held-out texts")
    enc = [lm.tokenizer(t, add_special_tokens=True).input_ids[: lm.n_ctx] for t in texts]
    enc = [e for e in enc if len(e) >= 4]
    if not enc:
        raise BadInput("every held-out text is too short")
    thr = _thresholds(lm, vs, cett, calibration_texts)
    splits = [split_point(len(ids), prefix_frac) for ids in enc]

    def reduce(i, pieces):
        return nll_and_top(pieces, enc[i][splits[i]:])

    scored = score_units(lm, enc, splits, vs, cett=cett, fast=fast, thresholds=thr, calibration_texts=calibration_texts,
                         batch_tokens=max(batch_tokens, 1), what="perplexity", progress=progress, reduce=reduce,
                         journal=journal)
    per_text = []
    for r in scored:
        dense_top = r["dense"][1] if "dense" in r else None
        per_text.append({label: (nll, len(top), sum(a == b for a, b in zip(top, dense_top))
                                 if dense_top is not None else -1) for label, (nll, top) in r.items()})
    res: dict[str, dict] = {}
    for v in vs:
        nlls = [r[v.label][0] for r in per_text]  # in text order: the same floats as one process
        counts = [r[v.label][1] for r in per_text]
        agrees = [r[v.label][2] for r in per_text]
        n = sum(counts)
        ppl, ppl_lo, ppl_hi = perplexity_interval(nlls, counts, iters=boot_iters, seed=seed)
        row = {"ppl": ppl, "ppl_lo": ppl_lo, "ppl_hi": ppl_hi, "nll": sum(nlls) / n, "tokens": n,
               "per_text": {"nll": nlls, "tokens": counts}}
        if all(a >= 0 for a in agrees):  # a dense variant ran first
            agr, agr_lo, agr_hi = ratio_interval(agrees, counts, iters=boot_iters, seed=seed)
            row.update({"agreement": agr, "agreement_lo": agr_lo, "agreement_hi": agr_hi})
            row["per_text"]["agree"] = agrees
        res[v.label] = row
        if progress:
            progress(f"perplexity {v.label}: {ppl:.2f} [{ppl_lo:.2f}, {ppl_hi:.2f}]")
    return res


def _thresholds(lm, vs: list[Variant], cett: float, calibration_texts) -> dict[str, list[float]]:
    """``{method: t_L}`` for the variants that use CETT thresholds, computed once (before the texts
    are shared out over processes, so that no process calibrates on its own)."""
    from tda.engine.config import split_head

    needs = {v.method for v in vs if split_head(v.method)[0] in ("tt", "tda")}
    if not needs:
        return {}
    from tda.engine.generate import thresholds_for

    t = thresholds_for(lm, cett, calibration_texts)
    return dict.fromkeys(needs, t)


# ----- summarisation ------------------------------------------------------------------------------
def first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def rouge(preds: list[str], refs: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure x100 (rouge_score, stemming)."""
    from rouge_score import rouge_scorer

    sc = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    tot = dict.fromkeys(ROUGE_KEYS, 0.0)
    for p, r in zip(preds, refs):
        s = sc.score(r, p)
        for k in ROUGE_KEYS:
            tot[k] += s[k].fmeasure
    return {k: 100 * v / max(len(preds), 1) for k, v in tot.items()}


def summarization_eval(lm, records: list[dict], vs: list[Variant], *, max_new_tokens: int = 32, cett: float = 0.2,
                       fast: bool | None = True, calibration_texts=None, progress=None) -> dict[str, dict]:
    """``{label: {"rouge1", ..., "rouge1_vs_dense", ..., "outputs"}}``."""
    from tda.common.data import xsum_prompt

    if not records:
        raise BadInput("no summarisation records")
    prompts, refs = [], []
    for r in records:  # prompts that do not fit the context (tiny test models) are skipped
        p = xsum_prompt(r["article"])
        if len(lm.tokenizer(p).input_ids) + max_new_tokens <= lm.n_ctx:
            prompts.append(p)
            refs.append(r["summary"])
    if not prompts:
        return {}
    thr = _thresholds(lm, vs, cett, calibration_texts)

    def one_prompt(i, p) -> dict[str, str]:  # every variant on one article
        return {v.label: first_line(generate(lm, p, v.method, density=v.density, cett=cett,
                                             max_new_tokens=max_new_tokens, fast=fast, thresholds=thr.get(v.method),
                                             calibration_texts=calibration_texts).text) for v in vs}

    per_prompt = distributed.map_sharded(one_prompt, prompts)  # articles shared out, in order
    res: dict[str, dict] = {}
    dense_out: list[str] = []
    for v in vs:
        outs = [r[v.label] for r in per_prompt]
        if v.method == "dense":
            dense_out = outs
        row = rouge(outs, refs)
        row.update({f"{k}_vs_dense": x for k, x in rouge(outs, dense_out).items()})
        row["outputs"] = outs
        res[v.label] = row
        if progress:
            progress(f"summaries {v.label}: rouge1 {row['rouge1']:.1f}")
    return res


# ----- the table ------------------------------------------------------------------------------------
COLUMNS = ("method", "density", "ppl", "agreement", "rouge1", "rouge2", "rougeL",
           "rouge1_vs_dense", "rougeL_vs_dense", "mc_acc", "cloze_acc", "gen_rougeL", "gen_prefix", "gen_rep",
           "gen_ppl", "ppl_lo", "ppl_hi", "agreement_lo", "agreement_hi", "mc_acc_lo", "mc_acc_hi", "mc_items",
           "cloze_acc_lo", "cloze_acc_hi", "cloze_items", "gen_rougeL_lo", "gen_rougeL_hi", "gen_prefix_lo",
           "gen_prefix_hi", "gen_rep_lo", "gen_rep_hi", "gen_ppl_lo", "gen_ppl_hi", "gen_items", *delta_columns())
INTERVAL_KEYS = ("ppl", "ppl_lo", "ppl_hi", "agreement", "agreement_lo", "agreement_hi")


def run_eval(lm, methods: list[str], densities: list[float], *, heldout: list[str], summaries: list[dict],
             mc_limit: int | None = None, max_new_tokens: int = 32, cett: float = 0.2, fast: bool | None = True,
             progress: Callable[[str], None] | None = None, boot_iters: int = ITERS, seed: int = SEED,
             cloze: list[dict] | None = None, gen_texts: list[str] | None = None, gen_tokens: int = 64,
             batch_tokens: int | None = None, journal=None) -> dict:
    """All metrics for all variants (``batch_tokens``: padded tokens per scoring batch of perplexity
    and cloze, default :data:`BATCH_TOKENS` / :data:`CLOZE_BATCH_TOKENS`; 0: one text at a time): ``{"rows": [...], "outputs": {...}, "per_text": {...},
    "mc_per_item": {...}, "cloze_per_item": {...}, "gen_per_text": {...}, "meta": {...}}``.
    Perplexity, agreement, multiple-choice and cloze accuracy and the generation metrics
    (:mod:`tda.evaluate.freegen`) come with 95% bootstrap intervals (``_lo``/``_hi``: over texts,
    items or prompts; ``boot_iters`` resamples, ``seed``); every sparse row also has its paired
    differences from dense (:func:`tda.evaluate.paired.deltas_vs`). ``journal``
    (:class:`tda.evaluate.journal.Journal`): perplexity and cloze scoring resume from it and append to it."""
    vs = variants(methods, densities)
    t0 = time.perf_counter()
    ppl = perplexity_eval(lm, heldout, vs, cett=cett, fast=fast, progress=progress, boot_iters=boot_iters,
                          seed=seed, batch_tokens=BATCH_TOKENS if batch_tokens is None else batch_tokens,
                          journal=journal) if heldout else {}
    summ = summarization_eval(lm, summaries, vs, max_new_tokens=max_new_tokens, cett=cett, fast=fast,
                              progress=progress) if summaries else {}
    mc, mc_items = {}, {}
    if mc_limit is not None and mc_limit != 0:
        from tda.evaluate.lm_eval_model import run_mc_items

        limit = mc_limit if mc_limit > 0 else None
        per_variant = distributed.on_main(  # lm-eval reports on the first process of a node only: run it there
            lambda: [run_mc_items(lm, v.method, v.density, limit=limit, cett=cett,
                                  fast=bool(fast) if fast is not None else True) for v in vs])
        for v, items in zip(vs, per_variant):
            acc, lo, hi = mean_interval(items, iters=boot_iters, seed=seed)
            mc[v.label] = {"mc_acc": acc, "mc_acc_lo": lo, "mc_acc_hi": hi, "mc_items": len(items)}
            mc_items[v.label] = items
            if progress:
                progress(f"multiple choice {v.label}: acc {acc:.3f} [{lo:.3f}, {hi:.3f}] over {len(items)} items")
    thr = _thresholds(lm, vs, cett, None) if (cloze or gen_texts) else {}
    cloze_res = {}
    if cloze:
        from tda.evaluate.cloze import cloze_eval

        cloze_res = cloze_eval(lm, cloze, vs, cett=cett, fast=fast, thresholds=thr, progress=progress,
                               batch_tokens=batch_tokens, journal=journal)
    gen = {}
    if gen_texts:
        from tda.evaluate.freegen import generation_eval

        gen = generation_eval(lm, gen_texts, vs, gen_tokens=gen_tokens, cett=cett, fast=fast, thresholds=thr,
                              progress=progress)
    per_unit = {"per_text": {label: r["per_text"] for label, r in ppl.items()}, "mc_per_item": mc_items,
                "cloze_per_item": cloze_res, "gen_per_text": {k: {f: x for f, x in g.items() if f != "texts"}
                                                             for k, g in gen.items()}}
    rows = []
    for v in vs:
        row = {"method": v.method, "density": 1.0 if v.density is None else v.density}
        row.update({k: x for k, x in ppl.get(v.label, {}).items() if k in INTERVAL_KEYS})
        row.update({k: x for k, x in summ.get(v.label, {}).items() if k != "outputs"})
        row.update(mc.get(v.label, {}))
        row.update(unit_intervals(per_unit, v.label, ("cloze_acc", "gen_rougeL", "gen_prefix", "gen_rep", "gen_ppl"),
                                  iters=boot_iters, seed=seed))
        if cloze_res:
            row["cloze_items"] = len(cloze)
        if gen:
            row["gen_items"] = len(gen_texts)
        if v.method != "dense":
            row.update(deltas_vs(per_unit, "dense", v.label, iters=boot_iters, seed=seed))
        rows.append(row)
    return {
        "rows": rows,
        "outputs": {label: r["outputs"] for label, r in summ.items()},
        "gen_outputs": {label: g["texts"] for label, g in gen.items()},
        **per_unit,
        "meta": {"model": lm.info(), "methods": methods, "densities": densities, "heldout_texts": len(heldout),
                 "cloze_items": len(cloze or []), "gen_prompts": len(gen_texts or []), "gen_tokens": gen_tokens,
                 "summaries": len(summaries), "mc_limit": mc_limit, "max_new_tokens": max_new_tokens,
                 "cett": cett, "bootstrap": {"iters": boot_iters, "seed": seed, "level": 0.95},
                 "seconds": time.perf_counter() - t0},
    }


def unit_intervals(per_unit: dict, label: str, metrics, *, iters: int = ITERS, seed: int = SEED) -> dict:
    """``{metric, metric_lo, metric_hi}`` of each of ``metrics`` that ``label`` was scored on
    (the 95% bootstrap over its units, :data:`tda.evaluate.paired.METRICS`)."""
    out = {}
    for m in metrics:
        u = units(per_unit, label, m)
        if u is not None:
            f = perplexity_interval if METRICS[m].log else ratio_interval
            out[m], out[f"{m}_lo"], out[f"{m}_hi"] = f(*u, iters=iters, seed=seed)
    return out


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}" if abs(x) < 1000 else f"{x:.1f}"
    return "" if x is None else str(x)


def to_csv(rows: list[dict]) -> str:
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    lines = [",".join(cols)] + [",".join(_fmt(r.get(c)) for c in cols) for r in rows]
    return "\n".join(lines) + "\n"


def to_markdown(rows: list[dict]) -> str:
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(out) + "\n"
