"""Where a quantized decode step's linear time goes: every linear of the model once, batch 1, in
the layouts of the same GGUF (and the blocks with and without their decode tiles), rounds alternating.

    python benchmarks/quant_layers.py [--model gemma-3-270m] [--rounds 12]

- ``all blocks`` every quantized linear on the file's blocks (the format as `--dtype gguf` loads it;
  a decode step's row on the integer tiles where ``quant_kernels.tile_layout`` gives them);
- ``blocks, fp32 GEMV`` the same model's linears on the blocks' own fp32 GEMVs (``TDA_NO_VNNI_GEMV=1``
  while their functions are made): what the tiles replace;
- ``all repack`` every quantized linear on the int8 group repack;
- ``as loaded``  only when ``tda.models.quant_types.REPACKED`` keeps some block types in the repack.

For each layout and kind of linear (``q_proj:Q5_0``, ``lm_head``, ...): ms per decode step (every
layer's linear of that kind, the C++ kernel called as the engine calls it), MB read and GB/s;
median over the rounds after 2 warm-up rounds. Writes ``benchmarks/results/quant-layers-<model>.json``;
``benchmarks/report.py`` renders it on the quantized-format results page. Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from unittest.mock import patch

RESULTS = Path(__file__).resolve().parent / "results"


def _calls(lm):
    """``[(kind, fn, x, bytes)]``: each quantized linear's fast function with an input of its width."""
    import torch

    from tda.engine import quant_kernels
    from tda.models import quant

    head = lm.model.get_output_embeddings()
    out = []
    for name, m in lm.model.named_modules():
        if isinstance(m, quant.QuantLinear):
            kind = "lm_head" if m is head else f"{name.rsplit('.', 1)[-1]}:{m.qtype}"
            out.append((kind, quant_kernels.linear_fn(m), torch.randn(1, 1, m.in_features),
                        quant_kernels.decode_nbytes(m)))
    return out


def _load(model: str, repacked: tuple[str, ...], unpack_all: bool):
    from tda.models import quant, quant_types
    from tda.models.load import load_model

    saved = quant_types.REPACKED
    quant_types.REPACKED = repacked
    try:
        lm = load_model(model, dtype="gguf")
    finally:
        quant_types.REPACKED = saved
    if unpack_all:  # every module on its int8 repack, the blocks dropped
        for m in quant.quant_modules(lm.model):
            if m.block_weight is not None:
                qw = m.block_weight.unpack()
                del m._buffers["blocks"]
                m._set_repack(qw)
    return lm


def main(argv=None) -> dict:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from tda.models import quant_types

    layouts = {"all blocks": _load(a.model, (), False), "all repack": _load(a.model, (), True)}
    if quant_types.REPACKED:  # the format mixes the two: time it as loaded too
        layouts["as loaded"] = _load(a.model, quant_types.REPACKED, False)
    calls = {k: _calls(lm) for k, lm in layouts.items()}
    with patch.dict(os.environ, {"TDA_NO_VNNI_GEMV": "1"}):  # the same modules, their functions without the tiles
        calls = {"all blocks": calls.pop("all blocks"), "blocks, fp32 GEMV": _calls(layouts["all blocks"]), **calls}
    times = {k: defaultdict(list) for k in calls}
    for r in range(a.rounds + 2):
        for k, cs in calls.items():  # rounds alternate the layouts
            acc = defaultdict(float)
            t0 = time.perf_counter()
            for kind, fn, x, _ in cs:
                t = time.perf_counter()
                fn(x)
                acc[kind] += time.perf_counter() - t
            acc["every linear"] = time.perf_counter() - t0
            if r >= 2:
                for kind, v in acc.items():
                    times[k][kind].append(v)
    rows = {}
    for k, cs in calls.items():
        nbytes = defaultdict(int)
        for kind, _, _, b in cs:
            nbytes[kind] += b
            nbytes["every linear"] += b
        rows[k] = {kind: {"ms": statistics.median(v) * 1e3, "mb": nbytes[kind] / 1e6,
                          "gbps": nbytes[kind] / statistics.median(v) / 1e9} for kind, v in sorted(times[k].items())}
        for kind, d in rows[k].items():
            print(f"{k:10s} {kind:20s} {d['ms']:7.3f} ms {d['mb']:7.1f} MB {d['gbps']:5.1f} GB/s")
    out = {"model": a.model, "threads": a.threads, "rounds": a.rounds, "repacked": list(quant_types.REPACKED),
           "timestamp": time.strftime("%Y-%m-%d %H:%M"),
           "command": "python benchmarks/quant_layers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "layouts": rows}
    path = Path(a.out) if a.out else RESULTS / f"quant-layers-{a.model.replace(':', '-').replace('/', '-')}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
