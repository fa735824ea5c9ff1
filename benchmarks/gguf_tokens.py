"""Greedy tokens of the quantized format (--dtype gguf) against the de-quantised fp32 model.

    python benchmarks/gguf_tokens.py [--model gemma-3-270m] [--prompts 20] [--new-tokens 32]

The two models compute the same function (the gguf format's weights are the file's de-quantised
values exactly; only the summation order of each dot product differs), so their greedy tokens can
split only where the fp32 model's top two logits are within fp32 rounding of each other. For each
prompt (the first ``--prompts`` passages of the shipped ``pydoc-text`` set, cut to 48 tokens) both
decode greedily; at a split, the fp32 model's logits (teacher-forced on the common prefix) give the
gap between the two candidate tokens, relative to the larger logit. Where the gguf model's lm_head
is on integer tiles, each prompt is also decoded with the speculative lm_head
(:func:`tda.engine.speculate.generate_speculative`, up to 4 drafts): its tokens must be the gguf
model's own, and the share of drafts the full head confirmed is recorded. Writes
``benchmarks/results/gguf-tokens-<model>.json`` and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=48)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import torch

    from tda.common.atomic import write_text_atomic
    from tda.common.errors import BadInput
    from tda.common.evalsets import get_set
    from tda.engine.generate import generate
    from tda.engine.speculate import check_speculative, generate_speculative
    from tda.models.load import load_model

    lq = load_model(args.model, dtype="gguf")
    lf = load_model(args.model, dtype="fp32")
    tok = lf.tokenizer
    texts = get_set("pydoc-text").texts()[: args.prompts]
    try:
        check_speculative(lq)
        spec = True
    except BadInput:
        spec = False
    rows = []
    for text in texts:
        ids = tok(text, add_special_tokens=False).input_ids[: args.prompt_tokens]
        prompt = tok.decode(ids)
        a = generate(lq, prompt, max_new_tokens=args.new_tokens).token_ids[0]
        b = generate(lf, prompt, max_new_tokens=args.new_tokens).token_ids[0]
        row = {"prompt": prompt[:80], "identical": a == b, "n": len(b)}
        if spec:
            r = generate_speculative(lq, prompt, max_new_tokens=args.new_tokens, k=4)
            row.update(speculative_identical=r.token_ids[0] == a, speculative=r.params["speculative"])
        i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if i is not None:
            p = tok(prompt, return_tensors="pt").input_ids[0].tolist() + b[:i]
            with torch.inference_mode():
                logits = lf.model(input_ids=torch.tensor([p]), logits_to_keep=1).logits[0, -1].float()
            la, lb = float(logits[a[i]]), float(logits[b[i]])
            row.update(split_at=i, gguf_token=a[i], fp32_token=b[i], fp32_logit_gap=lb - la,
                       relative_gap=(lb - la) / max(abs(lb), 1e-30))
        rows.append(row)
    splits = [r for r in rows if not r["identical"]]
    res = {"model": args.model, "prompts": len(rows), "new_tokens": args.new_tokens, "identical": len(rows) - len(splits),
           "splits": len(splits), "max_relative_gap_at_split": max((abs(r["relative_gap"]) for r in splits), default=None),
           "rows": rows, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if spec:
        drafted = sum(r["speculative"]["drafted"] for r in rows)
        res["speculative"] = {"identical": sum(r["speculative_identical"] for r in rows), "prompts": len(rows),
                              "acceptance": sum(r["speculative"]["accepted"] for r in rows) / max(drafted, 1)}
    out = Path(args.out) if args.out else RESULTS / f"gguf-tokens-{args.model}.json"
    write_text_atomic(out, json.dumps(res, indent=1))
    print(f"{res['identical']} of {res['prompts']} prompts x {args.new_tokens} tokens identical; "
          f"{res['splits']} split(s), largest relative fp32 logit gap at a split: {res['max_relative_gap_at_split']}")
    if spec:
        sp = res["speculative"]
        print(f"speculative lm_head: {sp['identical']} of {sp['prompts']} prompts give the gguf model's own tokens; "
              f"{100 * sp['acceptance']:.1f}% of its drafts confirmed")
    print(f"wrote {out}")
    return res


if __name__ == "__main__":
    main()
