"""The paper's studies as functions: inputs → captures → numbers (JSON-able dicts).

- :func:`study1_inputs` — the first 16 tokens of the XSum 1-shot prompt and 16 seeded random
  single-token words;
- :func:`run_inertia` — Study 1 on any two texts: isolated and sequence captures, per-layer
  inertia metrics under an :class:`~analysis.activation.ActivationRule`, self-overlap;
- :func:`inertia_for_prompt` — the same from one prompt (the app and ``tda inertia``);
- :func:`run_scale` — Appendix C: many sequences of real text vs random words, sequence vs
  isolated, per-sample metrics averaged, pooled concentration, samples × neurons firing rates;
- :func:`similarity_study` (from :mod:`analysis.similarity`) — Study 2.

Token choice. Captures take text, so the studied tokens are fixed by texts that tokenize back to
exactly those tokens: :func:`prefix_text` decodes the first ``n`` tokens of a prompt and checks
the round trip; :func:`random_word_text` joins seeded words that are one token each (words from
``data/words.txt`` first, alphabetic vocabulary pieces when too few qualify). BOS is excluded
from every capture (``tda.activations.capture`` default), in both modes.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from analysis.activation import ActivationRule
from analysis.inertia import DEFAULT_K, concentration_of_counts, inertia_table, self_jaccard
from tda.common.errors import BadInput

STUDY1_TOKENS = 16
SCALE_TOKENS = 32
DEFAULT_SEED = 0
SOURCES = ("real", "random")
MODES = ("isolated", "sequence")


# ----- inputs ------------------------------------------------------------------------------------
def _ids(lm, text: str) -> list[int]:
    return list(lm.tokenizer(text, add_special_tokens=False).input_ids)


def prefix_text(lm, text: str, n_tokens: int) -> tuple[str, int]:
    """A text that tokenizes to the first ``m ≤ n_tokens`` tokens of ``text`` (largest such m)."""
    if n_tokens < 1:
        raise BadInput("the number of tokens must be at least 1")
    if not isinstance(text, str) or not text.strip():
        raise BadInput("the prompt is empty")
    ids = _ids(lm, text)
    if not ids:
        raise BadInput("the prompt is empty")
    for m in range(min(n_tokens, len(ids)), 0, -1):
        t = lm.tokenizer.decode(ids[:m])
        if _ids(lm, t) == ids[:m]:
            return t, m
    raise BadInput("no prefix of the prompt tokenizes back to itself")


def single_token_words(lm, words: Sequence[str] | None = None) -> list[str]:
    """Words (``data/words.txt`` by default) that are one token with a leading space."""
    from tda.common.data import load_words

    words = load_words() if words is None else list(words)
    return [w for w in words if len(_ids(lm, " " + w)) == 1]


def _vocab_words(lm, limit: int = 5000) -> list[str]:
    """Alphabetic vocabulary pieces (≥ 3 letters) that are one token with a leading space."""
    out = []
    for tid in range(min(len(lm.tokenizer), 300_000)):
        s = lm.tokenizer.decode([tid])
        if re.fullmatch(r" ?[A-Za-z]{3,}", s) and len(_ids(lm, " " + s.strip())) == 1:
            out.append(s.strip())
            if len(out) >= limit:
                break
    return sorted(set(out))


def random_word_text(lm, n_tokens: int, seed: int = DEFAULT_SEED, *, pool: Sequence[str] | None = None) -> tuple[str, str]:
    """``(text, source)``: ``n_tokens`` seeded random words, each exactly one token.

    Words are drawn without replacement while the pool allows. ``source`` says where the
    pool came from (``words.txt`` or ``vocabulary``).
    """
    if pool is None:
        pool, source = _word_pool(lm)
    else:
        source = "given"
    if not pool:
        raise BadInput("no single-token words for the random-token control")
    rng = random.Random(int(seed))
    chosen = rng.sample(list(pool), n_tokens) if len(pool) >= n_tokens else [rng.choice(pool) for _ in range(n_tokens)]
    text = "".join(" " + w for w in chosen)
    if len(_ids(lm, text)) != n_tokens:
        raise BadInput("the random words did not tokenize to one token each")
    return text, source


_POOLS: dict[tuple, tuple[list[str], str]] = {}


def _word_pool(lm) -> tuple[list[str], str]:
    key = (lm.tokenizer_dir or lm.model_id, len(lm.tokenizer))
    if key not in _POOLS:
        words = single_token_words(lm)
        _POOLS[key] = (words, "words.txt") if len(words) >= 64 else (_vocab_words(lm), "vocabulary")
    return _POOLS[key]


def study1_inputs(lm, n_tokens: int = STUDY1_TOKENS, seed: int = DEFAULT_SEED, prompt: str | None = None) -> dict:
    """``{"real": text, "random": text, ...}``: the prompt's first tokens and as many random words."""
    from tda.common.data import xsum_first_prompt

    real, m = prefix_text(lm, prompt if prompt is not None else xsum_first_prompt(), n_tokens)
    rand, source = random_word_text(lm, m, seed)
    return {"real": real, "random": rand, "n_tokens": m, "seed": seed, "random_source": source}


