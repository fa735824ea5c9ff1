"""Side-by-side decode-step variants of dense ``generate`` (issue 17, point 1), same process, rounds
interleaved so drift hits every variant alike; median ms per decode step and ratios to ``attention``.

Variants:
- ``stock``      plain Hugging Face ``generate`` (no override);
- ``attention``  the fast path with the fused decode attention only (tda.engine.attention), HF's
                 base-model forward and decoder layers around it (the engine before the lean stack);
- ``stack-modules``  the lean decoder stack (tda.engine.decoder) calling every linear/norm/MLP as a module;
- ``stack``      the lean decoder stack with direct override-table calls and inline gated MLPs — the
                 engine's default;
- ``hf-loop``    the default step inside Hugging Face's ``generate`` loop instead of the lean decode
                 loop (tda.engine.decode_loop);
- ``torch-argmax``  the lean loop with ``torch.argmax`` instead of the C++ argmax;
- ``no-rotary-blocks``  the rotary module called at every step instead of read from a 64-position block;
- ``separate-qk-norms``  q/k norms called on their own instead of inside ``rope_qk`` (Gemma 3, Qwen 3).

The first four are printed against ``attention``; every variant also against ``stack`` (the time of
a step divided by the default's: above 1 = slower without that change).

Each variant's greedy tokens are checked against ``stock`` (fp32: must be identical).

Usage:
    python benchmarks/decode_variants.py --model gemma-3-270m --dtype fp32 --rounds 5
    python benchmarks/decode_variants.py --model tiny-llama --new-tokens 4 --rounds 1   # smoke test
"""

from __future__ import annotations

import contextlib
import statistics
import sys
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's tda

VARIANTS = ("stock", "attention", "stack-modules", "stack", "hf-loop", "torch-argmax", "no-rotary-blocks",
            "separate-qk-norms")


def _variant(name: str):
    import torch

    from tda.engine import decoder

    if name == "attention":
        return mock.patch("tda.engine.session.decode_stack", lambda *a, **k: None)
    if name == "stack-modules":
        return mock.patch("tda.engine.decoder.DIRECT_CALLS", False)
    if name == "hf-loop":
        return mock.patch("tda.engine.decode_loop.applicable", lambda *a, **k: False)
    if name == "torch-argmax":
        return mock.patch("tda.engine.decode_loop.argmax_last", lambda s: torch.argmax(s, dim=-1))
    if name == "no-rotary-blocks":
        return mock.patch.object(decoder.RotaryBlocks, "get", lambda self, *a, **k: None)
    if name == "separate-qk-norms":
        return mock.patch("tda.engine.decoder.qk_norm_args", lambda *a: None)
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    return contextlib.nullcontext()


def main(argv=None) -> None:
    from decode_args import decode_parser  # benchmarks/, beside this script

    from tda.engine.generate import generate
    from tda.evaluate.bench import bench_prompt
    from tda.models.load import load_model

    ap = decode_parser(__doc__, rounds=5)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args(argv)
    names = args.variants.split(",")
    lm = load_model(args.model, dtype=args.dtype)
    prompt = bench_prompt(lm, args.prompt_tokens)
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    ms = {n: [] for n in names}
    tokens = {}
    for r in range(args.rounds + 1):  # round 0 warms up (kernel build, fast-path probe)
        for n in names:
            with _variant(n):
                out = generate(lm, prompt, stock=n == "stock", **kw)
            tokens[n] = out.token_ids
            if r:
                ms[n].append(out.timings["decode_ms_per_token"])
    base = statistics.median(ms["attention"]) if "attention" in ms else None
    print(f"{args.model} {args.dtype}, {args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, "
          f"median of {args.rounds} rounds, threads {out.timings['threads']}")
    for n in names:
        med = statistics.median(ms[n])
        same = tokens[n] == tokens.get("stock", tokens[n])
        ratio = f"  {base / med:.3f}x vs attention" if base and n in VARIANTS[:4] else ""
        if "stack" in ms and n != "stack":  # paired per round: this variant's time / the default's
            rel = statistics.median(a / b for a, b in zip(ms[n], ms["stack"]))
            ratio += f"  {rel:.3f} x stack's time"
        print(f"  {n:18s} {med:7.2f} ms/step{ratio}  tokens {'==' if same else '!='} stock")


if __name__ == "__main__":
    main()
