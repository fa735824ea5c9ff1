"""A corpus job through the public API, run by ``test_distributed.py`` in one process and under
``torchrun --nproc_per_node 2``: Appendix C (``run_scale``), quality (perplexity, agreement,
summaries) and a capture folder. ``python tests/dist_job.py OUT_DIR`` writes ``result.pt`` (the
main process only) and the capture folder ``OUT_DIR/caps``.
"""

from __future__ import annotations

import sys
from pathlib import Path


def short_prompt(article: str) -> str:
    """A summarisation prompt that fits the tiny models' 512-token context."""
    return f"Article: {article}\nSummary:"


def compute(out_dir: Path) -> dict:
    """Everything on ``tiny-llama`` (``tda.common.data.xsum_prompt`` patched to :func:`short_prompt`)."""
    import tda.common.data
    from analysis.activation import cett_rule, topp_rule
    from analysis.studies import run_scale
    from tda.activations.capture import capture_to_dir
    from tda.common.data import load_texts
    from tda.evaluate.quality import perplexity_eval, summarization_eval, variants
    from tda.models.load import load_model

    lm = load_model("tiny-llama")
    texts = load_texts()[:7]  # odd counts: shards of unequal size
    calib = texts[:5]
    rules = [cett_rule(lm, 0.3, texts=calib), topp_rule(0.2)]
    scale = run_scale(lm, rules, texts[:5], n_tokens=8, keep_rates=[1])
    vs = variants(["dense", "griffin", "tt", "tda"], [0.5])
    ppl = perplexity_eval(lm, load_texts(tda.common.data.HELDOUT)[:3], vs, calibration_texts=calib)
    recs = [{"article": t[:200], "summary": t[:40]} for t in texts[:3]]
    summ = summarization_eval(lm, recs, vs, max_new_tokens=4, calibration_texts=calib)
    capture_to_dir(lm, texts, out_dir / "caps", layers=[0, 2], batch_size=2)
    return {"scale": scale, "ppl": ppl, "summ": summ}


if __name__ == "__main__":
    import torch

    import tda.common.data
    from tda.common import distributed

    tda.common.data.xsum_prompt = short_prompt
    out = Path(sys.argv[1])
    res = compute(out)
    if distributed.is_main():
        torch.save(res, out / "result.pt")
