"""The torch.compile candidate for the decode step (issue 17, point 1), measured beside the engine.

Hugging Face's documented recipe for a compiled decode step on a static KV cache
(``generation_config.cache_implementation = "static"``, ``model.forward = torch.compile(...)``)
against the engine's dense decode (lean decoder stack, C++ GEMVs, fused attention) and stock
``generate``, same process, same prompt, rounds interleaved; greedy tokens compared with stock.

Usage:
    python benchmarks/compile_candidate.py --model gemma-3-270m --dtype fp32 --rounds 3
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's tda


def plain_copy(lm):
    """The same weights in a plain Hugging Face model (no tda instrumentation)."""
    import copy

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(copy.deepcopy(lm.model.config), torch_dtype=lm.dtype)
    model.load_state_dict(lm.model.state_dict(), strict=False)
    model.tie_weights()
    return model.eval().requires_grad_(False)


def main(argv=None) -> None:
    import torch
    from decode_args import decode_parser  # benchmarks/, beside this script

    from tda.engine.generate import generate
    from tda.evaluate.bench import bench_prompt
    from tda.models.load import load_model

    ap = decode_parser(__doc__, rounds=3)
    ap.add_argument("--mode", default="default", help="torch.compile mode (default, max-autotune-no-cudagraphs)")
    args = ap.parse_args(argv)
    lm = load_model(args.model, dtype=args.dtype)
    model = plain_copy(lm)  # the compiled one: uninstrumented (the workbench's wrappers break dynamo's graphs)
    prompt = bench_prompt(lm, args.prompt_tokens)
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids
    n = args.new_tokens

    def compiled_generate():
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, cache_implementation="static")
        return out[0, ids.shape[1]:].tolist(), time.perf_counter() - t0

    def prefill_s():
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False, cache_implementation="static")
        return time.perf_counter() - t0

    plain = model.forward
    model.forward = torch.compile(plain, mode=args.mode, dynamic=False)
    t0 = time.perf_counter()
    compiled_generate()  # compiles (prefill shape and decode shape)
    compiled_generate()
    print(f"compile + first runs: {time.perf_counter() - t0:.0f} s", flush=True)
    ms = {"stock": [], "engine": [], "compiled": []}
    toks = {}
    for _ in range(args.rounds):
        r = generate(lm, prompt, max_new_tokens=n, min_new_tokens=n, stock=True)
        ms["stock"].append(r.timings["decode_ms_per_token"])
        toks["stock"] = r.token_ids[0]
        r = generate(lm, prompt, max_new_tokens=n, min_new_tokens=n)
        ms["engine"].append(r.timings["decode_ms_per_token"])
        toks["engine"] = r.token_ids[0]
        got, total = compiled_generate()
        ms["compiled"].append(1000 * (total - prefill_s()) / (n - 1))
        toks["compiled"] = got
    for k, v in ms.items():
        same = toks[k] == toks["stock"]
        print(f"{k:9s} {statistics.median(v):7.2f} ms/token (rounds {', '.join(f'{x:.1f}' for x in v)}); "
              f"tokens {'identical to' if same else 'DIFFER from'} stock", flush=True)


if __name__ == "__main__":
    main()
