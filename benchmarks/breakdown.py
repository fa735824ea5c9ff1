"""Where a decode step's time goes: lm_head, block linears, attention, norms, the rest.

For each model and dtype: a clean dense ``generate`` (the engine's fast path) gives the ms per
decode step; a second, instrumented run times the parts of each decode step with forward hooks
(``time.perf_counter`` around the module calls, overrides included):

- ``lm_head``       the output projection;
- ``block linears`` every other linear (attention q/k/v/o and the FFN's);
- ``attention``     the attention modules minus their linears (rotary, cache update, scores, softmax);
- ``norms``         the RMS/LayerNorms;
- ``rest of forward``  the model's forward minus the above (embedding, masks, residual adds, the
                    per-layer Python of the module stack);
- ``generate loop`` the step minus the model's forward (logits processors, stopping, input prep).

The hooks add a few microseconds per call, so the parts are read from the instrumented run and the
total from the clean one ("rest" rows absorb the difference; the hook overhead is printed).

A third view needs no hooks: **in place**, each round also decodes with the layers' linears, then
every linear, replaced by stubs that return zeros (same shapes, no weight read). The drops are what
the lm_head and the block linears cost inside a real step — where they share caches and memory
with each other (a linear timed alone in a loop runs from a warmer cache) — and the last run is
everything else. The stubbed runs' tokens are meaningless; only their time is read.
Run on a quiet machine; both runs alternate for ``--rounds`` rounds, medians are printed.

Usage:
    python benchmarks/breakdown.py                        # gemma-3-270m and random:llama-1b, fp32 and bf16
    python benchmarks/breakdown.py --models gemma-3-270m --dtypes bf16 --new-tokens 32 --rounds 3
    python benchmarks/breakdown.py --models gemma-3-270m --dtypes gguf   # replaces that column only
    python benchmarks/breakdown.py --models tiny-llama --new-tokens 4 --rounds 1 --out /tmp/b.json  # smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's tda

PARTS = ("lm_head", "block linears", "attention", "norms", "rest of forward", "generate loop")


class Timer:
    """Forward hooks that add each decode step's module times into ``self.t[part]``."""

    def __init__(self, lm):
        from tda.models.dispatch import is_rms_norm, linear_modules

        self.lm, self.handles, self.decode = lm, [], False
        self.t = dict.fromkeys(PARTS[:-2], 0.0) | {"forward": 0.0}
        self.calls = 0
        model = lm.model
        head = model.get_output_embeddings()
        attn = [m for n, m in model.named_modules() if n.endswith(("self_attn", ".attn")) and not n.endswith("c_attn")]
        norms = [m for m in model.modules() if is_rms_norm(m) or type(m).__name__ == "LayerNorm"]
        lins = [m for m in linear_modules(model) if m is not head]
        self._time(head, "lm_head")
        for m in lins:
            self._time(m, "block linears")
        for m in norms:
            self._time(m, "norms")
        for m in attn:
            self._time(m, "attention")
        self.attn_linears = {id(m) for a in attn for m in a.modules() if m in set(lins)}
        self.handles.append(model.register_forward_pre_hook(self._step_start, with_kwargs=True))
        self.handles.append(model.register_forward_hook(self._step_end))

    def _step_start(self, mod, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.decode = ids is not None and ids.shape[-1] == 1
        self._t0 = time.perf_counter()

    def _step_end(self, mod, args, out):
        if self.decode:
            self.t["forward"] += time.perf_counter() - self._t0
            self.calls += 1

    def _time(self, mod, part):
        start = {}

        def pre(m, a):
            start[id(m)] = time.perf_counter()

        def post(m, a, o):
            if self.decode:
                dt = time.perf_counter() - start.pop(id(m))
                self.t[part] += dt
                if part == "block linears" and id(m) in self.attn_linears:
                    self.t["attention"] -= dt  # attention counts without its projections

        self.handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]

    def remove(self):
        for h in self.handles:
            h.remove()


def _stubbed(lm, which: str):
    """The fast dense table's functions for ``which`` linears (``layers``: all but the lm_head;
    ``all``) replaced by zero stubs; returns a function that restores them."""
    from tda.engine import fastpath
    from tda.models.dispatch import linear_modules

    table = fastpath.dense_table(lm.model, fast=True)
    head = lm.model.get_output_embeddings()
    saved = dict(table)
    for m in linear_modules(lm.model):
        if m in table and (which == "all" or m is not head):
            d_out = int(getattr(m, "out_features", None) or m.nf)  # GPT-2's Conv1D: nf
            table[m] = lambda x, d=d_out: torch.zeros(*x.shape[:-1], d, dtype=x.dtype, device=x.device)

    def restore():
        table.update(saved)

    return restore


