"""Markdown and manifest text from study results (pure: results in, strings/dicts out).

Every paragraph here is generated from the numbers it sits next to; nothing is a hand-written
claim about what the model shows.
"""

from __future__ import annotations

import json

import numpy as np

from analysis.inertia import claim4_verdict, group_means, mode_differences

SRC_NAME = {"real": "real", "random": "random"}


def fmt(x, nd: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, float) and np.isnan(x):
        return "nan"
    return f"{x:.{nd}f}"


def _arrow(a, b, nd: int = 3) -> str:
    d = b - a
    return f"{fmt(a, nd)} → {fmt(b, nd)} ({'+' if d >= 0 else ''}{fmt(d, nd)})"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table; ``|`` inside cells is escaped."""
    def cell(x: str) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(map(cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
    return "\n".join(out)


# ----- Study 1 -----------------------------------------------------------------------------------
def inertia_layer_table(result: dict) -> str:
    """Per layer, isolated → sequence (difference) of density, Jaccard with history, n50, n90, plus
    self-overlap J(seq, iso), for every source of one inertia (or scale) result."""
    header = ["layer"]
    for src in result["sources"]:
        s = SRC_NAME.get(src, src)
        header += [f"{s}: density", f"{s}: J{result['k']}", f"{s}: n50", f"{s}: n90", f"{s}: J(seq,iso)"]
    rows = []
    for i, L in enumerate(result["layers"]):
        row = [str(L)]
        for d in result["sources"].values():
            a, b = d["isolated"][i], d["sequence"][i]
            row += [_arrow(a["density"], b["density"]), _arrow(a["jaccard"], b["jaccard"]),
                    _arrow(a["n50"], b["n50"], 0), _arrow(a["n90"], b["n90"], 0), fmt(d["self_jaccard"][i])]
        rows.append(row)
    return md_table(header, rows)


def _fmt_int_or_float(x: float, nd: int) -> str:
    return f"{x:+.{nd}f}"


def inertia_group_table(entries: dict[str, dict], groups: dict[str, list[int]], n50_key: str = "n50") -> str:
    """Rows = (label, source); per layer group the mean sequence − isolated of Jaccard and n50."""
    header = ["model / rule", "tokens"]
    for g in groups:
        header += [f"{g}: ΔJ", f"{g}: Δ{n50_key}"]
    rows = []
    for label, res in entries.items():
        for src, d in res["sources"].items():
            diffs = [{"layer": a["layer"], "d_jaccard": b["jaccard"] - a["jaccard"], "d_n": b[n50_key] - a[n50_key]}
                     for a, b in zip(d["isolated"], d["sequence"], strict=True)]
            gm = group_means(diffs, groups, ("d_jaccard", "d_n"))
            row = [label, SRC_NAME.get(src, src)]
            for g in groups:
                row += [_fmt_int_or_float(gm[g]["d_jaccard"], 3), _fmt_int_or_float(gm[g]["d_n"], 1)]
            rows.append(row)
    return md_table(header, rows)


def study1_paragraph(verdicts: dict[str, dict], trained: dict[str, dict], groups: dict[str, list[int]]) -> str:
    """What the model shows in Study 1, generated from the per-rule verdicts and group means."""
    parts = []
    for rule, v in verdicts.items():
        res = trained[rule]
        bits = []
        for src, d in res["sources"].items():
            diffs = mode_differences(d["isolated"], d["sequence"])
            gm = group_means(diffs, groups, ("d_jaccard", "d_n50"))
            where = [g for g in groups if g != "all" and gm[g]["d_jaccard"] > 0 and gm[g]["d_n50"] < 0]
            bits.append(f"for {src} tokens flocking (ΔJ > 0 and Δn50 < 0 on average) appears in "
                        f"{', '.join(where) + ' layers' if where else 'no layer group'}")
        parts.append(f"Under {res['rule']['label']}: Claim 4 {v['verdict']}; " + "; ".join(bits) + ".")
    return " ".join(parts)


# ----- Appendix C --------------------------------------------------------------------------------
def scale_summary_table(entries: dict[str, dict], groups: dict[str, list[int]]) -> str:
    """Rows = (model / rule, source, mode): group means of density, J, per-sample n50, pooled n50/n90."""
    header = ["model / rule", "tokens", "mode"] + [f"{g}: J / n50 / pooled n50, n90" for g in groups]
    rows = []
    for label, res in entries.items():
        for src, d in res["sources"].items():
            for mode in ("isolated", "sequence"):
                gm = group_means(d[mode], groups, ("jaccard", "n50", "n50_pooled", "n90_pooled"))
                rows.append([label, SRC_NAME.get(src, src), mode] + [
                    f"{gm[g]['jaccard']:.3f} / {gm[g]['n50']:.0f} / {gm[g]['n50_pooled']:.0f}, {gm[g]['n90_pooled']:.0f}"
                    for g in groups])
    return md_table(header, rows)


def scale_paragraph(scale: dict, groups: dict[str, list[int]]) -> str:
    """Appendix C in words, from the numbers: does sequence (vs isolated) and random words (vs real
    text) concentrate activation (smaller pooled n50) at scale?"""
    out = []
    for res in scale["by_rule"].values():
        gm = {(src, m): group_means(d[m], groups, ("n50_pooled", "jaccard"))["all"]
              for src, d in res["sources"].items() for m in ("isolated", "sequence")}
        seq_conc = [src for src in res["sources"] if gm[(src, "sequence")]["n50_pooled"] < gm[(src, "isolated")]["n50_pooled"]]
        rnd = gm.get(("random", "sequence")), gm.get(("real", "sequence"))
        rnd_more = rnd[0] is not None and rnd[1] is not None and rnd[0]["n50_pooled"] < rnd[1]["n50_pooled"]
        v = claim4_verdict(res)
        out.append(
            f"Under {res['rule']['label']} over {scale['n_samples']} sequences of ≤{scale['n_tokens']} tokens: "
            f"sequence capture concentrates events (smaller pooled n50, mean over layers) for "
            f"{' and '.join(seq_conc) if seq_conc else 'neither real nor random'} tokens (isolated → sequence: "
            + "; ".join(f"{src} {gm[(src, 'isolated')]['n50_pooled']:.0f} → {gm[(src, 'sequence')]['n50_pooled']:.0f}"
                        for src in res["sources"])
            + f" neurons); random-word sequences are {'more' if rnd_more else 'not more'} concentrated than real text "
            f"({rnd[0]['n50_pooled']:.0f} vs {rnd[1]['n50_pooled']:.0f} neurons). Claim 4 verdict from the per-sample "
            f"metrics (same logic as Study 1): {v['verdict']} (flocking part A: {'holds' if v['A'] else 'fails'}, "
            f"context-over-identity part B: {'holds' if v['B'] else 'fails'})."
        )
    return " ".join(out)


# ----- Study 2 -----------------------------------------------------------------------------------
def verdict_table(sim: dict) -> str:
    """Rows = (observation, measure); columns = layer groups; cells ``✓/✗ margin (held/total)``."""
    obs = sim.get("observations")
    if not obs:
        return "_Observations (a)–(e) need samples with ids 1..13; not evaluated._"
    groups = list(sim["groups"])
    rows = []
    for k, per in obs.items():
        for m in sim["measures"]:
            cells = [f"{'✓' if per[m][g]['holds'] else '✗'} {per[m][g]['margin']:+.4f} "
                     f"({per[m][g]['n_hold']}/{per[m][g]['n_comparisons']})" for g in groups]
            rows.append([f"({k})", m] + cells)
    return md_table(["obs.", "measure"] + [f"{g} (L{sim['groups'][g][0]}–{sim['groups'][g][-1]})" for g in groups], rows)


def study2_paragraph(sim: dict) -> str:
    """Study 2 in words: how many (measure, group) settings each observation holds in."""
    obs = sim.get("observations")
    if not obs:
        return "The sample file is not the 13-sample set; only the matrices were computed."
    n_set = len(sim["measures"]) * len(sim["groups"])
    bits = []
    for k, per in obs.items():
        held = [(m, g) for m in sim["measures"] for g in sim["groups"] if per[m][g]["holds"]]
        bits.append(f"({k}) holds in {len(held)}/{n_set} settings")
    total = sum(per[m][g]["holds"] for per in obs.values() for m in sim["measures"] for g in sim["groups"])
    robust = [k for k, per in obs.items() if all(per[m][g]["holds"] for m in sim["measures"] for g in sim["groups"])]
    never = [k for k, per in obs.items() if not any(per[m][g]["holds"] for m in sim["measures"] for g in sim["groups"])]
    return (f"On {sim['model_id']}, " + "; ".join(bits) + f" — {total} of {n_set * len(obs)} verdicts hold. "
            + (f"Robust to every choice: {', '.join(f'({k})' for k in robust)}. " if robust else
               "No observation holds under every measure and layer group. ")
            + (f"Never holding: {', '.join(f'({k})' for k in never)}." if never else ""))


# ----- the whole report --------------------------------------------------------------------------
def render_report(run: dict) -> str:
    """``figures/REPORT.md`` from the results of ``analysis.pipeline.run_studies``."""
    s1, sc, sim, groups = run["study1"], run["scale"], run["study2"], run["groups"]
    rules = list(s1["trained"])
    primary = rules[0]
    lines = [
        f"# Studies report — {run['model_id']}",
        "",
        f"Generated by `tda figures` (tda-workbench {run['version']}). Every number below is computed by "
        "`analysis/` from the model; the paragraphs are generated from these numbers. BOS is excluded "
        "from every capture (it is no token of the inputs); isolated capture feeds each token as "
        "`[BOS, token]`. Layer groups: " + ", ".join(f"{g} = L{v[0]}–{v[-1]}" for g, v in groups.items()) + ".",
        "",
        "Activation rules: " + "; ".join(f"`{r}` = {s1['trained'][r]['rule']['label']}" for r in rules)
        + f". CETT thresholds are calibrated per layer on the shipped corpus (`tda.masks.calibrate`); the control "
        f"model ({run['control_id'] or 'not run'}) is calibrated the same way on its own activations.",
        "",
        "## Study 1 — activation inertia (paper figures 3–6)",
        "",
        f"Inputs: the first {s1['inputs']['n_tokens']} tokens of the XSum 1-shot prompt "
        f"(`{s1['inputs']['real']!r}`) and {s1['inputs']['n_tokens']} random single-token words "
        f"(seed {s1['inputs']['seed']}, from {s1['inputs']['random_source']}: `{s1['inputs']['random'].strip()}`). "
        f"k = {s1['trained'][primary]['k']} previous tokens.",
        "",
        "**What the model shows.** " + study1_paragraph(s1["verdicts"], s1["trained"], groups),
        "",
    ]
    for r in rules:
        lines += [f"**Claim 4 verdict ({r}).** {s1['verdicts'][r]['statement']}", ""]
    lines += [f"### Per-layer metrics, rule `{primary}`, trained model (isolated → sequence (difference))", "",
              inertia_layer_table(s1["trained"][primary]), ""]
    entries = {}
    for r in rules:
        entries[f"trained / {r}"] = s1["trained"][r]
        if s1["control"]:
            entries[f"random-weights control / {r}"] = s1["control"][r]
    lines += ["### Sequence − isolated by layer group (both rules, trained vs random-weights control)", "",
              inertia_group_table(entries, groups), ""]
    if s1["control"]:
        lines += [f"### Per-layer metrics, rule `{primary}`, random-weights control", "",
                  inertia_layer_table(s1["control"][primary]), ""]
    lines += ["## Appendix C — the same at scale", "",
              f"{sc['trained']['n_samples']} passages of the shipped corpus, each cut to its first "
              f"{sc['trained']['n_tokens']} tokens, vs as many sequences of {sc['trained']['n_tokens']} random "
              "single-token words (seeded); each sequence captured in sequence and isolated mode. Per-sample "
              "metrics are averaged over samples; pooled n50/n90 count all samples' events together.", "",
              "**What the model shows.** " + scale_paragraph(sc["trained"], groups), ""]
    entries = {}
    for r in rules:
        entries[f"trained / {r}"] = sc["trained"]["by_rule"][r]
        if sc["control"]:
            entries[f"random-weights control / {r}"] = sc["control"]["by_rule"][r]
    lines += ["### Group means (J with history / per-sample n50 / pooled n50, n90)", "",
              scale_summary_table(entries, groups), ""]
    if sc["control"]:
        lines += ["Control at scale: " + scale_paragraph(sc["control"], groups), ""]
    lines += ["### Sequence − isolated by layer group (pooled n50)", "",
              inertia_group_table(entries, groups, n50_key="n50_pooled"), ""]
    st = sim["settings"]
    lines += [
        "## Study 2 — the 13 samples (appendix D)", "",
        f"Each sample captured alone in sequence mode (BOS excluded). Patterns per layer: {st['vector']}; "
        f"{st['tda_mask']}; GRIFFIN top-{st['griffin_density'] * 100:g}% mask. Measures: "
        + ", ".join(f"`{m}` = {v['label']}" for m, v in sim["measures"].items())
        + ". A layer group's matrix is the mean of its layers' matrices. Verdict readings are fixed in "
        "`analysis/verdicts.py` (written before results were seen); a cell reads ✓/✗, the smallest margin "
        "S[p] − S[q] over the observation's inequalities, and how many of them hold.", "",
        "**What the model shows.** " + study2_paragraph(sim), "",
        verdict_table(sim), "",
        "Readings: " + "; ".join(f"({k}) {v['reading']}" for k, v in (sim["observations"] or {}).items()) + ".", "",
        "## Figures", "",
        md_table(["figure", "PNG", "HTML", "what"],
                 [[n, f"[{f['png']}]({f['png']})" if f.get("png") else "–", f"[{f['html']}]({f['html']})",
                   f["caption"]] for n, f in run["figures"].items()]),
        "",
    ]
    return "\n".join(lines)


def manifest(run: dict, settings: dict) -> str:
    """``figures/manifest.json``: model, settings, package version, one entry per figure."""
    return json.dumps({
        "model_id": run["model_id"], "control_id": run["control_id"], "version": run["version"],
        "settings": settings, "figures": run["figures"], "png_error": run.get("png_error"),
        "results": "results.json", "report": "REPORT.md",
    }, indent=1, ensure_ascii=False)
