"""Teacher-forced scoring of a continuation under a sparse session (quality and lm-eval share it).

Two ways, the same numbers (``tests/test_scoring.py``: equal to a token-by-token decode, per method):

- :func:`continuation_logits`: one text, one session — a dense prefill on the prefix (the method
  builds its mask from it), then the continuation teacher-forced through the KV cache in one
  forward with the mask fixed (token-wise rules select per token inside that forward).
- :func:`batch_logits`: several texts and several sessions at once — **one** dense prefill of the
  left-padded prefixes feeds every session's statistics (the prefill is dense whatever the method,
  so all variants share it), then per session one forward of the continuations (left-padded too,
  so the pads sit between prefix and continuation and every row's last positions line up) on a copy
  of the prefill's KV cache. A prompt-fixed method keeps one mask per row, a token-wise rule
  selects per token and row (:mod:`tda.engine.tokenwise`: each row gets what it would get alone).
"""

from __future__ import annotations

import copy
import gc
import time
from collections import defaultdict

import torch

from tda.common.errors import BadInput
from tda.common.memory import release_free_memory
from tda.engine.generate import SparseSession

# methods whose rule fits something on the whole prefill batch: tt with a density fits one scale
# on every row's prefill tokens pooled, so rows of a batch would change each other's selection —
# they are scored one passage at a time (still one shared prefill for all their densities)
POOLED_FIT = ("tt",)
# method kinds whose continuation forward is a fixed function of the prefill: a batch changes their
# logits by float rounding only (another matmul shape, padded attention), ~1e-7 of a text's NLL
BATCHABLE_KINDS = ("dense", "prompt")


def batchable(method: str) -> bool:
    """Can passages of ``method`` share a batch with unchanged results?

    Only dense and the prompt-fixed methods. A token-wise rule (a threshold or top-k on each
    token's activations: ``tt``, ``cats``, ``teal``, ``wina``, ``chess``, ``scap``, ``rsparse``,
    ``predictor``, the ``PROMPT+tt`` combinations, any ``+headD``) is discontinuous: the rounding
    difference of another batch shape flips a near-threshold entry, and through the KV cache the
    flip spreads to the later tokens — on Gemma 3 270M, 16 pydoc-text passages, padded batches of
    1024 tokens changed per-text NLL by up to 2.7% (teal@0.5; cats, wina, chess, scap 0.6–2%) and
    perplexity by up to 0.85%, with no speedup over one passage at a time. Those methods are scored
    one passage at a time: the same numbers, bit for bit, as :func:`continuation_logits` with the
    method's own prefill (``tests/test_scoring.py``)."""
    from tda.engine.config import split_head
    from tda.engine.methods.registry import get_method

    base, head = split_head(method)
    if head is not None or base in POOLED_FIT:
        return False
    return get_method(base).kind in BATCHABLE_KINDS


def continuation_logits(lm, ids: list[int], n_prefix: int, session: SparseSession) -> torch.Tensor:
    """Logits ``[n_cont, vocab]`` predicting ``ids[n_prefix:]``: dense prefill on the prefix (mask
    built from it), then the continuation teacher-forced through the KV cache with the mask fixed."""
    if not 0 < n_prefix < len(ids):
        raise BadInput("the text is too short to split into a prompt and a continuation")
    dev = lm.device
    prefix = torch.tensor([ids[:n_prefix]], device=dev)
    cont = torch.tensor([ids[n_prefix:-1]], device=dev)
    with session.active(), torch.inference_mode():
        session.begin(prefix)
        cache = lm.new_cache()
        out = lm.model(input_ids=prefix, use_cache=True, **lm.cache_kw(cache), logits_to_keep=1)
        session.finish_prefill()
        logits = [out.logits[0, -1:].float()]
        if cont.shape[1]:
            out2 = lm.model(input_ids=cont, use_cache=True, **lm.cache_kw(cache))
            logits.append(out2.logits[0].float())
    return torch.cat(logits)


