"""What a weight format costs in quality, next to what sparsity costs: every frontier row paired
against **fp32 dense** as well as against dense in its own format.

A frontier run in the gguf (or bf16) format pairs each variant with dense *in that format*: the
sparsity's cost. :func:`pair_with_reference` adds the fp32 model's dense per-text NLLs on the same
held-out texts (label :data:`REFERENCE`) to the run's quality units and gives every row
``ppl_vs_fp32_delta_pct`` with its paired bootstrap interval (:mod:`tda.evaluate.paired`: one
resample of the texts for both arms) — the format's cost plus the sparsity's.
"""

from __future__ import annotations

from tda.evaluate.paired import compare

REFERENCE = "dense@fp32"


def pair_with_reference(result: dict, lm_ref, texts: list[str], *, boot_iters: int = 1000, seed: int = 0,
                        journal=None) -> dict:
    """Add the fp32 dense reference to a :func:`tda.evaluate.frontier.run_frontier` result (in
    place, returned): ``quality["per_text"][REFERENCE]`` and, per row, ``ppl_vs_fp32_delta_pct``
    with ``_lo``/``_hi``; ``meta["reference"]`` names the reference model and its perplexity.
    ``journal``: the reference's scoring resumes from it (:func:`tda.evaluate.quality.perplexity_eval`)."""
    from tda.evaluate.quality import perplexity_eval, variants
    from tda.evaluate.verdicts import row_label

    ref = perplexity_eval(lm_ref, texts, variants(["dense"], [1.0]), boot_iters=boot_iters, seed=seed,
                          journal=journal)
    dense = next(iter(ref.values()))
    quality = result["quality"]
    per_text = quality.setdefault("per_text", {})
    some = next(iter(per_text.values()), None)
    if some is not None and len(some["tokens"]) != len(dense["per_text"]["tokens"]):
        raise ValueError("the reference was scored on other texts than the run")
    per_text[REFERENCE] = dense["per_text"]
    for row in result["rows"]:
        d = compare(quality, REFERENCE, row_label(row), "ppl", iters=boot_iters, seed=seed)
        if d is not None:
            row.update({"ppl_vs_fp32_delta_pct": d[0], "ppl_vs_fp32_delta_pct_lo": d[1],
                        "ppl_vs_fp32_delta_pct_hi": d[2]})
    result["meta"]["reference"] = {"label": REFERENCE, "model": lm_ref.info(), "ppl": dense["ppl"],
                                   "ppl_lo": dense["ppl_lo"], "ppl_hi": dense["ppl_hi"]}
    return result


def to_markdown(result: dict) -> str:
    """The rows' quality against fp32 dense, as a small markdown table ('' without a reference)."""
    from tda.evaluate.verdicts import row_label

    ref = result["meta"].get("reference")
    if not ref:
        return ""
    fmt = result["meta"]["model"].get("format", result["meta"]["model"].get("dtype"))
    lines = [f"### Quality against fp32 dense (format: {fmt})", "",
             f"fp32 dense perplexity {ref['ppl']:.3f} [{ref['ppl_lo']:.3f}, {ref['ppl_hi']:.3f}] on the same texts; "
             f"Δppl paired per text, 95% bootstrap interval.", "",
             f"| variant | Δppl vs dense ({fmt}) | Δppl vs fp32 dense |", "|---|---|---|"]
    for r in result["rows"]:
        if "ppl_vs_fp32_delta_pct" not in r:
            continue
        own = r.get("ppl_delta_pct")
        own_s = "—" if own is None or row_label(r) == "dense" else \
            f"{own:+.2f}% [{r.get('ppl_delta_pct_lo', float('nan')):+.2f}, {r.get('ppl_delta_pct_hi', float('nan')):+.2f}]"
        d = r.get("density_target")
        label = r["method"] if d is None or row_label(r) == "dense" else f"{r['method']}@{float(d):g}"
        lines.append(f"| {label} | {own_s} | {r['ppl_vs_fp32_delta_pct']:+.2f}% "
                     f"[{r['ppl_vs_fp32_delta_pct_lo']:+.2f}, {r['ppl_vs_fp32_delta_pct_hi']:+.2f}] |")
    return "\n".join(lines)