# ----- Study 1 -----------------------------------------------------------------------------------
@dataclass
class InertiaRun:
    """Study 1 on one model: JSON-able ``result`` plus the captures behind it (for figures)."""

    result: dict
    captures: dict = field(default_factory=dict)  # {(source, mode): Capture}


def source_metrics(rule: ActivationRule, iso, seq, k: int) -> dict:
    """Per-layer metrics of one source's isolated and sequence captures under ``rule``."""
    if iso.token_ids != seq.token_ids:
        raise ValueError("isolated and sequence captures must be of the same tokens")
    a_iso, a_seq = rule.active_capture(iso), rule.active_capture(seq)
    return {
        "isolated": inertia_table(a_iso, iso.layers, k),
        "sequence": inertia_table(a_seq, seq.layers, k),
        "self_jaccard": self_jaccard(a_seq, a_iso).mean(dim=-1).tolist(),
    }


def capture_sources(lm, texts: dict[str, str], layers=None) -> dict:
    """``{(source, mode): Capture}`` for every source text in both modes."""
    from tda.activations.capture import capture

    return {(src, mode): capture(lm, text, layers=layers, mode=mode) for src, text in texts.items() for mode in MODES}


def inertia_from_captures(captures: dict, rule: ActivationRule, k: int = DEFAULT_K, *, model_id: str,
                          inputs: dict | None = None) -> dict:
    """Study 1's numbers from captures ``{(source, mode): Capture}`` (no model needed)."""
    order = {s: i for i, s in enumerate(SOURCES)}
    sources = sorted({s for s, _ in captures}, key=lambda s: (order.get(s, len(order)), s))
    out = {}
    for src in sources:
        iso, seq = captures[(src, "isolated")], captures[(src, "sequence")]
        out[src] = {"text": seq.text, "tokens": seq.tokens, **source_metrics(rule, iso, seq, k)}
    first = captures[(sources[0], "sequence")]
    return {"model_id": model_id, "rule": rule.describe(), "k": k, "layers": first.layers,
            "inputs": inputs or {}, "sources": out}


def run_inertia(lm, rule: ActivationRule, texts: dict[str, str], *, k: int = DEFAULT_K, layers=None,
                inputs: dict | None = None) -> InertiaRun:
    """Study 1 for ``texts`` (``{"real": ..., "random": ...}``) on ``lm`` under ``rule``."""
    caps = capture_sources(lm, texts, layers)
    return InertiaRun(inertia_from_captures(caps, rule, k, model_id=lm.model_id, inputs=inputs), caps)


def inertia_for_prompt(lm, rule: ActivationRule, prompt: str | None = None, *, n_tokens: int = STUDY1_TOKENS,
                       seed: int = DEFAULT_SEED, k: int = DEFAULT_K, layers=None) -> InertiaRun:
    """Study 1 on the first ``n_tokens`` of ``prompt`` (default: the XSum prompt) and as many random words."""
    inputs = study1_inputs(lm, n_tokens, seed, prompt)
    return run_inertia(lm, rule, {"real": inputs["real"], "random": inputs["random"]}, k=k, layers=layers,
                       inputs=inputs)


# ----- Appendix C --------------------------------------------------------------------------------
SCALE_KEYS = ("density", "jaccard", "jaccard_prev", "jaccard_chance", "n50", "n90", "n_active_neurons")


def scale_inputs(lm, texts: Sequence[str], n_tokens: int = SCALE_TOKENS, seed: int = DEFAULT_SEED) -> dict:
    """``{"real": [...], "random": [...]}``: each text cut to ≤ ``n_tokens`` tokens; as many random-word sequences."""
    if len(texts) < 2:
        raise BadInput("the scale study needs at least 2 texts")
    real = [prefix_text(lm, t, n_tokens)[0] for t in texts]
    rand = [random_word_text(lm, n_tokens, seed + 1 + i)[0] for i in range(len(texts))]
    return {"real": real, "random": rand}