def split_point(n_tokens: int, frac: float = 0.5) -> int:
    return max(1, min(n_tokens - 1, int(round(n_tokens * frac))))


def window(lm) -> int:
    """The shortest attention window of the model's layers (a sliding window; else no limit). A
    padded batch must fit in it: the window counts padded positions."""
    c = lm.model.config
    c = getattr(c, "text_config", c)
    w = getattr(c, "sliding_window", None)
    types = getattr(c, "layer_types", None)
    if not w or (types is not None and "sliding_attention" not in types):
        return 1 << 62
    return int(w)


def _fresh(s: SparseSession) -> SparseSession:
    """A new session with the same configuration (a session holds one prefill's state)."""
    return SparseSession(s.lm, s.cfg)


def _pad_id(lm) -> int:
    tok = lm.tokenizer
    for t in (tok.pad_token_id, tok.eos_token_id, 0):
        if t is not None:
            return int(t)
    return 0


def _left_pad(rows: list[list[int]], pad: int, dev) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad, dtype=torch.long, device=dev)
    am = torch.zeros((len(rows), n), dtype=torch.long, device=dev)
    for i, r in enumerate(rows):
        if r:
            ids[i, n - len(r):] = torch.tensor(r, dtype=torch.long, device=dev)
            am[i, n - len(r):] = 1
    return ids, am


def _shared_prefill_table(lm, sessions: list[SparseSession]) -> dict:
    """One override table for the dense prefill that feeds every session's prefill hooks."""
    from tda.engine import fastpath

    table = dict(fastpath.dense_table(lm.model, fast=sessions[0].fast))
    hooks: dict = defaultdict(list)
    for s in sessions:
        for part in s._parts():
            for m, h in part.prefill_hooks().items():
                hooks[m].append(h)
    for m, hs in hooks.items():
        dense = table.get(m) or fastpath.module_fn(m)
        table[m] = _calls(hs, dense)
    return table


def _calls(hooks, dense):
    def fn(x):
        for h in hooks:
            h(x)
        return dense(x)

    return fn


def batch_logits(lm, seqs: list[list[int]], splits: list[int], sessions: dict[str, SparseSession], *,
                 keep_last: int | None = None) -> dict[str, list[torch.Tensor]]:
    """``{label: [logits[n_i, vocab] per row]}``: the logits predicting ``seqs[i][splits[i]:]`` (the
    first from the shared dense prefill), or only its last ``keep_last`` (the lm_head then runs on
    those positions only) — for every session in ``sessions`` (fresh :class:`SparseSession`\\ s).

    One batch row per sequence; a single row runs exactly like :func:`continuation_logits`."""
    parts = batch_logit_parts(lm, seqs, splits, sessions, keep_last=keep_last)
    return {label: [torch.cat(p) for p in rows] for label, rows in parts.items()}


