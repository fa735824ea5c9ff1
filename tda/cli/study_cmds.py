"""``tda figures``, ``tda inertia``, ``tda similarity``: the paper's studies from the command line.

Every argument is checked before a model is loaded; outputs are written atomically (a failed
run leaves no half-written file or folder).
"""

from __future__ import annotations

import json
import sys
import time
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
    progress_printer,
)

console = LazyConsole(width=None if sys.stdout.isatty() else 160)  # tables stay whole when piped

RuleOpt = typer.Option("cett", "--rule", help="what 'active' means: cett (per-layer CETT threshold) or topp")
CettOpt = typer.Option(0.2, "--cett", help="CETT target of the cett rule, in (0, 1)")
TopPOpt = typer.Option(0.1, "--top-p", help="fraction of neurons active per token under the topp rule, in (0, 1)")
KOpt = typer.Option(4, "--k", help="previous tokens whose union a token's active set is compared with")
SeedOpt = typer.Option(0, "--seed", help="seed of the random tokens/words and the random-weights control")


def _tqdm(items, desc: str = ""):
    from tqdm import tqdm

    return tqdm(items, desc=f"[tda] {desc}", file=sys.stderr, leave=False, disable=not sys.stderr.isatty())


def _check_common(rule: str, cett: float, top_p: float, k: int) -> None:
    from analysis.activation import check_rule_args, check_top_p
    from tda.common.errors import BadInput
    from tda.masks.cett import check_target

    check_rule_args(rule, None)
    check_target(cett)
    check_top_p(top_p)
    if k < 1:
        raise BadInput("--k must be at least 1")


def _rule(lm, rule: str, cett: float, top_p: float):
    from analysis.activation import make_rule

    return make_rule(lm, rule, cett if rule == "cett" else top_p, progress=None) if rule == "cett" \
        else make_rule(lm, "topp", top_p)


