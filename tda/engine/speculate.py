"""Exact greedy decoding with a speculative lm_head: draft tokens over a small vocabulary, verify
them all with one pass over the full lm_head.

On Gemma 3 270M in the gguf format the lm_head (262,144 rows, Q8_0, 178 MB) is over half a decode
step, and it is read once per token. Greedy decoding only needs the head's argmax. A step of
:func:`generate_speculative` runs the layers as a dense step does but multiplies the last hidden
state by the rows of a *draft vocabulary* ``V'`` only (:func:`draft_vocabulary`: the lowest ids, the
shipped corpus's tokens, the prompt's and the stop tokens; about a tenth of the head), and takes
the argmax over ``V'`` (and over the last 16 tokens it missed, a tile of their own). After ``k`` such steps the ``k`` hidden states go through the full head in
one call that reads its tiles once (``vnni_gemv_rows``, ``csrc/vnni_rows.h``: each row bit for bit
the single-row GEMV of a dense step), and the drafts are checked against the full argmax: a draft
is right exactly when the full argmax lies in ``V'`` (the draft's logits are the full head's own
rows). The first wrong draft is replaced by the full argmax and the cache positions after it are
dropped (``Cache.crop``); everything before it is kept. So the tokens are the dense greedy tokens,
whatever ``V'`` holds; ``V'`` only decides the speed (a missed token costs the steps drafted after it).

Any sparse method of the layers runs under it (``method``, as :func:`~tda.engine.generate.generate`
takes it): a draft step runs the method's decode step, so the tokens are that method's greedy
tokens. The lm_head option (``+headD``) is a different head and is refused. Scope: batch 1,
greedy, a Q8_0 lm_head held as integer tiles (``--dtype gguf`` on AVX512-VNNI CPUs, where the head
is on its tiles: :func:`tda.engine.quant_kernels.head_tiles`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from tda.common.errors import BadInput
from tda.engine.variant_names import split_speculate  # noqa: F401  (re-exported: one definition)

TILE_ROWS = 16
DRAFT_FIRST_IDS = 16384  # the lowest ids are in the draft vocabulary (frequent pieces)


def draft_vocabulary(n_vocab: int, *, texts_ids: list[list[int]] = (), extra: list[int] = (),
                     first: int = DRAFT_FIRST_IDS) -> torch.Tensor:
    """``V'``: the sorted unique ids below ``first``, in ``texts_ids`` (tokenised texts) and in
    ``extra`` (the prompt, the stop tokens), padded to a multiple of 16 rows with the next unused
    ids (a tile of the draft head holds 16 rows). ``ids[n]`` int64."""
    if n_vocab < TILE_ROWS:
        raise BadInput(f"a vocabulary of {n_vocab} is too small for a draft head")
    keep = torch.zeros(n_vocab, dtype=torch.bool)
    keep[:max(0, min(first, n_vocab))] = True
    for ids in [*texts_ids, list(extra)]:
        t = torch.tensor([i for i in ids if 0 <= i < n_vocab], dtype=torch.long)
        keep[t] = True
    short = -int(keep.sum()) % TILE_ROWS
    if short:
        keep[torch.nonzero(~keep).flatten()[:short]] = True
    return torch.nonzero(keep).flatten()


def adaptive_depth(depth: int, accepted: int, drafted: int, k: int) -> int:
    """The next cycle's number of drafts: one more after a cycle whose drafts were all confirmed (up
    to ``k``), else one more than were confirmed. Text the draft vocabulary covers badly thus runs at
    one draft a cycle -- a dense step plus the draft head's rows -- instead of paying for ``k`` steps
    per token; covered text climbs back to ``k``."""
    return min(k, depth + 1) if accepted >= drafted else max(1, min(k, accepted + 1))


@dataclass
class SpeculativeStats:
    """``cycles`` verifications; ``drafted`` draft steps; ``accepted`` drafts that the full head
    confirmed; ``vocab`` rows of the draft head."""

    cycles: int = 0
    drafted: int = 0
    accepted: int = 0
    vocab: int = 0

    def to_dict(self) -> dict:
        return {"cycles": self.cycles, "drafted": self.drafted, "accepted": self.accepted, "vocab": self.vocab,
                "acceptance": self.accepted / self.drafted if self.drafted else float("nan")}


def check_speculative(lm) -> None:
    """BadInput (one line) unless ``lm`` can decode with a speculative lm_head."""
    _head_tiles(lm)


def _head_tiles(lm):
    """The lm_head module and its :class:`~tda.models.quant.TileWeight`; BadInput when the head is
    not a Q8_0 weight on integer tiles with the VNNI kernels built."""
    from tda.engine import quant_kernels
    from tda.models.quant import QuantLinear

    head = lm.model.get_output_embeddings()
    tw = head.tile_weight if isinstance(head, QuantLinear) else None
    ops = quant_kernels.quant_ops()
    if tw is None or ops is None or not hasattr(ops, "vnni_gemv_rows") or not ops.vnni_gemv_ready():
        raise BadInput("speculative decoding needs the gguf format with its Q8_0 lm_head on integer tiles and "
                       "AVX512-VNNI (--dtype gguf on such a CPU; TDA_HEAD_TILES=1 elsewhere)")
    if head.bias is not None:
        raise BadInput("speculative decoding takes an lm_head without a bias")
    return head, tw, ops


def generate_speculative(lm, prompt: str, method="dense", *, max_new_tokens: int = 32, k: int = 4,
                         vocab: torch.Tensor | None = None, stop_token_ids: list[int] | None = None,
                         threads: str | int | None = None, **sparsity):
    """Greedy tokens of ``prompt`` under ``method`` (a name with its fields as keywords, or a
    :class:`~tda.engine.config.SparsityConfig`; see the module doc), ``k`` drafts per full-head pass
    (1 to 4, at most: :func:`adaptive_depth`). Returns a :class:`~tda.engine.generate.GenerationResult` whose ``params`` carry the
    :class:`SpeculativeStats` and ``timings`` those of :func:`~tda.engine.generate.generate`."""
    from tda.common.data import load_texts
    from tda.engine import kvcache
    from tda.engine import threads as thread_policy
    from tda.engine.config import as_config, split_head
    from tda.engine.generate import GenerationResult, chunked_prefill, encode_batch, prefill_chunk
    from tda.engine.generate import stop_ids as model_stop_ids
    from tda.engine.kernels import argmax_last
    from tda.engine.session import SparseSession
    from tda.models.dispatch import linear_overrides
    from tda.models.load import cache_kwarg

    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 4:
        raise BadInput(f"k (drafts per verification) must be an integer in 1..4, got {k}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise BadInput(f"max-new-tokens must be an integer >= 1, got {max_new_tokens}")
    if not isinstance(prompt, str) or not prompt:
        raise BadInput("speculative decoding takes one non-empty prompt")
    cfg = as_config(method, **sparsity)
    if split_head(cfg.method)[1] is not None or getattr(cfg, "lm_head_density", None) is not None:
        raise BadInput("speculative decoding brings its own lm_head: leave out the lm_head option (+headD)")
    head, tw, ops = _head_tiles(lm)
    input_ids, attn, prompt_ids = encode_batch(lm, [prompt], max_new_tokens)
    stops = model_stop_ids(lm, stop_token_ids)
    if vocab is None:
        texts = [lm.tokenizer(t)["input_ids"] for t in load_texts()]
        vocab = draft_vocabulary(tw.shape[0], texts_ids=texts, extra=[*prompt_ids[0], *stops])
    vocab = vocab.to(torch.long)
    draft_w = tw.take(vocab)
    none_blocks = tw.no_blocks()
    stats = SpeculativeStats(vocab=int(vocab.numel()))
    hidden: list[torch.Tensor] = []
    # the last tokens the draft missed (up to 16, one tile of their own): a word that recurs is drafted
    misses: list[int] = []
    draft = {"vocab": vocab, "miss_w": None}

    def learn(token: int) -> None:
        misses.append(token)
        del misses[:-TILE_ROWS]
        pad = torch.tensor(misses + [misses[-1]] * (TILE_ROWS - len(misses)))
        draft["miss_w"], draft["vocab"] = tw.take(pad), torch.cat([vocab, pad])

    def gemv(w, row):
        return ops.vnni_gemv(row, w.packed, w.st, None, none_blocks, "Q8_0", None)

    def draft_head(x: torch.Tensor) -> torch.Tensor:  # the layers' last hidden state -> logits over V'
        row = x.reshape(-1, x.shape[-1])[-1].contiguous()
        hidden.append(row.clone())
        n = int(draft["vocab"].numel())
        if not bool(torch.isfinite(row).all()):
            y = torch.full((n,), float("nan"))
        elif draft["miss_w"] is None:
            y = gemv(draft_w, row)
        else:
            y = torch.cat([gemv(draft_w, row), gemv(draft["miss_w"], row)])
        return y.view(*x.shape[:-1], n)

    session = SparseSession(lm, cfg)
    model, T = lm.model, int(input_ids.shape[1])
    cache_kw = cache_kwarg(model)
    sliding = int(getattr(model.config, "sliding_window", 0) or 0)
    out_ids: list[int] = []
    with thread_policy.threads(thread_policy.check_policy(threads)) as n_threads, session.active(), \
            torch.inference_mode():
        session.begin(input_ids, attn)
        t0 = time.perf_counter()
        cache = kvcache.new_cache(lm, T + max_new_tokens + k)
        recording = bool(sliding and T + max_new_tokens + k >= sliding)
        if recording:  # dropping positions of a sliding-window layer beyond its window needs its past kept
            cache.activate_past_recording()
        mask = torch.ones((1, T + max_new_tokens + k), dtype=torch.long)
        # a long prompt's positions but the last in chunks within the memory budget, as generate does
        chunked_prefill(lm, input_ids, attn, prefill_chunk(lm, input_ids, attn, max_new_tokens), session, cache)
        past = cache.get_seq_length()
        out = model(input_ids=input_ids[:, past:], attention_mask=mask[:, :T], use_cache=True, logits_to_keep=1,
                    **{cache_kw: cache})
        tok = int(argmax_last(out.logits[:, -1].to(torch.float32))[0])
        del out
        if cfg.method != "dense":  # the method's decode functions, from the prefill (as generate's clock does)
            session.finish_prefill()
        t1 = time.perf_counter()
        out_ids.append(tok)
        cur = T  # positions in the cache
        depth = k  # drafts of the next cycle (adaptive_depth)
        while len(out_ids) < max_new_tokens and tok not in stops:
            kk = min(depth, max_new_tokens - len(out_ids))
            hidden.clear()
            drafts, feed = [], tok
            with linear_overrides({head: draft_head}):
                for _ in range(kk):
                    out = model(input_ids=torch.tensor([[feed]]), attention_mask=mask[:, :cur + 1], use_cache=True,
                                logits_to_keep=1, **{cache_kw: cache})
                    cur += 1
                    feed = int(draft["vocab"][int(argmax_last(out.logits[:, -1].to(torch.float32))[0])])
                    del out
                    drafts.append(feed)
                    if feed in stops:
                        break
            rows = torch.stack(hidden)
            full = ops.vnni_gemv_rows(rows, tw.packed, tw.st, None, "Q8_0", None)
            if full.numel() == 0:  # a non-finite hidden state: the head's own forward, the IEEE result
                full = torch.cat([head.forward(r.view(1, -1)) for r in rows])
            best = argmax_last(full).tolist()
            ok = next((j for j, (d, a) in enumerate(zip(drafts, best)) if d != a), len(drafts))
            stats.cycles += 1
            stats.drafted += len(drafts)
            stats.accepted += ok
            depth = adaptive_depth(depth, ok, len(drafts), k)
            new = drafts[:ok] + ([best[ok]] if ok < len(drafts) else [])
            if ok < len(drafts) and best[ok] not in misses:
                learn(int(best[ok]))
            drop = len(drafts) - ok - 1 if ok < len(drafts) else 0
            if drop or recording:  # recording: crop(0) also trims the sliding layers back to their window
                cache.crop(-drop)
                cur -= drop
            for t in new:
                out_ids.append(int(t))
                if t in stops or len(out_ids) >= max_new_tokens:
                    break
            tok = out_ids[-1]
        t2 = time.perf_counter()
    cut = next((i + 1 for i, t in enumerate(out_ids) if t in stops), len(out_ids))
    ids = out_ids[:cut]
    text = lm.tokenizer.decode([t for t in ids if t not in stops], skip_special_tokens=True)
    n = len(ids)
    timings = {"prefill_s": t1 - t0, "mask_s": 0.0, "decode_s": t2 - t1, "decode_steps": max(n - 1, 0),
               "decode_ms_per_token": 1000 * (t2 - t1) / (n - 1) if n > 1 else float("nan"), "total_s": t2 - t0,
               "new_tokens": n, "prompt_tokens": T, "batch": 1, "prefill_chunk": T, "threads": n_threads}
    # weights read per new decode token: the method's layers once per draft step (wrong drafts' steps
    # included), the draft head's rows at every step and the full head once per verification
    steps = max(n - 1, 1)
    read = {g: v * stats.drafted / steps for g, v in session.read_fraction().items() if g != "lm_head"}
    read["lm_head"] = (stats.vocab * stats.drafted + tw.shape[0] * stats.cycles) / (tw.shape[0] * steps)
    dens, per = session.densities()
    params = {**cfg.to_dict(), "speculative_k": k, "speculative": stats.to_dict(), "model_id": lm.model_id,
              "dtype": "gguf", "device": str(lm.device), "read_fraction": read}
    return GenerationResult([text], [ids], prompt_ids, cfg.method, dens, per, timings, params)