def batch_logit_parts(lm, seqs: list[list[int]], splits: list[int], sessions: dict[str, SparseSession], *,
                      keep_last: int | None = None) -> dict[str, list[list[torch.Tensor]]]:
    """:func:`batch_logits` with each row's logits left in pieces ``[logits[n_j, vocab], ...]``
    (their concatenation is the row's logits): a row's ``[n_i, vocab]`` fp32 copy is hundreds of
    MB on a 262k-word vocabulary, and a per-row reduction (:func:`nll_and_top`) needs none."""
    from tda.models.dispatch import linear_overrides

    if not seqs or len(seqs) != len(splits) or not sessions:
        raise BadInput("batch_logits needs sequences, one split point each, and sessions")
    for ids, k in zip(seqs, splits):
        if not 0 < k < len(ids):
            raise BadInput("the text is too short to split into a prompt and a continuation")
    dev, pad, B = lm.device, _pad_id(lm), len(seqs)
    prefix, pam = _left_pad([ids[:k] for ids, k in zip(seqs, splits)], pad, dev)
    conts = [ids[k:-1] for ids, k in zip(seqs, splits)]
    cont, cam = _left_pad(conts, pad, dev)
    padded = B > 1 and not (bool(pam.all()) and bool(cam.all()))
    if padded and prefix.shape[1] + cont.shape[1] > window(lm):  # pads would shift a sliding window
        parts = [batch_logit_parts(lm, [ids], [k], {lab: s if i == 0 else _fresh(s) for lab, s in sessions.items()},
                                   keep_last=keep_last) for i, (ids, k) in enumerate(zip(seqs, splits))]
        return {lab: [p[lab][0] for p in parts] for lab in sessions}
    kw: dict = {}
    ckw: dict = {}
    if padded:
        pos = (pam.cumsum(1) - 1).clamp_min(0)
        kw = {"attention_mask": pam, "position_ids": pos}
        ks = torch.tensor(splits, device=dev)[:, None]
        cpos = (ks + cam.cumsum(1) - 1).clamp_min(0)
        ckw = {"attention_mask": torch.cat([pam, cam], 1), "position_ids": cpos}
    ss = list(sessions.values())
    with torch.inference_mode():
        for s in ss:
            s.begin(prefix, pam if padded else None)
            if padded or B > 1:
                s.lean = False  # the lean decode path assumes one unpadded row
        cache = lm.new_cache()
        with linear_overrides(_shared_prefill_table(lm, ss)):
            out = lm.model(input_ids=prefix, use_cache=True, **lm.cache_kw(cache), logits_to_keep=1, **kw)
        first = out.logits[:, -1].float()  # [B, vocab]: predicts each row's first continuation token
        del out
        for s in ss:
            s.finish_prefill()
        res: dict[str, list[list[torch.Tensor]]] = {}
        C = cont.shape[1]
        for label, s in sessions.items():
            rows = [[first[i:i + 1]] for i in range(B)]
            if C:
                c = copy.deepcopy(cache) if len(ss) > 1 else cache
                keep = C if keep_last is None else min(C, keep_last)
                with s.active():
                    out2 = lm.model(input_ids=cont, use_cache=True, **lm.cache_kw(c), logits_to_keep=keep, **ckw)
                lg = out2.logits.float()  # [B, keep, vocab]
                del out2, c
                rows = [r + [lg[i, keep - min(keep, len(conts[i])):]] for i, r in enumerate(rows)]
            if keep_last is not None:
                rows = [[torch.cat(r)[-keep_last:]] for r in rows]
            res[label] = rows
    return res


def nll_and_top(logits: torch.Tensor | list[torch.Tensor], targets: list[int]) -> tuple[float, list[int]]:
    """Summed negative log-likelihood of ``targets`` under ``logits[n, vocab]`` (or its row pieces,
    :func:`batch_logit_parts`) and the top-1 ids (the first maximum, as ``argmax``)."""
    parts = [logits] if isinstance(logits, torch.Tensor) else list(logits)
    if sum(p.shape[0] for p in parts) != len(targets):
        raise BadInput(f"{sum(p.shape[0] for p in parts)} rows of logits for {len(targets)} targets")
    t = torch.tensor(targets, device=parts[0].device)
    lps, tops, at = [], [], 0
    for p in parts:  # log_softmax and max work per row: the pieces give the bits of the whole
        lps.append(torch.log_softmax(p, dim=-1).gather(1, t[at:at + p.shape[0], None])[:, 0])
        tops += p.max(-1).indices.tolist()  # max's indices: argmax's, at half its time on CPU
        at += p.shape[0]
    return float(-torch.cat(lps).sum()), tops


