"""``tda calibrate`` (per-layer CETT thresholds) and ``tda recall`` (do prompt masks predict decode?)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from rich.table import Table

from tda.cli.app import (
    DeviceOpt,
    DtypeOpt,
    LazyConsole,
    ModelOpt,
    PromptFileOpt,
    app,
    echo_err,
    load,
)

console = LazyConsole(width=110)


def _fmt(x: float, nd: int = 3) -> str:
    return "nan" if x != x else f"{x:.{nd}f}"


# ----- calibrate ---------------------------------------------------------------------------------
def calibration_table(cal, title: str) -> Table:
    from rich.table import Table

    table = Table("layer", "threshold t_L", "density", title=title or None)
    for L, (t, d) in enumerate(zip(cal.thresholds, cal.densities)):
        table.add_row(str(L), f"{t:.5g}", f"{d:.3f}")
    table.add_row("mean", f"{sum(cal.thresholds) / len(cal.thresholds):.5g}",
                  f"{sum(cal.densities) / len(cal.densities):.3f}")
    return table


@app.command()
def calibrate(
    out: Path = typer.Option(..., "--out", "-o", help="output threshold file (.json)"),
    model: str = ModelOpt,
    data: Path = typer.Option(None, "--data", help="calibration texts (.json/.jsonl with a 'text' field); default: the shipped corpus"),
    cett: float = typer.Option(0.2, "--cett", help="CETT target in (0, 1)"),
    limit: int = typer.Option(None, "--limit", help="use only the first N texts (default: all)"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """Per-layer CETT thresholds t_L (cached per model, data and target); prints threshold and density."""
    from tda.common import distributed
    from tda.common.atomic import check_output_path
    from tda.common.data import load_texts
    from tda.common.errors import BadInput
    from tda.masks.calibrate import cache_path, data_hash, load_or_calibrate
    from tda.masks.cett import check_target

    check_target(cett)
    if limit is not None and limit < 1:
        raise BadInput(f"limit must be at least 1, got {limit}")
    check_output_path(out)
    texts = [t for t in load_texts(data, limit=limit) if t.strip()]
    if not texts:
        raise BadInput("the calibration data is empty")
    lm = load(model, dtype, device)
    cached = cache_path(lm.model_id, data_hash(texts), cett).exists()
    with console.status(f"calibrating {lm.ffn.n_layers} layers on {len(texts)} texts (CETT {cett:g})..."):
        cal = load_or_calibrate(lm, texts, cett)
    if not distributed.is_main():  # the main process writes and prints
        return
    cal.save(out)
    console.print(
        f"[bold]wrote {out}[/bold]: model {cal.model_id}, d_ff {cal.d_ff}, CETT {cal.target:g}, "
        f"{len(texts)} texts, {cal.n_tokens} calibration tokens, data {cal.data_hash}"
        + (" (from cache)" if cached else "")
    )
    console.print("per-layer threshold t_L and the density it gives on the calibration data:")
    console.print(calibration_table(cal, ""))


# ----- recall ------------------------------------------------------------------------------------
def rows_to_csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _std(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    if len(xs) < 2:
        return float("nan")
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def study_summary(rows: list[dict], density: float = 0.5) -> list[dict]:
    """Mean over layers and prompts at ``density`` (tda at scale 1), plus the std over prompts."""
    from tda.evaluate.recall import summary_at

    summary = summary_at(rows, density=density)
    prompts = sorted({r["prompt"] for r in rows})
    per_prompt = {p: summary_at([r for r in rows if r["prompt"] == p], density=density) for p in prompts}
    for s in summary:
        for m in ("recall", "mass_recall"):
            vals = [x[m] for p in prompts for x in per_prompt[p] if x["truth"] == s["truth"] and x["method"] == s["method"]]
            s[f"{m}_std_over_prompts"] = _std(vals)
        s["n_prompts"] = len(prompts)
    return summary


def summary_table(summary: list[dict], density: float) -> Table:
    from rich.table import Table

    table = Table(title=f"mean over layers and prompts at density ≈ {density:g} (tda: calibrated t_L, scale 1)")
    n = max((s.get("n_prompts", 1) for s in summary), default=1)
    recall_head = "recall TT ± std over prompts" if n > 1 else "recall TT"
    for name in ("method", "point", "density", recall_head, "mass recall", "precision TT", "recall top-p"):
        table.add_column(name, no_wrap=True)
    by = {(s["truth"], s["method"]): s for s in summary}
    for (truth, method), s in by.items():
        if truth != "tt":
            continue
        top = by.get(("top", method))
        sd = s.get("recall_std_over_prompts", float("nan"))
        table.add_row(
            method, f"{s['param']} {s['value']:g}", _fmt(s["density"]),
            _fmt(s["recall"]) + ("" if sd != sd else f" ±{sd:.3f}"), _fmt(s["mass_recall"]),
            _fmt(s["precision"]), _fmt(top["recall"]) if top else "",
        )
    return table


PLOTLY_JS = "plotly.min.js"  # written once per output folder (as tda.evaluate.quality_plots); pages load it


def write_figures(figs: dict[str, object], out_dir: Path, png: bool) -> list[str]:
    """Write ``name.html`` always (each a small page loading the folder's one ``plotly.min.js``) and
    ``name.png`` (kaleido + Chromium) when possible; returns notes."""
    import contextlib

    from tda.common.atomic import atomic_path, write_text_atomic

    notes = []
    if figs:  # plotly.js once, beside the pages (offline); each page loads it with <script src>
        from plotly.offline import get_plotlyjs

        write_text_atomic(out_dir / PLOTLY_JS, get_plotlyjs())
    for name, fig in figs.items():
        write_text_atomic(out_dir / f"{name}.html", fig.to_html(include_plotlyjs=PLOTLY_JS, full_html=True))
    if png:
        try:
            import plotly.io as pio

            with contextlib.ExitStack() as stack:
                tmps = [stack.enter_context(atomic_path(out_dir / f"{name}.png")) for name in figs]
                pio.write_images(list(figs.values()), [str(t) for t in tmps], format="png", width=1000, height=600)
        except Exception as e:  # no browser for kaleido: HTML only
            notes.append(f"PNG export skipped ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})")
    return notes


@app.command()
def recall(
    out: Path = typer.Option(..., "--out", "-o", help="output folder (CSV, JSON summary, figures)"),
    model: str = ModelOpt,
    prompt: str = typer.Option(None, "--prompt", "-p",
                               help="one prompt; - reads it from standard input (default: --prompt-file or --data)"),
    prompt_file: Path = PromptFileOpt,
    data: Path = typer.Option(None, "--data",
                              help="prompts (.json/.jsonl with a 'text' field) (default: --prompt or --prompt-file)"),
    limit: int = typer.Option(None, "--limit", help="use only the first N prompts of --data (default: all)"),
    new_tokens: int = typer.Option(64, "--new-tokens", help="greedy decode steps per prompt"),
    densities: str = typer.Option("0.1:0.9:0.1", "--densities", help="start:stop:step or a comma list, each in (0, 1]"),
    scales: str = typer.Option("0.25,0.3536,0.5,0.7071,1,1.414,2,2.828,4", "--scales",
                               help="TDA threshold scales (t / t_L) for recall-vs-threshold"),
    methods: str = typer.Option("tda,tda_matched,griffin,static,random,oracle", "--methods",
                                help="comma-separated mask methods to score (oracle: decode tokens' own top-k)"),
    cett: float = typer.Option(0.2, "--cett", help="CETT target for calibration (when no --thresholds)"),
    thresholds: Path = typer.Option(None, "--thresholds",
                                    help="threshold file from `tda calibrate` (default: calibrate at --cett, cached)"),
    top_p: float = typer.Option(0.2, "--top-p", help="second ground truth: top-p fraction by output norm"),
    seed: int = typer.Option(0, "--seed", help="seed of the random masks (+ prompt index)"),
    png: bool = typer.Option(True, "--png/--no-png", help="also export PNG figures (kaleido + Chromium)"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """Do prompt masks predict decode-time activations? Recall per method × layer × density/threshold."""
    import time

    from tda.cli import checks
    from tda.common.errors import BadInput

    # cheap checks first (no torch): the sources of the prompts, the model, the output folder
    if sum(x is not None for x in (prompt, prompt_file, data)) != 1:
        raise BadInput("give exactly one of --prompt, --prompt-file or --data")
    checks.check_model_args(model, dtype, device)
    checks.check_out_dir(out)

    from tda.activations.capture import tokenize
    from tda.activations.decode import check_new_tokens
    from tda.common import distributed
    from tda.common.data import load_texts
    from tda.evaluate.recall import (
        aggregate,
        check_methods,
        check_top_p,
        parse_densities,
        parse_scales,
        study_prompt,
    )
    from tda.masks.build import model_down_norms, model_static_scores
    from tda.masks.calibrate import Calibration, load_or_calibrate
    from tda.masks.cett import check_target

    # every argument is checked before a model is loaded or anything is written
    check_new_tokens(new_tokens)
    dens = parse_densities(densities)
    scl = parse_scales(scales)
    meths = check_methods(methods)
    check_target(cett)
    check_top_p(top_p)
    if limit is not None and limit < 1:
        raise BadInput(f"limit must be at least 1, got {limit}")
    if data is None:
        texts = [checks.read_prompt(prompt, prompt_file)]
    else:
        texts = [t for t in load_texts(data, limit=limit) if t.strip()]
        if not texts:
            raise BadInput(f"{data} holds no prompts")
    cal = Calibration.load(thresholds) if thresholds is not None else None
    from tda.activations.budget import check_before_load, prefill_plan

    check_before_load(model, dtype, new_tokens=new_tokens, capture_all=True,  # before the model loads
                      doing=f"recall ({new_tokens} new tokens, every layer recorded)")
    lm = load(model, dtype, device)
    if cal is not None:
        cal.check_model(lm)

    for i, t in enumerate(texts):  # every prompt fits the context and the memory budget, before any work
        n = len(tokenize(lm, t, max_tokens=lm.n_ctx - new_tokens))
        prefill_plan(lm, n, new_tokens, capture_layers=lm.ffn.n_layers,
                     what=f"recall on prompt {i + 1} ({n} tokens, {new_tokens} new tokens)")
    if cal is None:
        with console.status(f"CETT {cett:g} calibration (cached after the first run)..."):
            cal = load_or_calibrate(lm, None, cett)

    from tda.common.atomic import check_output_dir, write_text_atomic

    out_dir = check_output_dir(out)
    norms, static = model_down_norms(lm), model_static_scores(lm)
    rows, generations = [], []
    t0 = time.time()

    def one_prompt(i, text):  # under torchrun/accelerate each process runs its share of the prompts
        dc, r = study_prompt(lm, text, cal, new_tokens=new_tokens, densities=dens, methods=meths, scales=scl,
                             top_p=top_p, seed=seed + i, extra={"prompt": i}, norms=norms, static_scores=static)
        echo_err(f"[tda] prompt {i + 1}/{len(texts)}: {dc.prefill_acts.shape[1]} prompt tokens, "
                 f"{dc.n_steps} decode steps ({time.time() - t0:.0f} s)")
        return r, {"prompt": i, "prompt_tokens": dc.prefill_acts.shape[1], "steps": dc.n_steps,
                   "text": text[:120], "generated": dc.text}

    for r, g in distributed.map_sharded(one_prompt, texts):  # gathered in prompt order
        rows.extend(r)
        generations.append(g)
    if not distributed.is_main():  # the main process writes every output
        return

    agg = sorted(aggregate(rows), key=lambda r: (r["truth"], r["method"], r["value"], r["layer"]))
    summary = study_summary(rows, 0.5)
    write_text_atomic(out_dir / "recall.csv", rows_to_csv(agg))
    write_text_atomic(out_dir / "recall_per_prompt.csv", rows_to_csv(rows))
    meta = {
        "model_id": lm.model_id, "dtype": str(lm.dtype).replace("torch.", ""), "n_prompts": len(texts),
        "new_tokens": new_tokens, "densities": dens, "scales": scl, "methods": meths, "top_p": top_p,
        "seed": seed, "data": str(data) if data else None, "limit": limit,
        "calibration": {"target": cal.target, "data_hash": cal.data_hash, "n_tokens": cal.n_tokens,
                        "thresholds": cal.thresholds, "densities": cal.densities},
        "summary_at_density_0.5": summary, "generations": generations, "seconds": round(time.time() - t0, 1),
    }
    write_text_atomic(out_dir / "summary.json", json.dumps(meta, indent=1))

    from tda.evaluate.recall_plots import (
        recall_by_layer_figure,
        recall_vs_density_figure,
        recall_vs_threshold_figure,
    )

    figs = {
        "recall_vs_density": recall_vs_density_figure(rows, truth="tt", metric="recall"),
        "mass_recall_vs_density": recall_vs_density_figure(rows, truth="tt", metric="mass_recall"),
        "recall_vs_density_top": recall_vs_density_figure(rows, truth="top", metric="recall"),
        "recall_by_layer": recall_by_layer_figure(rows, truth="tt", metric="recall"),
    }
    if "tda" in meths:
        figs["recall_vs_threshold"] = recall_vs_threshold_figure(rows, truth="tt")
    for note in write_figures(figs, out_dir, png):
        echo_err(f"[tda] {note}")
    console.print(
        f"[bold]wrote {out_dir}[/bold]: {lm.model_id}, {len(texts)} prompt(s), {new_tokens} new tokens, "
        f"CETT {cal.target:g}; TT density on decode tokens "
        f"{_fmt(sum(r['truth_density'] for r in agg if r['truth'] == 'tt') / max(1, sum(r['truth'] == 'tt' for r in agg)))}"
    )
    console.print(summary_table(summary, 0.5))