def in_place(lm, prompt: str, kw: dict) -> dict[str, float]:
    """One decode of each: every linear, the layers' linears stubbed, every linear stubbed (ms/step)."""
    from tda.engine.generate import generate

    out = {"all": generate(lm, prompt, **kw).timings["decode_ms_per_token"]}
    for which in ("layers", "all"):
        restore = _stubbed(lm, which)
        try:
            out["no_layer_linears" if which == "layers" else "no_linears"] = generate(
                lm, prompt, **kw).timings["decode_ms_per_token"]
        finally:
            restore()
    return out


def one(spec: str, dtype: str, args) -> dict:
    from tda.engine import fastpath
    from tda.engine.generate import generate
    from tda.evaluate.bench import bench_prompt
    from tda.models.load import load_model

    lm = load_model(spec, dtype=dtype)
    prompt = bench_prompt(lm, args.prompt_tokens)
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    generate(lm, prompt, **kw)  # warm-up (kernel build, fast-path probe)
    clean, parts, hook_cost, place = [], {p: [] for p in PARTS}, [], []
    for _ in range(args.rounds):
        if fastpath.use_fast(lm):  # the stubs replace the fast dense table's functions
            place.append(in_place(lm, prompt, kw))
        r = generate(lm, prompt, **kw)
        step = r.timings["decode_ms_per_token"]
        clean.append(step)
        timer = Timer(lm)
        try:
            r2 = generate(lm, prompt, **kw)
        finally:
            timer.remove()
        n = max(timer.calls, 1)
        ms = {k: 1000 * v / n for k, v in timer.t.items()}
        inner = sum(ms[p] for p in PARTS[:4])
        ms["rest of forward"] = ms["forward"] - inner
        ms["generate loop"] = step - ms["forward"]  # against the clean step: hooks excluded
        for p in PARTS:
            parts[p].append(ms[p])
        hook_cost.append(r2.timings["decode_ms_per_token"] - step)
    med = {p: statistics.median(v) for p, v in parts.items()}
    inplace = None
    if place:
        m = {k: statistics.median(p[k] for p in place) for k in place[0]}
        inplace = {"lm_head": m["no_layer_linears"] - m["no_linears"], "block linears": m["all"] - m["no_layer_linears"],
                   "everything else": m["no_linears"], "step": m["all"], "runs_ms": place}
    return {"model": spec, "dtype": dtype, "step_ms": statistics.median(clean), "parts_ms": med, "in_place_ms": inplace,
            "hook_overhead_ms": statistics.median(hook_cost), "rounds": args.rounds,
            "fast": bool(r.params["fast"]), "new_tokens": args.new_tokens}


def table(res: list[dict]) -> str:
    head = "| part | " + " | ".join(f"{r['model']} {r['dtype']}" for r in res) + " |"
    lines = [head, "|---|" + "---|" * len(res)]
    for p in PARTS:
        cells = [f"{r['parts_ms'][p]:.1f} ms ({100 * r['parts_ms'][p] / r['step_ms']:.0f}%)" for r in res]
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    lines.append("| **decode step** | " + " | ".join(f"**{r['step_ms']:.1f} ms**" for r in res) + " |")
    lines.append("| (hook overhead, not in the step) | " + " | ".join(f"{r['hook_overhead_ms']:.1f} ms" for r in res) + " |")
    if any(r.get("in_place_ms") for r in res):
        for p in ("lm_head", "block linears", "everything else"):
            cells = [f"{r['in_place_ms'][p]:.1f} ms" if r.get("in_place_ms") else "n/a" for r in res]
            lines.append(f"| in place (stubs): {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="gemma-3-270m,random:llama-1b")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "breakdown.json"))
    args = ap.parse_args(argv)
    out = Path(args.out)  # checked before any work: columns of an earlier run that this one does not redo stay
    prev = json.loads(out.read_text()) if out.exists() else []
    if not (isinstance(prev, list) and all(isinstance(r, dict) and {"model", "dtype"} <= r.keys() for r in prev)):
        raise SystemExit(f"{out} holds something other than a breakdown run; give another --out")
    res = []
    for spec in args.models.split(","):
        for dtype in args.dtypes.split(","):
            print(f"{spec} {dtype} ...", file=sys.stderr, flush=True)
            res.append(one(spec, dtype, args))
    new = {(r["model"], r["dtype"]) for r in res}
    res = [r for r in prev if (r["model"], r["dtype"]) not in new] + res
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"dense decode step, batch 1, {args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, "
          f"median of {args.rounds} rounds")
    print(table(res))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
