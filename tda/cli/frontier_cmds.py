"""``tda frontier``: decode speedup against quality for methods × densities, in one run."""

from __future__ import annotations

from pathlib import Path

import typer

from tda.cli.app import (
    DeviceOpt,
    DtypeOpt,
    JournalOpt,
    ModelOpt,
    ResumeOpt,
    app,
    echo_err,
    load,
    progress_printer,
)


def default_out(spec: str) -> Path:
    from tda.common.paths import REPO_ROOT
    from tda.evaluate.frontier import model_slug

    return REPO_ROOT / "benchmarks" / "results" / f"frontier-{model_slug(spec)}"


def check_out_dir(path: Path) -> Path:
    """An output folder that is, or can be created, writable — checked without creating anything."""
    from tda.common.atomic import check_output_dir_writable
    from tda.common.errors import BadInput

    if str(path).strip() == "":
        raise BadInput("output folder is empty")
    return check_output_dir_writable(path)


@app.command("frontier")
def frontier_cmd(
    model: str = ModelOpt,
    methods: str = typer.Option("dense,tt,griffin,tda", "--methods",
                                help="comma list of methods (any of `tda generate`'s; dense is always included)"),
    densities: str = typer.Option("0.3,0.5,0.7", "--densities", help="comma list, each in (0, 1]"),
    rounds: int = typer.Option(3, "--rounds", help="timed rounds (after one warm-up round)"),
    prompt_tokens: int = typer.Option(32, "--prompt-tokens", help="bench prompt length"),
    new_tokens: int = typer.Option(32, "--new-tokens", help="bench decode steps"),
    text_set: str = typer.Option("pydoc-text", "--set",
                                 help="text set(s) for perplexity/agreement/generation (`tda data`); a comma list "
                                      "(e.g. pydoc-text,bierce-text): quality per corpus and pooled, and the verdicts "
                                      "that hold on every corpus"),
    limit: int = typer.Option(None, "--limit", help="held-out texts for perplexity/agreement (default: all)"),
    cloze_set: str = typer.Option("auto", "--cloze-set",
                                  help="cloze set(s), one per text set (`tda data`; 'auto': each text set's own, "
                                       "e.g. pydoc-cloze; 'none': skip)"),
    cloze_limit: int = typer.Option(None, "--cloze-limit", help="cloze items (default: 2 × --limit, or all)"),
    gen_prompts: int = typer.Option(16, "--gen-prompts", help="free-running generations (first N texts; 0: skip)"),
    gen_tokens: int = typer.Option(64, "--gen-tokens", help="tokens per free-running generation"),
    mc_limit: int = typer.Option(-1, "--mc-limit", help="multiple-choice items via lm-eval (-1: all, 0: skip)"),
    target_ci: float = typer.Option(None, "--target-ci",
                                    help="stop timed rounds once every speedup's 95% half-width ÷ speedup is below this (default: off, run --rounds)"),
    max_rounds: int = typer.Option(None, "--max-rounds", help="with --target-ci: at most this many rounds (default --rounds)"),
    cett: float = typer.Option(0.2, "--cett", help="CETT target for calibrated thresholds (tda, tt)"),
    bandwidth_mb: float = typer.Option(256, "--bandwidth-mb", help="buffer of the streaming-read measurement (0: skip)"),
    boot_iters: int = typer.Option(1000, "--boot-iters", help="bootstrap resamples of the 95% intervals"),
    seed: int = typer.Option(0, "--seed", help="bootstrap seed"),
    batch_tokens: int = typer.Option(None, "--batch-tokens",
                                     help="padded tokens per scoring batch of dense and the prompt-fixed methods (default "
                                          "1024 for perplexity, 4096 for cloze; 0: one text at a time); token-wise "
                                          "methods are always scored one text at a time (exact), every variant "
                                          "sharing the text's dense prefill"),
    png: bool = typer.Option(True, "--png/--no-png", help="also export frontier.png (kaleido + Chromium)"),
    out: Path = typer.Option(None, "--out", "-o", help="output folder (default benchmarks/results/frontier-<model>)"),
    journal: Path = JournalOpt,
    resume: bool = ResumeOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """Quality × speed frontier: decode speedup (paired, vs our dense) against perplexity, agreement
    and multiple-choice accuracy (95% bootstrap intervals), with each method's bytes ceiling and the
    roofline; writes frontier.{csv,json,md,html,png}. A long run keeps its scored passages with
    --journal PATH or --resume: rerunning the same command continues where it stopped."""
    from tda.cli.generate_cmds import _floats, _names
    from tda.common.atomic import atomic_path, write_text_atomic
    from tda.common.data import load_texts
    from tda.common.errors import BadInput
    from tda.common.evalsets import cloze_set_for, get_set
    from tda.evaluate.frontier import (
        check_frontier_args,
        result_csv,
        result_markdown,
        run_frontier,
        to_json,
    )
    from tda.evaluate.frontier_plots import figure_html, figure_png, frontier_figure, frontier_title

    # every argument is checked before a model is loaded or anything is written
    ms, ds = check_frontier_args(_names(methods), _floats(densities, "densities"), dense_only=dtype.startswith("gguf")
                                 or model.lower().endswith(".gguf"))
    if rounds < 1 or new_tokens < 2 or prompt_tokens < 1:
        raise BadInput("need --rounds >= 1, --new-tokens >= 2 and --prompt-tokens >= 1")
    if limit is not None and limit < 1:
        raise BadInput("--limit must be >= 1")
    if mc_limit < -1:
        raise BadInput("--mc-limit must be -1 (all), 0 (skip) or a number of items")
    if batch_tokens is not None and batch_tokens < 0:
        raise BadInput("--batch-tokens must be >= 0")
    if bandwidth_mb < 0 or boot_iters < 1:
        raise BadInput("need --bandwidth-mb >= 0 and --boot-iters >= 1")
    if gen_prompts < 0 or gen_tokens < 4 or (cloze_limit is not None and cloze_limit < 1):
        raise BadInput("need --gen-prompts >= 0, --gen-tokens >= 4 and --cloze-limit >= 1")
    if target_ci is not None and not 0 < target_ci < 1:
        raise BadInput("--target-ci must be in (0, 1)")
    if max_rounds is not None and max_rounds < rounds:
        raise BadInput("--max-rounds must be >= --rounds")
    tsets = [get_set(n, "text") for n in _names(text_set)]
    if not tsets or len({t.name for t in tsets}) != len(tsets):
        raise BadInput("--set: give one or more different text sets")
    if cloze_set.lower() == "none":
        csets = [None] * len(tsets)
    elif cloze_set.lower() == "auto":
        csets = [get_set(c, "cloze") if (c := cloze_set_for(t.name)) else None for t in tsets]
    else:
        csets = [get_set(n, "cloze") for n in _names(cloze_set)]
        if len(csets) != len(tsets):
            raise BadInput(f"--cloze-set: give one cloze set per text set ({len(tsets)}), 'auto' or 'none'")
    tset, cset = tsets[0], csets[0]
    out_dir = check_out_dir(out if out is not None else default_out(model))
    from tda.cli.checks import journal_path, open_journal

    jpath = journal_path(journal, resume, out_dir)  # refused before the model loads
    lm = load(model, dtype, device)
    if prompt_tokens + new_tokens > lm.n_ctx:
        raise BadInput(f"prompt + new tokens ({prompt_tokens + new_tokens}) exceed the context ({lm.n_ctx})")
    texts = tset.load()[:limit]
    n_cloze = cloze_limit if cloze_limit is not None else (2 * limit if limit is not None else None)
    cloze = cset.load()[:n_cloze] if cset is not None else []
    corpora = None
    if len(tsets) > 1:
        corpora = [{"name": t.name, "texts": t.load()[:limit], "cloze": c.load()[:n_cloze] if c is not None else []}
                   for t, c in zip(tsets, csets)]
    set_names = ",".join(t.name for t in tsets)
    jnl = open_journal(jpath, out_dir)
    cloze_names = ",".join(c.name for c in csets if c is not None) or None
    res = run_frontier(lm, ms, ds, rounds=rounds, prompt_tokens=prompt_tokens, new_tokens=new_tokens, heldout=texts,
                       mc_limit=mc_limit, cloze=cloze, gen_prompts=gen_prompts, gen_tokens=gen_tokens, cett=cett,
                       bandwidth_mb=bandwidth_mb or None, boot_iters=boot_iters, seed=seed, target_ci=target_ci,
                       max_rounds=max_rounds, sets={"text": set_names, "cloze": cloze_names}, corpora=corpora,
                       batch_tokens=batch_tokens, journal=jnl,
                       calibration_texts=load_texts(limit=4) if lm.is_random else None,
                       progress=progress_printer)
    res["meta"]["command"] = {"model": model, "methods": ms, "densities": ds, "rounds": rounds,
                              "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "set": set_names,
                              "limit": limit, "cloze_set": cloze_names, "cloze_limit": n_cloze,
                              "gen_prompts": gen_prompts, "gen_tokens": gen_tokens, "mc_limit": mc_limit,
                              "target_ci": target_ci, "max_rounds": max_rounds, "batch_tokens": batch_tokens, "dtype": dtype,
                              "device": device, "journal": None if jpath is None else jpath.name}
    if lm.format_name != "fp32":  # the format's cost next to the sparsity's: pair every row with fp32 dense
        from tda.evaluate import format_cost

        ref_texts = [t for c in (corpora or [{"texts": texts}]) for t in c["texts"] if t.strip()]  # pooled order
        format_cost.pair_with_reference(res, load(model, "fp32", device), ref_texts, boot_iters=boot_iters, seed=seed,
                                        journal=jnl)
    # everything is rendered in memory first, then written (each file atomically)
    md = result_markdown(res)
    if res["meta"].get("reference"):
        md = md.rstrip("\n") + "\n\n" + format_cost.to_markdown(res) + "\n"
    fig = frontier_figure(res["rows"], title=frontier_title(res["meta"]))
    files: dict[str, str | bytes] = {"frontier.csv": result_csv(res), "frontier.json": to_json(res),
                                     "frontier.md": md, "frontier.html": figure_html(fig)}
    if png:
        try:
            files["frontier.png"] = figure_png(fig)
        except Exception as e:  # no browser for kaleido: HTML only
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
            echo_err(f"[tda] warning: frontier.png skipped ({type(e).__name__}: {first}); frontier.html has the plot")
    from tda.common.atomic_dir import atomic_dir

    with atomic_dir(out_dir, command="frontier") as tmp_dir:  # the whole set appears at once
        for name, data in files.items():
            if isinstance(data, bytes):
                with atomic_path(tmp_dir / name) as tmp:
                    tmp.write_bytes(data)
            else:
                write_text_atomic(tmp_dir / name, data)
    print(md)
    echo_err(f"wrote {out_dir}: {', '.join(files)}")
    if jpath is not None:
        echo_err(f"journal {jpath} kept: the same command reuses it (delete it to score afresh)")