@app.command()
def figures(
    model: str = ModelOpt,
    out: Path = typer.Option(Path("figures"), "--out", "-o", help="output folder"),
    layer: int = typer.Option(None, "--layer", help="layer of the single-layer heatmaps (default: the middle one)"),
    cett: float = CettOpt,
    top_p: float = TopPOpt,
    k: int = KOpt,
    seed: int = SeedOpt,
    scale_samples: int = typer.Option(120, "--scale-samples", help="Appendix C: sequences from the shipped corpus"),
    scale_tokens: int = typer.Option(32, "--scale-tokens", help="Appendix C: tokens per sequence"),
    control: bool = typer.Option(True, "--control/--no-control", help="also run the random-weights control"),
    samples: Path = typer.Option(None, "--samples", help="Study 2 sample file (default data/samples13.json)"),
    png: bool = typer.Option(True, "--png/--no-png", help="export PNGs through kaleido (HTML is always written)"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """Regenerate every figure of Study 1, Appendix C and Study 2, plus REPORT.md and manifest.json."""
    from analysis.pipeline import FigureSettings, check_out_dir, run_studies, write_outputs
    from tda.common.data import load_samples

    settings = FigureSettings(layer=layer, cett=cett, top_p=top_p, k=k, seed=seed, scale_samples=scale_samples,
                              scale_tokens=scale_tokens, control=control,
                              samples=str(samples) if samples else None, png=png).check()
    load_samples(settings.samples)
    check_out_dir(out)  # creates nothing: a run that fails later leaves no folder behind
    t0 = time.perf_counter()
    lm = load(model, dtype, device)
    t_load = time.perf_counter() - t0
    studies = run_studies(lm, settings, log=progress_printer, progress=_tqdm)
    from tda.common import distributed

    if not distributed.is_main():  # Appendix C was shared out over processes; the main one writes
        return
    info = write_outputs(out, studies, log=progress_printer)
    t = studies["timings"] | {"load": t_load, "total": time.perf_counter() - t0}
    console.print(f"wrote {len(info['files'])} files to {info['out']} "
                  f"({'PNG + HTML' if not info['png_error'] else 'HTML only'})")
    console.print("timings (s): " + ", ".join(f"{k_} {v:.1f}" for k_, v in t.items()))


def _inertia_table(result: dict) -> Table:
    from rich.table import Table

    table = Table("layer", *[f"{src} {what}" for src in result["sources"] for what in ("J iso→seq", "n50 iso→seq", "J(seq,iso)")],
                  title=f"{result['model_id']}: inertia, rule {result['rule']['label']}, k={result['k']}")
    for i, L in enumerate(result["layers"]):
        row = [str(L)]
        for d in result["sources"].values():
            a, b = d["isolated"][i], d["sequence"][i]
            row += [f"{a['jaccard']:.3f}→{b['jaccard']:.3f}", f"{a['n50']}→{b['n50']}", f"{d['self_jaccard'][i]:.3f}"]
        table.add_row(*row)
    return table


@app.command()
def inertia(
    prompt: str = typer.Option(None, "--prompt", "-p",
                               help="text whose first --tokens tokens are studied; - reads standard input "
                                    "(default: --prompt-file)"),
    prompt_file: Path = PromptFileOpt,
    model: str = ModelOpt,
    layer: int = typer.Option(None, "--layer",
                              help="study one layer only; negative counts from the end, -1 is the last "
                                   "(default: all layers)"),
    rule: str = RuleOpt,
    cett: float = CettOpt,
    top_p: float = TopPOpt,
    k: int = KOpt,
    tokens: int = typer.Option(16, "--tokens",
                               help="how many tokens of the prompt (and random tokens); a shorter prompt is "
                                    "used whole; the run always says how many it used when that is not "
                                    "the whole prompt or fewer than asked"),
    seed: int = SeedOpt,
    control: bool = typer.Option(False, "--control/--no-control", help="also run the random-weights control"),
    json_out: Path = typer.Option(None, "--json", help="write the numbers to this JSON file (default: not written)"),
    html: Path = typer.Option(None, "--html", help="write the heatmap figure to this HTML file (default: not written)"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """Study 1 (activation inertia) on any prompt: metrics, sequence − isolated, Claim 4 verdict."""
    from tda.cli import checks
    from tda.common.atomic import check_output_path, write_text_atomic
    from tda.common.errors import BadInput

    text = checks.read_prompt(prompt, prompt_file)
    if tokens < 2:
        raise BadInput("--tokens must be at least 2")
    checks.check_model_args(model, dtype, device, layers=[layer] if layer is not None else None)
    for p in (json_out, html):
        if p is not None:
            check_output_path(p)
    _check_common(rule, cett, top_p, k)

    from analysis.inertia import claim4_verdict
    from analysis.studies import inertia_for_prompt
    from tda.activations.capture import resolve_layers

    lm = load(model, dtype, device)
    layers = resolve_layers(lm, [layer]) if layer is not None else None
    r = _rule(lm, rule, cett, top_p)
    run = inertia_for_prompt(lm, r, text, n_tokens=tokens, seed=seed, k=k, layers=layers)
    used = min(c.n_tokens for c in run.captures.values())
    total = len(lm.tokenizer(text, add_special_tokens=False).input_ids)
    if used < total:  # the window cuts the prompt: say so every time, with how to study all of it
        echo_err(f"note: studied the first {used} of the prompt's {total} tokens (--tokens {tokens}; "
                 f"--tokens {total} studies all of it) and {used} random tokens")
    elif used < tokens:
        echo_err(f"note: used {used} prompt token(s) and {used} random tokens, fewer than --tokens {tokens}: "
                 f"the prompt is shorter")
    ctrl = None
    if control:
        from analysis.random_control import random_weights_like

        clm = random_weights_like(lm, seed)
        ctrl = inertia_for_prompt(clm, _rule(clm, rule, cett, top_p), prompt, n_tokens=tokens, seed=seed, k=k,
                                  layers=layers).result
    verdict = claim4_verdict(run.result, ctrl)
    console.print(_inertia_table(run.result))
    if ctrl is not None:
        console.print(_inertia_table(ctrl))
    console.print(verdict["statement"], markup=False)
    if json_out is not None:
        from analysis.pipeline import round_floats

        write_text_atomic(json_out, json.dumps(round_floats({"result": run.result, "control": ctrl,
                                                             "claim4": verdict}), indent=1, ensure_ascii=False))
        console.print(f"wrote {json_out}")
    if html is not None:
        from analysis.plots import inertia_heatmaps

        L = run.result["layers"][len(run.result["layers"]) // 2]
        fig = inertia_heatmaps(run.captures, L, result=run.result, model_id=lm.model_id)
        write_text_atomic(html, fig.to_html(include_plotlyjs=True, full_html=True, div_id="inertia"))
        console.print(f"wrote {html}")


@app.command()
def similarity(
    json_out: Path = typer.Option(..., "--json", help="write matrices and verdicts to this JSON file"),
    model: str = ModelOpt,
    samples: Path = typer.Option(None, "--samples", help="sample file: JSON list of {id, text[, treatment]} (default: the 13 samples)"),
    cett: float = CettOpt,
    griffin_density: float = typer.Option(0.5, "--griffin-density", help="GRIFFIN mask density, in (0, 1]"),
    html: Path = typer.Option(None, "--html", help="also write the heatmaps to this HTML file (default: not written)"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """Study 2: pairwise similarity of the samples' activation patterns and the (a)–(e) verdicts."""
    from rich.table import Table

    from analysis.activation import cett_rule
    from analysis.pipeline import round_floats
    from analysis.similarity import check_samples, similarity_study, verdict_rows
    from tda.common.atomic import check_output_path, write_text_atomic
    from tda.common.data import load_samples
    from tda.masks.build import check_density
    from tda.masks.cett import check_target

    check_target(cett)
    check_density(griffin_density)
    rows = check_samples(load_samples(samples))
    check_output_path(json_out)
    if html is not None:
        check_output_path(html)
    lm = load(model, dtype, device)
    result = similarity_study(lm, rows, cett_rule(lm, cett), griffin_density=griffin_density)
    write_text_atomic(json_out, json.dumps(round_floats(result), indent=1, ensure_ascii=False))
    vr = verdict_rows(result)
    if vr:
        table = Table("obs.", "measure", *result["groups"], title=f"{lm.model_id}: observations (a)–(e)")
        for key in result["observations"]:
            for m in result["measures"]:
                cells = [r for r in vr if r["observation"] == key and r["measure"] == m]
                table.add_row(f"({key})", m, *[f"{'holds' if c['holds'] else 'fails'} {c['margin']:+.4f}" for c in cells])
        console.print(table)
    else:
        echo_err("note: observations (a)-(e) need samples with ids 1..13; only the matrices were computed")
    console.print(f"wrote {json_out}")
    if html is not None:
        from analysis.export import write_html_page
        from analysis.plots import similarity_grid, verdict_grid

        figs = {f"similarity_{m}": similarity_grid(result, m) for m in result["measures"]}
        if vr:
            figs["verdicts"] = verdict_grid(result)
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            page = write_html_page(figs, Path(tmp) / "page.html", title=f"Study 2 — {lm.model_id}")
            write_text_atomic(html, page.read_text(encoding="utf-8"))
        console.print(f"wrote {html}")
