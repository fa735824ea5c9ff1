"""llama.cpp side by side: the same GGUF, prompt, thread count and greedy decoding, rounds alternating.

    python benchmarks/llamacpp.py                       # the embedded Gemma 3 270M Q4_K_M file
    python benchmarks/llamacpp.py --model path/to/x.gguf --threads 2 --rounds 4 \\
        --variants gguf:dense,bf16:dense,fp32:dense,bf16:teal@0.5

Needs llama-cpp-python (an optional extra: ``pip install -e ".[bench]"`` builds llama.cpp from
source, 10-20 minutes on 2 cores). Each round times llama.cpp first and after every second of our
variants (:func:`tda.evaluate.paired_timing.paired_rounds`, llama.cpp as the base), so every ratio
pairs a variant with its llama.cpp neighbours: ``ratio = llama.cpp ms/token ÷ ours`` = our tokens/s
÷ llama.cpp's, median over rounds with a 95% t-interval. Each round also measures the streaming
read with the decode's thread count and access pattern (:func:`tda.evaluate.bandwidth.measure_bandwidth`):
the roofline share (the bytes each variant reads: its weight groups times its read fractions) is per
round, rounds above 100% flagged.

A method ``M+specK`` (e.g. ``gguf:dense+spec4``, ``gguf:tt+spec4@0.5``) is M's exact greedy decoding
with a speculative lm_head (:mod:`tda.engine.speculate`: K steps over a draft vocabulary, then the
full head once for the K positions): M's tokens, fewer head reads; it stops at a stop token (no
minimum length).

Both runtimes get the same prompt token ids (ours, BOS included) and pick the argmax at every
step. Where llama.cpp's greedy tokens first differ from ours, our fp32 logits (teacher-forced on our
own tokens) say how far apart the two tokens were: llama.cpp quantises activations to 8 bits in its
dot products; our quantized format keeps them in fp32 over the file's exact weights.
Writes ``benchmarks/results/llamacpp-<model>.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "The history of the city begins in the early middle ages, when a small settlement grew around"
MISSING = ("llama-cpp-python is not installed; it is an optional extra: pip install -e \".[bench]\" "
           "(builds llama.cpp from source, 10-20 min on 2 cores)")


PROBE = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_threads=int(sys.argv[2]), n_ctx=64, n_batch=64, verbose=False)
llm.eval(llm.tokenize(b"The history of the city begins in the early middle ages", add_bos=True))
llm.eval([2])
"""


def extra_bufts_work(path: Path, threads: int) -> bool:
    """Whether this llama.cpp build runs the file with its extra CPU buffer types (AMX, repacking),
    tried in a child process: a native build's AMX matmul segfaults on some VMs' CPUs (seen here:
    SIGSEGV in ``ggml_backend_amx_mul_mat``)."""
    import subprocess

    r = subprocess.run([sys.executable, "-c", PROBE, str(path), str(threads)], capture_output=True, timeout=300)
    return r.returncode == 0


def llama_runner(path: Path, threads: int, n_ctx: int, extra_bufts: bool = True):
    """``run(ids, new_tokens) -> timings`` over llama.cpp (greedy: the argmax of its last logits,
    read straight from the context: ``Llama.scores`` stays empty without ``logits_all``).
    ``extra_bufts=False`` turns llama.cpp's extra CPU buffer types off (its AMX path and weight
    repacking): a native build's AMX matmul crashes on this VM's CPU (SIGSEGV in
    ``ggml_backend_amx_mul_mat``)."""
    import llama_cpp
    import numpy as np
    from llama_cpp import Llama

    if not extra_bufts:
        default = llama_cpp.llama_model_default_params

        def params():
            p = default()
            p.use_extra_bufts = False
            return p

        llama_cpp.llama_model_default_params = params
        llama_cpp.llama.llama_cpp.llama_model_default_params = params
    llm = Llama(model_path=str(path), n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx, n_batch=512,
                logits_all=False, verbose=False)
    n_vocab = llm.n_vocab()

    def argmax() -> int:
        row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(n_vocab,))
        return int(row.argmax())

    def run(ids: list[int], new_tokens: int) -> dict:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        tok = argmax()
        t1 = time.perf_counter()
        out = [tok]
        for _ in range(new_tokens - 1):
            llm.eval([tok])
            tok = argmax()
            out.append(tok)
        t2 = time.perf_counter()
        return {"prefill_s": t1 - t0, "decode_ms_per_token": 1000 * (t2 - t1) / (new_tokens - 1),
                "total_s": t2 - t0, "token_ids": out, "threads": threads}

    return run, llm


def parse_variants(text: str) -> list[tuple[str, str, float | None]]:
    """``"gguf:dense,bf16:teal@0.5"`` -> ``[(format, method, density)]``."""
    out = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        fmt, _, meth = part.partition(":")
        meth, _, dens = (meth or "dense").partition("@")
        if fmt not in ("gguf", "fp32", "bf16"):
            raise SystemExit(f"variant '{part}': the format must be gguf, fp32 or bf16")
        out.append((fmt, meth, float(dens) if dens else None))
    return out