def run_scale(lm, rules: Sequence[ActivationRule], texts: Sequence[str], *, n_tokens: int = SCALE_TOKENS,
              k: int = DEFAULT_K, seed: int = DEFAULT_SEED, layers=None, keep_rates: Sequence[int] | None = None,
              progress=None) -> dict:
    """Appendix C: metrics over many sequences, sequence vs isolated, real text vs random words.

    For every rule, source and mode: per-layer means over samples of the single-sequence
    metrics, plus ``n50_pooled``/``n90_pooled`` over all samples' events and ``self_jaccard``.
    ``rates[rule.short][source][mode]`` is ``[layer, sample, neuron]`` firing rate (fraction of the
    sample's tokens active) for the layers in ``keep_rates`` (default all) — the samples × neurons
    maps. Returns ``{"result": JSON-able dict, "rates": {...}}``.
    """
    from tda.activations.capture import capture, resolve_layers
    from tda.common import distributed

    layers = resolve_layers(lm, layers)
    keep = layers if keep_rates is None else [L for L in layers if L in set(keep_rates)]
    keep_idx = [layers.index(L) for L in keep]
    inputs = scale_inputs(lm, texts, n_tokens, seed)
    n = len(texts)
    items = [(src, i) for src in SOURCES for i in range(n)]  # shared out over processes when launched so
    mine = distributed.shard_range(len(items))

    def zero_counts() -> dict:
        return {r.short: {s: {m: torch.zeros(len(layers), lm.ffn.d_ff, dtype=torch.long) for m in MODES}
                          for s in SOURCES} for r in rules}

    def work() -> tuple[list[dict], dict]:
        """Per-sample metrics of this rank's samples, and its firing counts (integers: sums are exact)."""
        counts, recs = zero_counts(), []
        todo = [items[j] for j in mine]
        for src in SOURCES:
            mine_src = [(s_, i) for s_, i in todo if s_ == src]
            if progress is not None and distributed.is_main() and mine_src:
                mine_src = progress(mine_src, desc=f"{lm.model_id} {src}")
            for _, i in mine_src:
                caps = {m: capture(lm, inputs[src][i], layers=layers, mode=m) for m in MODES}
                rec = {"src": src, "i": i, "tokens": caps["sequence"].n_tokens, "rules": {}}
                for r in rules:
                    act = {m: r.active_capture(caps[m]) for m in MODES}
                    rr = rec["rules"][r.short] = {"rows": {}, "rates": {},
                                                  "self": self_jaccard(act["sequence"], act["isolated"]).mean(dim=-1).tolist()}
                    for m in MODES:
                        counts[r.short][src][m] += act[m].sum(dim=1)
                        rr["rows"][m] = inertia_table(act[m], layers, k)
                        if keep_idx:
                            rr["rates"][m] = act[m][keep_idx].float().mean(dim=1)
                recs.append(rec)
        return recs, counts

    parts = distributed.collect(work)
    acc = {r.short: {s: {m: {"rows": [[] for _ in layers], "counts": torch.zeros(len(layers), lm.ffn.d_ff,
                                                                                  dtype=torch.long)}
                         for m in MODES} | {"self": [[] for _ in layers]} for s in SOURCES} for r in rules}
    rates = {r.short: {s: {m: torch.zeros(len(keep), n, lm.ffn.d_ff) for m in MODES} for s in SOURCES} for r in rules}
    tokens = {s: [] for s in SOURCES}
    for recs, counts in parts:  # ranks in order, samples in order: as one process accumulates
        for r in rules:
            for src in SOURCES:
                for m in MODES:
                    acc[r.short][src][m]["counts"] += counts[r.short][src][m]
        for rec in recs:
            src, i = rec["src"], rec["i"]
            tokens[src].append(rec["tokens"])
            for r in rules:
                rr, a = rec["rules"][r.short], acc[r.short][src]
                for m in MODES:
                    for li, row in enumerate(rr["rows"][m]):
                        a[m]["rows"][li].append(row)
                    if keep_idx:
                        rates[r.short][src][m][:, i] = rr["rates"][m]
                for li, v in enumerate(rr["self"]):
                    a["self"][li].append(v)
    by_rule = {}
    for r in rules:
        srcs = {}
        for src in SOURCES:
            a = acc[r.short][src]
            entry = {}
            for m in MODES:
                rows = []
                for li, L in enumerate(layers):
                    per = a[m]["rows"][li]
                    row = {"layer": L, **{key: float(np.nanmean([p[key] for p in per])) for key in SCALE_KEYS}}
                    conc = concentration_of_counts(a[m]["counts"][li])
                    row["n50_pooled"], row["n90_pooled"] = conc[0.5], conc[0.9]
                    rows.append(row)
                entry[m] = rows
            entry["self_jaccard"] = [float(np.mean(x)) for x in a["self"]]
            entry["n_samples"] = n
            entry["mean_tokens"] = float(np.mean(tokens[src]))
            srcs[src] = entry
        by_rule[r.short] = {"model_id": lm.model_id, "rule": r.describe(), "k": k, "layers": layers,
                            "sources": srcs}
    result = {"model_id": lm.model_id, "n_samples": n, "n_tokens": n_tokens, "seed": seed,
              "rate_layers": keep, "by_rule": by_rule}
    return {"result": result, "rates": rates}
