"""``tda generate``, ``tda bench``, ``tda eval``: sparse generation, latency, quality."""

from __future__ import annotations

import json
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


def _floats(text: str, what: str) -> list[float]:
    from tda.common.errors import BadInput

    try:
        return [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise BadInput(f"{what} must be comma-separated numbers, got '{text}'") from None


def _names(text: str) -> list[str]:
    return [x for x in text.replace(" ", "").split(",") if x]


@app.command("generate")
def generate_cmd(
    prompt: list[str] = typer.Option(None, "--prompt", "-p", metavar="TEXT",
                                     help="prompt text (repeat for a batch); - reads it from standard input "
                                          "(default: --prompt-file)"),
    prompt_file: list[Path] = typer.Option(None, "--prompt-file", metavar="PATH",
                                           help="read a prompt from this UTF-8 text file (repeat for a batch; "
                                                "default: --prompt)"),
    model: str = ModelOpt,
    method: str = typer.Option("dense", "--method",
                               help="a method of `tda methods` (e.g. dense, tt, griffin, tda, cats, teal, wina, "
                                    "chess, scap, rsparse, predictor) or PROMPT+tt (e.g. griffin+tt)"),
    density: float = typer.Option(None, "--density",
                                  help="fraction kept, in (0, 1]; needed by griffin, static and random. Left "
                                       "out, the method's calibrated rule: tda keeps the neurons above the "
                                       "calibrated per-layer CETT thresholds t_L (density varies by layer), tt "
                                       "and cats threshold every token at them (default: left out)"),
    lm_head_density: float = typer.Option(None, "--lm-head-density",
                                          help="also sparsify the lm_head input token-wise at this density "
                                               "(default: lm_head dense)"),
    cett: float = typer.Option(0.2, "--cett", help="CETT target for calibrated tda/tt thresholds"),
    griffin_reference: bool = typer.Option(
        False, "--griffin-reference",
        help="griffin exactly as GRIFFIN's reference code: BOS counted in the prompt statistic and "
             "k = int(d_ff * density) rounded down (default: BOS left out, k rounded to nearest)"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", "-n", help="tokens to generate at most"),
    min_new_tokens: int = typer.Option(0, "--min-new-tokens", help="tokens to generate before a stop token may end it"),
    sample: bool = typer.Option(False, "--sample", help="sample instead of greedy"),
    temperature: float = typer.Option(1.0, "--temperature", help="sampling temperature (with --sample)"),
    top_p: float = typer.Option(1.0, "--top-p", help="nucleus sampling: keep this probability mass (with --sample)"),
    top_k: int = typer.Option(0, "--top-k", help="sample among the k likeliest tokens, 0: all (with --sample)"),
    seed: int = typer.Option(None, "--seed", help="random seed of sampling (default: not seeded)"),
    no_fast: bool = typer.Option(False, "--no-fast", help="disable the oneDNN fp32 linear path"),
    batch_mode: str = typer.Option("union", "--batch-mode", help="union or rows (per-row masks in a batch)"),
    json_out: Path = typer.Option(None, "--json", help="also write the result as JSON (default: not written)"),
    speculate: int = typer.Option(0, "--speculate", metavar="K",
                                  help="exact greedy decoding with a speculative lm_head: K steps (1-4) over a "
                                       "draft vocabulary, then the full head once for the K positions; the same "
                                       "tokens, fewer head reads (--dtype gguf with the head on integer tiles, one "
                                       "prompt, greedy; default: 0, off)"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """Generate with a sparse FFN: dense prefill, masks from it, sliced FFN weights while decoding."""
    from tda.cli import checks
    from tda.cli.show import generation_block

    prompts = checks.read_prompts(prompt, prompt_file)
    checks.check_model_args(model, dtype, device)
    checks.check_sampling(sample, temperature, top_p, top_k)
    checks.check_out_file(json_out)

    from tda.common.atomic import check_output_path, write_text_atomic
    from tda.common.errors import BadInput
    from tda.engine.config import SparsityConfig
    from tda.engine.generate import generate

    if griffin_reference and method.split("+")[0] != "griffin":
        raise BadInput("--griffin-reference applies to --method griffin only")
    cfg = SparsityConfig(method, density=density, cett=cett, lm_head_density=lm_head_density, fast=not no_fast,
                         batch_mode=batch_mode, griffin_reference=griffin_reference)
    if max_new_tokens < 1:
        raise BadInput(f"max-new-tokens must be >= 1, got {max_new_tokens}")
    if json_out is not None:
        check_output_path(json_out)
    from tda.activations.budget import check_before_load

    if speculate and (sample or len(prompts) != 1 or min_new_tokens or not 1 <= speculate <= 4):
        raise BadInput("--speculate takes K in 1..4, one prompt, greedy decoding and no --min-new-tokens")
    check_before_load(model, dtype, new_tokens=max_new_tokens, batch=len(prompts))  # before the model loads
    lm = load(model, dtype, device)
    if speculate:
        from tda.engine.speculate import generate_speculative

        res = generate_speculative(lm, prompts[0], cfg, max_new_tokens=max_new_tokens, k=speculate)
        st = res.params["speculative"]
        echo_err(f"speculative lm_head: {st['accepted']} of {st['drafted']} drafts confirmed in {st['cycles']} "
                 f"full-head passes (draft vocabulary: {st['vocab']} rows)")
        res.params["fast"] = True
    else:
        res = generate(lm, prompts, cfg, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens or None,
                       do_sample=sample, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    for i, text in enumerate(res.texts):
        print(generation_block(prompts[i], text, index=i if len(res.texts) > 1 else None,
                               n_tokens=len(res.token_ids[i])))
    t = res.timings
    print(f"method {method}: density {res.density:.3f} (per layer of prompt 0: "
          + " ".join(f"{d:.2f}" for d in res.density_per_layer[0]) + ")")
    print(f"prefill {1000 * t['prefill_s']:.1f} ms, mask {1000 * t['mask_s']:.1f} ms, decode "
          f"{t['decode_ms_per_token']:.1f} ms/token over {t['decode_steps']} steps, total {t['total_s']:.2f} s"
          f" (fast path: {res.params['fast']})")
    if json_out is not None:
        data = res.to_json(0)
        if len(res.texts) > 1:
            data["batch"] = [res.to_json(i) for i in range(len(res.texts))]
        write_text_atomic(json_out, json.dumps(data, indent=1))
        echo_err(f"wrote {json_out}")


@app.command("bench")
def bench_cmd(
    model: str = ModelOpt,
    methods: str = typer.Option("stock,dense,tt,griffin,tda", "--methods",
                                help="comma list: stock (plain HF generate) or any method of `tda generate`"),
    density: float = typer.Option(0.5, "--density", help="one density for every sparse method"),
    densities: str = typer.Option(None, "--densities",
                                  help="comma list of densities (overrides --density; default: --density)"),
    prompt_tokens: int = typer.Option(64, "--prompt-tokens", help="prompt length in tokens"),
    new_tokens: int = typer.Option(32, "--new-tokens", help="decode steps timed per method and round"),
    rounds: int = typer.Option(5, "--rounds", help="paired rounds over the methods (medians are reported)"),
    target_ci: float = typer.Option(None, "--target-ci",
                                    help="stop rounds once every speedup's 95% half-width ÷ speedup is below this (default: off, run --rounds)"),
    max_rounds: int = typer.Option(None, "--max-rounds", help="with --target-ci: at most this many rounds (default --rounds)"),
    bandwidth_mb: float = typer.Option(256, "--bandwidth-mb", help="buffer of the streaming-read measurement (0: skip)"),
    out: Path = typer.Option(None, "--out", "-o", help="write the result JSON here (default: not written)"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """Decode latency of methods × densities, each measured right beside dense (paired rounds; speedup
    with a 95% interval over rounds), with each one's bytes ceiling and the roofline from the
    bandwidth measured in the same run."""
    from tda.common.atomic import check_output_path, write_text_atomic
    from tda.common.errors import BadInput
    from tda.evaluate.bench import bench_variants, format_table, run_bench

    ms = _names(methods)
    ds = _floats(densities, "densities") if densities is not None else [density]
    try:
        bench_variants(ms, ds)  # validates methods and densities before anything is loaded
    except BadInput as e:
        if str(e).startswith("unknown method"):
            raise BadInput(f"unknown bench method: {e} (or stock)") from None
        raise
    if new_tokens < 2 or rounds < 1 or prompt_tokens < 1:
        raise BadInput("need --new-tokens >= 2, --rounds >= 1 and --prompt-tokens >= 1")
    if bandwidth_mb < 0:
        raise BadInput("--bandwidth-mb must be >= 0")
    if target_ci is not None and not 0 < target_ci < 1:
        raise BadInput("--target-ci must be in (0, 1)")
    if max_rounds is not None and max_rounds < rounds:
        raise BadInput("--max-rounds must be >= --rounds")
    if out is not None:
        check_output_path(out)
    lm = load(model, dtype, device)
    if prompt_tokens + new_tokens > lm.n_ctx:
        raise BadInput(f"prompt + new tokens ({prompt_tokens + new_tokens}) exceed the context ({lm.n_ctx})")
    from tda.common.data import load_texts

    res = run_bench(lm, methods=tuple(ms), densities=ds, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                    rounds=rounds, calibration_texts=load_texts(limit=4) if lm.is_random else None,
                    bandwidth_mb=bandwidth_mb or None, target_ci=target_ci, max_rounds=max_rounds,
                    progress=progress_printer)
    print(format_table(res))
    if out is not None:
        write_text_atomic(out, json.dumps(res, indent=1))
        echo_err(f"wrote {out}")


@app.command("eval")
def eval_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="output folder"),
    model: str = ModelOpt,
    methods: str = typer.Option("dense,tt,griffin,tda", "--methods", help="comma-separated methods to evaluate"),
    densities: str = typer.Option("0.25,0.5,0.75", "--densities",
                                  help="comma-separated densities of the sparse methods, each in (0, 1]"),
    eval_set: str = typer.Option("pydoc-text", "--set",
                                 help="evaluation set (`tda data`): a text set (perplexity, agreement), a cloze set "
                                      "or an MC set"),
    data: Path = typer.Option(None, "--data",
                              help="held-out texts (JSONL with 'text'), instead of --set's texts (default: --set's)"),
    gen_prompts: int = typer.Option(0, "--gen-prompts",
                                    help="free-running generations of --gen-tokens from the first N texts (0: skip)"),
    gen_tokens: int = typer.Option(64, "--gen-tokens", help="tokens per free-running generation"),
    summaries: Path = typer.Option(None, "--summaries",
                                   help="JSONL with 'article' and 'summary' (default: data/summarization.jsonl)"),
    limit: int = typer.Option(None, "--limit", help="at most N texts (or cloze/MC items) and N articles (default: all)"),
    mc_limit: int = typer.Option(0, "--mc-limit", help="multiple-choice items via lm-eval (0: skip, -1: all)"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="summary length limit"),
    cett: float = typer.Option(0.2, "--cett", help="CETT target of the calibrated tda/tt thresholds"),
    journal: Path = JournalOpt,
    resume: bool = ResumeOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """Perplexity, agreement with dense, ROUGE, cloze accuracy, free-running generation quality (and
    lm-eval multiple choice) per method and density, with paired differences from dense. A long run
    keeps its scored passages with --journal PATH or --resume: rerunning the same command continues
    where it stopped (perplexity and cloze; summaries, generations and multiple choice run again)."""
    from tda.common.atomic import check_output_dir_writable, write_text_atomic
    from tda.common.data import SUMMARIZATION, load_records, load_texts
    from tda.common.errors import BadInput
    from tda.common.evalsets import get_set
    from tda.evaluate.quality import run_eval, to_csv, to_markdown, variants
    from tda.evaluate.quality_plots import quality_figure, write_figure

    ms, ds = _names(methods), _floats(densities, "densities")
    variants(ms, ds)  # validates before loading anything
    if limit is not None and limit < 1:
        raise BadInput("--limit must be >= 1")
    if max_new_tokens < 1:
        raise BadInput("--max-new-tokens must be >= 1")
    if gen_prompts < 0 or gen_tokens < 4:
        raise BadInput("need --gen-prompts >= 0 and --gen-tokens >= 4")
    from tda.cli.checks import check_count

    check_count(mc_limit, "--mc-limit", minimum=0, allow=(-1,))
    es = get_set(eval_set)
    out_dir = check_output_dir_writable(out)  # created only when the results are written
    from tda.cli.checks import journal_path, open_journal

    jpath = journal_path(journal, resume, out_dir)  # refused before the model loads
    heldout, cloze = [], []
    if data is not None:
        heldout = load_texts(data, limit=limit)
    elif es.kind == "text":
        heldout = es.load()[:limit]
    elif es.kind == "cloze":
        cloze = es.load()[:limit]
    else:  # the MC set runs through lm-eval
        mc_limit = mc_limit or (limit or -1)
    recs = (load_records(summaries or SUMMARIZATION, required=("article", "summary"))[:limit]
            if es.kind == "text" or data is not None or summaries is not None else [])
    if heldout or cloze or recs:  # scoring or summarising: at least one forward with its logits
        from tda.activations.budget import check_before_load

        check_before_load(model, dtype, new_tokens=0, doing="scoring texts")  # before the model loads
    lm = load(model, dtype, device)
    from tda.cli.checks import check_eval_memory

    check_eval_memory(lm, heldout + [c["context"] for c in cloze], recs, max_new_tokens)  # before any work
    res = run_eval(lm, ms, ds, heldout=heldout, summaries=recs, mc_limit=mc_limit or None,
                   max_new_tokens=max_new_tokens, cett=cett, progress=progress_printer, cloze=cloze,
                   gen_texts=heldout[:gen_prompts], gen_tokens=gen_tokens, journal=open_journal(jpath, out_dir))
    from tda.common import distributed

    if not distributed.is_main():  # texts were shared out over processes; the main one writes
        return
    res["meta"]["limit"] = limit
    res["meta"]["set"] = None if data is not None else es.name
    res["meta"]["journal"] = None if jpath is None else jpath.name
    from tda.common.atomic_dir import atomic_dir

    md = to_markdown(res["rows"])
    with atomic_dir(out, command="eval") as tmp_dir:  # one complete set or the previous one
        write_text_atomic(tmp_dir / "quality.json", json.dumps(res, indent=1))
        write_text_atomic(tmp_dir / "quality.csv", to_csv(res["rows"]))
        write_text_atomic(tmp_dir / "quality.md", md)
        for metric in ("ppl", "agreement", "rouge1", "rouge1_vs_dense", "mc_acc", "cloze_acc", "gen_rougeL",
                       "gen_rep"):
            if any(metric in r for r in res["rows"]):
                write_figure(quality_figure(res["rows"], metric), tmp_dir / f"quality-{metric}")
    print(md)
    echo_err(f"wrote {out_dir}/quality.{{json,csv,md}} and quality-*.html")
    if jpath is not None:
        echo_err(f"journal {jpath} kept: the same command reuses it (delete it to score afresh)")