def batches_by_length(lengths: list[int], max_tokens: int, max_rows: int = 16) -> list[list[int]]:
    """Indices grouped into batches of similar length (sorted, longest first; stable), each with at
    most ``max_rows`` rows and ``rows × longest <= max_tokens`` (a longer single row stands alone)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    out: list[list[int]] = []
    for i in order:
        if out and len(out[-1]) < max_rows and (len(out[-1]) + 1) * lengths[out[-1][0]] <= max_tokens:
            out[-1].append(i)
        else:
            out.append([i])
    return out


BATCH_TOKENS = 1024  # padded tokens per scoring batch (perplexity: the logits of half of them are kept)
CLOZE_BATCH_TOKENS = 4096  # cloze keeps the logits of the target positions only


def prepare_layouts(lm, seqs: list[list[int]], sessions: dict[str, SparseSession]) -> None:
    """Build every session once on a few tokens of the shortest sequence, before anything is scored.

    A method converts the weights it reads to its layout when it is first built
    (:func:`tda.engine.layouts.input_major`, in place), and the dense path then multiplies with the
    other layout (``mm`` instead of oneDNN): the same values, other rounding in the last bits. A
    token-wise rule amplifies those bits (a flipped near-threshold entry spreads through the KV
    cache), so without this the passages scored before the first build would get other numbers
    than the same passages scored later in the same process."""
    ids = min(seqs, key=len)[:8]
    if len(ids) >= 2 and sessions:
        batch_logits(lm, [ids], [len(ids) // 2], sessions, keep_last=1)


def score_units(lm, seqs: list[list[int]], splits: list[int], vs: list, *, keep_last=None,
                cett: float = 0.2, fast: bool | None = True, thresholds: dict | None = None,
                calibration_texts=None, batch_tokens: int = BATCH_TOKENS, what: str = "scoring",
                progress=None, reduce=None, journal=None, tags: list | None = None) -> list[dict]:
    """``[{label: reduce(i, pieces)} per sequence]``, in order: every variant's teacher-forced logits
    of ``seqs[i][splits[i]:]`` (the last ``keep_last`` of them, when given), in row pieces whose
    concatenation they are (:func:`tda.evaluate.scoring.batch_logit_parts`) — sequences of similar length batched (at most
    ``batch_tokens`` padded tokens), one dense prefill per batch shared by every variant whose rule
    allows batching (:func:`tda.evaluate.scoring.batchable`), the others one sequence at a time.
    Progress (with an ETA) goes to ``progress``; batches are shared out over processes.

    ``journal`` (a :class:`tda.evaluate.journal.Journal`): each scored batch is appended to it, and
    the variants whose results it already holds for every sequence of a batch under the same key
    are not scored again for that batch (their results are read back: the same values; a batch only
    partly there is scored whole for the variants it lacks). The key names the run's methods, not
    its densities, so a run with more densities of the same methods scores only the new ones. ``what`` is
    the scoring kind in the key; ``tags[i]``: whatever else ``reduce(i, ...)`` depends on beyond the
    sequence and its split (e.g. a cloze target's token count), part of sequence ``i``'s key."""
    from tda.common import distributed
    from tda.common.progress import task

    if reduce is None:
        raise BadInput("score_units needs a reduce function")
    if len(seqs) != len(splits) or (tags is not None and len(tags) != len(seqs)):
        raise BadInput("score_units needs one split point (and one tag, when given) per sequence")
    thresholds = thresholds or {}

    def sessions(group):
        return {v.label: SparseSession(lm, v.method, density=v.density, cett=cett, fast=fast,
                                       thresholds=thresholds.get(v.method), calibration_texts=calibration_texts)
                for v in group}

    batches = batches_by_length([len(x) for x in seqs], batch_tokens)
    keys, resumed = _journal_lookup(lm, seqs, splits, vs, batches, journal, what=what, cett=cett, fast=fast,
                                    thresholds=thresholds, calibration_texts=calibration_texts,
                                    batch_tokens=batch_tokens, keep_last=keep_last, tags=tags, progress=progress)
    todo = [(b, [v for v in vs if not all(v.label in resumed.get(i, ()) for i in b)]) for b in batches]
    todo = [(b, missing) for b, missing in todo if missing]
    n_resumed = sum(len(b) for b in batches) - sum(len(b) for b, _ in todo)
    total = sum(len(seqs[i]) for b, _ in todo for i in b)
    prepare_layouts(lm, seqs, sessions(vs))  # even when everything is resumed: later work sees the same layouts
    done = [0]
    together = {v.label for v in vs if batchable(v.method)}  # the rest is scored one sequence at a time
    n_new = max((len(missing) for _, missing in todo), default=0)
    t = task(f"{what}: {len(seqs)} sequences × {len(vs)} variants, {len(todo)} batches"
             + (f" ({n_resumed} sequences resumed from the journal"
                + (f", and {len(vs) - n_new} of the {len(vs)} variants of the rest" if n_new < len(vs) else "") + ")"
                if journal is not None else ""), total, sink=progress, unit="tokens") \
        if progress is not None and todo else None

    def one_batch(_, work: tuple[list[int], list]) -> list[dict]:
        idx, missing = work
        t0 = time.perf_counter()
        out: list[dict] = [{} for _ in idx]
        if together_now := [v for v in missing if v.label in together]:
            got = batch_logit_parts(lm, [seqs[i] for i in idx], [splits[i] for i in idx], sessions(together_now),
                                    keep_last=keep_last)
            for label, rows in got.items():
                for j, i in enumerate(idx):
                    out[j][label] = reduce(i, rows[j])
        if alone_now := [v for v in missing if v.label not in together]:
            for j, i in enumerate(idx):
                got = batch_logit_parts(lm, [seqs[i]], [splits[i]], sessions(alone_now), keep_last=keep_last)
                for label, rows in got.items():
                    out[j][label] = reduce(i, rows[0])
        if journal is not None:
            journal.append([(keys[i], i, r) for i, r in zip(idx, out)], seconds=time.perf_counter() - t0)
        # a batch's sessions hold their slices, KV copies and logits in reference cycles (closures
        # over the session), freed only by the cyclic collector, which counts objects, not bytes; and
        # the hundreds of MB of tensors a batch frees stay in glibc's fragmenting heap unless trimmed.
        # Without both a full-set run's RSS grew past 24 GB during cloze (the OOM killer ended it).
        gc.collect()
        release_free_memory()
        if t is not None:
            done[0] += sum(len(seqs[i]) for i in idx)
            t.update(done[0])
        return out

    if t is not None:
        t.start()
    elif progress is not None and journal is not None:
        progress(f"{what}: all {len(seqs)} sequences resumed from the journal")
    per_batch = distributed.map_sharded(one_batch, todo) if todo else []
    if t is not None:
        t.done()
    res: list[dict] = [dict(resumed.get(i, {})) for i in range(len(seqs))]
    for (idx, _), rows in zip(todo, per_batch):
        for i, r in zip(idx, rows):
            res[i].update(r)
    order = [v.label for v in vs]
    return [{label: r[label] for label in order} for r in res]


def _journal_lookup(lm, seqs, splits, vs, batches, journal, *, what, cett, fast, thresholds, calibration_texts,
                    batch_tokens, keep_last, tags, progress) -> tuple[list[str] | None, dict[int, dict]]:
    """``(key per sequence, {i: {label: result}} of the variants the journal holds for each
    sequence)``; ``(None, {})`` without a journal. The main process reads the file and every process
    gets the same answer."""
    if journal is None:
        return None, {}
    from tda.common import distributed
    from tda.evaluate import journal as jn

    labels = {v.label for v in vs}
    run = jn.run_key(model=jn.model_identity(lm), kind=what, methods=[v.method for v in vs], cett=cett,
                     thresholds=thresholds, calibration_texts=calibration_texts, batch_tokens=batch_tokens,
                     keep_last=keep_last, fast=fast)
    keys: list[str] = [""] * len(seqs)
    for b in batches:
        rows = [(seqs[i], splits[i]) for i in b]
        for j, i in enumerate(b):
            keys[i] = jn.unit_key(run, rows, j, None if tags is None else tags[i])

    def lookup() -> dict[int, dict]:
        have = journal.read(warn=progress)
        got = {i: {label: v for label, v in have[k].items() if label in labels} for i, k in enumerate(keys) if k in have}
        return {i: r for i, r in got.items() if r}

    return keys, distributed.on_main(lookup)
