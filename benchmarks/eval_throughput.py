"""Throughput of the quality evaluation: batched scoring (one shared prefill per batch, padded rows)
against the per-text, per-variant loop it replaced, on a slice of both text sets and their cloze
sets; then the wall time of a full-set frontier's quality part extrapolated from the batched rate.

    flock /tmp/heavy.lock nice -n 5 python benchmarks/eval_throughput.py --texts 8 --cloze 16

Prints one JSON object (seconds per slice, tokens/s, the ratio, the extrapolation). Quality only:
the bench part of `tda frontier` (timed decode rounds) is not included.
"""

from __future__ import annotations

import argparse
import json
import time


def old_perplexity(lm, texts, vs, thr):
    """The loop before batching: per text, per variant, its own prefill (tda.evaluate.scoring.continuation_logits)."""
    from tda.engine.generate import SparseSession
    from tda.evaluate.scoring import continuation_logits, nll_and_top, split_point

    out = []
    for t in texts:
        ids = lm.tokenizer(t, add_special_tokens=True).input_ids[: lm.n_ctx]
        k = split_point(len(ids))
        row = {}
        for v in vs:
            s = SparseSession(lm, v.method, density=v.density, thresholds=thr.get(v.method))
            row[v.label] = nll_and_top(continuation_logits(lm, ids, k, s), ids[k:])[0]
        out.append(row)
    return out


def old_cloze(lm, items, vs, thr):
    from tda.engine.generate import SparseSession
    from tda.evaluate.cloze import item_ids
    from tda.evaluate.scoring import continuation_logits, split_point

    out = []
    for it in items:
        ids, nt = item_ids(lm, it)
        k = split_point(len(ids) - nt, 0.5)
        out.append({v.label: int(continuation_logits(lm, ids, k, SparseSession(
            lm, v.method, density=v.density, thresholds=thr.get(v.method)))[-nt:].argmax(-1).tolist() == ids[-nt:])
            for v in vs})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--dtype", default="fp32", help="the weight format (fp32, bf16, gguf)")
    ap.add_argument("--methods", default="dense,tt,griffin,teal,cats,scap")
    ap.add_argument("--density", type=float, default=0.5)
    ap.add_argument("--texts", type=int, default=8, help="passages of each text set")
    ap.add_argument("--cloze", type=int, default=16, help="items of each cloze set")
    ap.add_argument("--sets", default="pydoc-text,bierce-text")
    ap.add_argument("--no-old", action="store_true", help="skip the per-text reference loop")
    a = ap.parse_args()

    from tda.common.evalsets import cloze_set_for, get_set
    from tda.evaluate.cloze import cloze_eval
    from tda.evaluate.quality import _thresholds, perplexity_eval, variants
    from tda.models.load import load_model

    lm = load_model(a.model, dtype=a.dtype)
    vs = variants(a.methods.split(","), [a.density])
    thr = _thresholds(lm, vs, 0.2, None)
    res: dict = {"model": a.model, "variants": [v.label for v in vs], "sets": {}}
    full = {"texts": 0, "text_tokens": 0, "cloze": 0, "cloze_tokens": 0}
    for name in a.sets.split(","):
        texts = get_set(name, "text").load()
        cloze = get_set(cloze_set_for(name), "cloze").load()
        tok = lm.tokenizer
        full["texts"] += len(texts)
        full["text_tokens"] += sum(len(x) for x in tok(texts).input_ids)
        full["cloze"] += len(cloze)
        full["cloze_tokens"] += sum(len(x) for x in tok([c["context"] for c in cloze]).input_ids)
        sl, cl = texts[: a.texts], cloze[: a.cloze]
        n_tok = sum(len(x) for x in tok(sl).input_ids)
        c_tok = sum(len(x) for x in tok([c["context"] for c in cl]).input_ids)
        r = {"texts": len(sl), "text_tokens": n_tok, "cloze": len(cl), "cloze_tokens": c_tok}
        t = time.perf_counter()
        new = perplexity_eval(lm, sl, vs, boot_iters=10)
        r["ppl_batched_s"] = time.perf_counter() - t
        t = time.perf_counter()
        newc = cloze_eval(lm, cl, vs, thresholds=thr)
        r["cloze_batched_s"] = time.perf_counter() - t
        if not a.no_old:
            t = time.perf_counter()
            old = old_perplexity(lm, sl, vs, thr)
            r["ppl_old_s"] = time.perf_counter() - t
            t = time.perf_counter()
            oldc = old_cloze(lm, cl, vs, thr)
            r["cloze_old_s"] = time.perf_counter() - t
            r["max_nll_rel_diff"] = max(abs(new[v.label]["per_text"]["nll"][i] - old[i][v.label]) / max(old[i][v.label], 1e-9)
                                        for v in vs for i in range(len(sl)))
            r["cloze_same"] = all(newc[v.label][i] == oldc[i][v.label] for v in vs for i in range(len(cl)))
            r["ppl_speedup"] = r["ppl_old_s"] / r["ppl_batched_s"]
            r["cloze_speedup"] = r["cloze_old_s"] / r["cloze_batched_s"]
        res["sets"][name] = r
        print(json.dumps({name: r}), flush=True)
    # extrapolation: seconds per (variant × token) from the batched slices
    sl_tok = sum(r["text_tokens"] for r in res["sets"].values())
    sl_ctok = sum(r["cloze_tokens"] for r in res["sets"].values())
    ppl_rate = sum(r["ppl_batched_s"] for r in res["sets"].values()) / (sl_tok * len(vs))
    cloze_rate = sum(r["cloze_batched_s"] for r in res["sets"].values()) / (sl_ctok * len(vs))
    res["s_per_variant_token"] = {"ppl": ppl_rate, "cloze": cloze_rate}
    res["full_sets"] = full
    res["full_quality_s_per_variant"] = ppl_rate * full["text_tokens"] + cloze_rate * full["cloze_tokens"]
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