def divergence(lm_ref, prompt_ids: list[int], ours: list[int], theirs: list[int]) -> dict | None:
    """Where llama.cpp's greedy tokens first differ from ours, and how far apart our (reference)
    logits put the two tokens there (teacher-forced on our tokens)."""
    import torch

    i = next((k for k, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    if i is None:
        return None
    ids = torch.tensor([prompt_ids + ours[:i]])
    with torch.inference_mode():
        logits = lm_ref.model(input_ids=ids, logits_to_keep=1).logits[0, -1].float()
    a, b = float(logits[ours[i]]), float(logits[theirs[i]])
    tok = lm_ref.tokenizer
    return {"index": i, "ours": ours[i], "llamacpp": theirs[i], "ours_text": tok.decode([ours[i]]),
            "llamacpp_text": tok.decode([theirs[i]]), "our_logit_ours": a, "our_logit_llamacpp": b,
            "gap": a - b, "relative_gap": (a - b) / max(abs(a), 1e-30)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m", help="gemma-3-270m (the embedded GGUF) or a .gguf path")
    ap.add_argument("--variants", default="gguf:dense,gguf:teal@0.5,bf16:dense,fp32:dense,bf16:teal@0.5")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--bandwidth-mb", type=float, default=256)
    ap.add_argument("--llama-extra-bufts", choices=("auto", "on", "off"), default="auto",
                    help="llama.cpp's extra CPU buffer types (AMX, repacking); auto: on when a child process "
                         "runs the file with them (a native build's AMX matmul can crash), else off")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print(MISSING, file=sys.stderr)
        raise SystemExit(2) from None
    if args.rounds < 1 or args.new_tokens < 2 or args.threads < 1:
        raise SystemExit("need --rounds >= 1, --new-tokens >= 2 and --threads >= 1")
    import torch

    from tda.common.atomic import write_text_atomic
    from tda.engine.generate import generate
    from tda.engine.speculate import generate_speculative
    from tda.evaluate.bandwidth import measure_bandwidth, roofline_ms, roofline_pct
    from tda.evaluate.bench import machine_info
    from tda.evaluate.ceiling import mean_read_fraction, read_fraction_of, weight_bytes
    from tda.evaluate.paired_timing import paired_rounds, speedup_interval
    from tda.models import embedded_gguf
    from tda.models.load import load_model

    variants = parse_variants(args.variants)
    path = embedded_gguf.gguf_file(embedded_gguf.ensure_gguf_cache()) if args.model == "gemma-3-270m" \
        else Path(args.model)
    models = {fmt: load_model(args.model, dtype=fmt) for fmt in dict.fromkeys(["fp32", *(v[0] for v in variants)])}
    ref = models["fp32"]
    prompt_ids = ref.tokenizer(args.prompt).input_ids
    extra = {"on": True, "off": False}.get(args.llama_extra_bufts)
    if extra is None:
        extra = extra_bufts_work(path, args.threads)
        if not extra:
            print("llama.cpp crashed with its extra buffer types (AMX/repacking) on this CPU: running without them",
                  file=sys.stderr)
    run_llama, llm = llama_runner(path, args.threads, n_ctx=len(prompt_ids) + args.new_tokens + 8, extra_bufts=extra)
    labels = {f"{fmt}:{m}" + (f"@{d:g}" if d is not None else ""): (fmt, m, d) for fmt, m, d in variants}
    tokens: dict[str, list[int]] = {}

    def measure(label: str) -> dict:
        if label == "llamacpp":
            t = run_llama(prompt_ids, args.new_tokens)
        else:
            fmt, m, d = labels[label]
            kw = {} if d is None else {"density": d}
            if "+spec" in m:  # exact greedy with a speculative lm_head (tda.engine.speculate)
                base, _, k = m.partition("+spec")
                r = generate_speculative(models[fmt], args.prompt, base, max_new_tokens=args.new_tokens,
                                         k=int(k or 4), threads=args.threads, **kw)
            else:
                r = generate(models[fmt], args.prompt, m, max_new_tokens=args.new_tokens,
                             min_new_tokens=args.new_tokens, threads=args.threads, **kw)
            t = dict(r.timings, token_ids=r.token_ids[0], read_fraction=r.params.get("read_fraction"))
        tokens.setdefault(label, t["token_ids"])
        return t

    bw_rounds: list[float] = []

    def after_round(r: int):
        bw_rounds.append(measure_bandwidth(args.bandwidth_mb, repeats=3, threads=args.threads)["gbps"])
        print(f"round {r}/{args.rounds} done", file=sys.stderr, flush=True)

    torch.set_num_threads(args.threads)
    pr = paired_rounds(measure, ["llamacpp", *labels], rounds=args.rounds, base="llamacpp", on_round=after_round)
    file_bytes = path.stat().st_size
    rows = {}
    llama_ms = [t["decode_ms_per_token"] for t in pr["timings"]["llamacpp"]]
    for label in ["llamacpp", *labels]:
        dec = [t["decode_ms_per_token"] for t in pr["timings"][label]]
        row = {"decode_ms_per_token": sorted(dec)[len(dec) // 2], "decode_ms_per_token_all": dec,
               "tokens_per_s": 1000 / sorted(dec)[len(dec) // 2]}
        if label != "llamacpp":
            ratios = pr["ratios"][label]["decode_ms_per_token"]
            sp, lo, hi = speedup_interval(ratios)
            fmt, m, d = labels[label]
            # bytes read per step: each weight group's bytes in this format times the fraction of it the
            # variant read (the engine's read fractions, mean over rounds): what bench's ceiling counts
            w = weight_bytes(models[fmt])
            rf = mean_read_fraction([read_fraction_of(m, d, t) for t in pr["timings"][label]])
            nbytes = sum(w[g] * rf[g] for g in w)
            pct = [roofline_pct(roofline_ms(nbytes, g), d) for g, d in zip(bw_rounds, dec)]
            ok = sorted(p for p in pct if p <= 100.0)
            row.update(vs_llamacpp=sp, vs_llamacpp_lo=lo, vs_llamacpp_hi=hi, ratios=ratios,
                       weight_bytes_per_step=nbytes, roofline_pct_rounds=pct,
                       roofline_pct_median=ok[len(ok) // 2] if ok else None,
                       roofline_rounds_above_100=sum(p > 100 for p in pct),
                       divergence_from_llamacpp=divergence(ref, prompt_ids, tokens[label], tokens["llamacpp"]),
                       same_tokens_as_fp32_dense=tokens[label] == tokens.get("fp32:dense", tokens[label]))
        rows[label] = row
    res = {
        "model": str(path.name), "file_bytes": file_bytes, "prompt": args.prompt, "prompt_tokens": len(prompt_ids),
        "new_tokens": args.new_tokens, "threads": args.threads, "rounds": pr["rounds_run"],
        "llama_cpp_python": __import__("llama_cpp").__version__, "llama_extra_bufts": extra, "machine": machine_info(),
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("TDA_")},  # our kernel choices
        "bandwidth_rounds_gbps": bw_rounds, "results": rows,
        "llamacpp_effective_gbps": [file_bytes / (ms / 1000) / 1e9 for ms in llama_ms],
        "note": ("paired rounds, llama.cpp measured first and after every 2 variants (order rotating); ratio = mean of "
                 "the neighbouring llama.cpp ms/token ÷ the variant's = tokens/s vs llama.cpp; median over rounds, 95% "
                 "t-interval; bandwidth per round with the decode's threads and GEMV access pattern"),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out = Path(args.out) if args.out else RESULTS / f"llamacpp-{path.stem}.json"
    write_text_atomic(out, json.dumps(res, indent=1))
    print(format_table(res))
    print(f"wrote {out}")
    del llm
    return res


def format_table(res: dict) -> str:
    lines = [f"{res['model']}: prompt {res['prompt_tokens']} tokens, {res['new_tokens']} new tokens greedy, "
             f"{res['threads']} threads, {res['rounds']} rounds (llama-cpp-python {res['llama_cpp_python']}, "
             f"extra buffer types {'on' if res.get('llama_extra_bufts', True) else 'off'})", "",
             "| runtime / format | decode ms/token | tokens/s vs llama.cpp [95%] | MB read/step | % of roofline per round "
             "| first token differing from llama.cpp |",
             "|---|---|---|---|---|---|"]
    for label, r in res["results"].items():
        if label == "llamacpp":
            lines.append(f"| llama.cpp (the file as shipped) | {r['decode_ms_per_token']:.1f} | 1.00x | "
                         f"{res['file_bytes'] / 1e6:.0f} | | |")
            continue
        dv = r["divergence_from_llamacpp"]
        div = "none" if dv is None else (f"#{dv['index']}: ours {dv['ours_text']!r}, llama.cpp {dv['llamacpp_text']!r} "
                                         f"(our logits {dv['gap']:.3f} apart)")
        roof = "" if r["roofline_pct_median"] is None else f"{r['roofline_pct_median']:.0f}%"
        if r["roofline_rounds_above_100"]:
            roof += f" ({r['roofline_rounds_above_100']} flagged >100%)"
        ci = f"[{r['vs_llamacpp_lo']:.2f}, {r['vs_llamacpp_hi']:.2f}]" if res["rounds"] >= 3 else "[n/a: < 3 rounds]"
        lines.append(f"| ours, {label} | {r['decode_ms_per_token']:.1f} | {r['vs_llamacpp']:.2f}x {ci} | "
                     f"{r['weight_bytes_per_step'] / 1e6:.0f} | "
                     f"{roof} | {div} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
