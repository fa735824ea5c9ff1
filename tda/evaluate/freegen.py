"""Free-running generation quality: what a user sees, not only teacher-forced next tokens.

For each prompt (the first half of a held-out text, in words) every variant greedily generates
``gen_tokens`` tokens (``min_new_tokens`` = ``max_new_tokens``: the same length for all). Per
prompt and variant, kept as sums so that the bootstrap resamples prompts
(:data:`tda.evaluate.paired.METRICS`):

- ``prefix``/``tokens``: tokens before the first divergence from dense's continuation;
- ``rougeL``: ROUGE-L F-measure of the decoded continuation against dense's (rouge-score, 0–1);
- ``rep``/``ngrams``: repeated 4-grams (a 4-gram already seen earlier in the continuation) —
  degeneration into loops;
- ``dnll``/``dtok``: negative log-likelihood of the continuation under the dense model given the
  prompt (its perplexity: is the text plausible to dense, or gibberish?).
"""

from __future__ import annotations

import torch

from tda.common import distributed
from tda.engine.generate import SparseSession, generate
from tda.evaluate.scoring import continuation_logits

REP_N = 4


def prompt_of(text: str) -> str:
    """The first half of ``text`` in words (at least one word)."""
    words = text.split()
    return " ".join(words[: max(1, len(words) // 2)])


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def repeated_ngrams(ids: list[int], n: int = REP_N) -> tuple[int, int]:
    """``(repeats, ngrams)``: how many of the ``len(ids) - n + 1`` n-grams occurred earlier in ``ids``."""
    seen, rep = set(), 0
    total = max(len(ids) - n + 1, 0)
    for i in range(total):
        g = tuple(ids[i:i + n])
        rep += g in seen
        seen.add(g)
    return rep, total


def rouge_l(pred: str, ref: str) -> float:
    from rouge_score import rouge_scorer

    return float(rouge_scorer.RougeScorer(["rougeL"]).score(ref, pred)["rougeL"].fmeasure)


def dense_nll(lm, prompt_ids: list[int], cont: list[int]) -> float:
    """Σ −log p_dense(cont | prompt) (teacher-forced through the dense model)."""
    ids = list(prompt_ids) + list(cont)
    logits = continuation_logits(lm, ids, len(prompt_ids), SparseSession(lm, "dense"))
    lp = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(cont, device=logits.device)[:, None])[:, 0]
    return float(-lp.sum())


def generation_eval(lm, texts: list[str], vs, *, gen_tokens: int = 64, cett: float = 0.2, fast: bool | None = True,
                    thresholds: dict | None = None, calibration_texts=None, progress=None) -> dict[str, dict]:
    """``{label: {"prefix", "tokens", "rougeL", "rep", "ngrams", "dnll", "dtok", "texts"}}`` — lists
    in prompt order, dense first (every variant is compared with dense's continuation)."""
    thresholds = thresholds or {}

    def one_prompt(i, text) -> dict[str, dict]:
        p = prompt_of(text)
        outs = {}
        for v in vs:
            res = generate(lm, p, v.method, density=v.density, cett=cett, max_new_tokens=gen_tokens,
                           min_new_tokens=gen_tokens, fast=fast, thresholds=thresholds.get(v.method),
                           calibration_texts=calibration_texts)
            outs[v.label] = (res.token_ids[0], res.texts[0], res.prompt_token_ids[0])
        d_ids, d_text, _ = outs["dense"]
        row = {}
        for label, (ids, txt, pids) in outs.items():
            rep, ng = repeated_ngrams(ids)
            row[label] = {"prefix": common_prefix(ids, d_ids), "tokens": len(d_ids), "rougeL": rouge_l(txt, d_text),
                          "rep": rep, "ngrams": ng, "dnll": dense_nll(lm, pids, ids), "dtok": len(ids), "text": txt}
        return row

    per_prompt = distributed.map_sharded(one_prompt, texts)
    res = {}
    for v in vs:
        rows = [r[v.label] for r in per_prompt]
        res[v.label] = {k: [r[k] for r in rows] for k in ("prefix", "tokens", "rougeL", "rep", "ngrams", "dnll", "dtok")}
        res[v.label]["texts"] = [r["text"] for r in rows]
        if progress:
            n = max(sum(res[v.label]["ngrams"]), 1)
            progress(f"generation {v.label}: ROUGE-L vs dense {sum(res[v.label]['rougeL']) / max(len(rows), 1):.3f}, "
                     f"repeated 4-grams {sum(res[v.label]['rep']) / n:.3f}")
    return res
