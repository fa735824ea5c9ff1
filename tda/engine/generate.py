"""Sparse generation inside Hugging Face ``generate``: dense prefill, then a sparse method per step.

:func:`generate` calls ``model.generate`` (KV cache, greedy/sampling, stop tokens,
``min_new_tokens``) inside a :class:`~tda.engine.session.SparseSession`'s overrides, with a
first ``LogitsProcessor`` that runs once per step: its first call comes right after the (dense)
prefill, so it lets the method build its decode functions (masks and slices once per prompt;
thresholds and sparse kernels for token-wise methods) and switches the session to decode; it
also timestamps prefill and decode.

Generation of an unpadded batch (greedy, or sampling with temperature/top-k/top-p) runs the same
loop without Hugging Face's per-step plumbing (:mod:`tda.engine.decode_loop`: the same tokens,
~0.4 ms less per step); padded batches keep ``generate``. Around the loop the engine keeps the
step lean: a KV cache written in place (:mod:`tda.engine.kvcache`), one fused attention call per
layer at decode steps on the fast path
(:mod:`tda.engine.attention`), long prompts prefilled in chunks within the memory budget
(:func:`chunked_prefill`, capture's chunking), and a thread policy (:mod:`tda.engine.threads`).

The method and its settings travel in one :class:`~tda.engine.config.SparsityConfig`
(``generate(lm, prompts, SparsityConfig("teal", density=0.5))``), or as a method name plus the
same fields as keywords (``generate(lm, prompts, "griffin", density=0.5)``). Methods live in
:mod:`tda.engine.methods` (one module each, one registry).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from tda.common.errors import BadInput
from tda.engine import decode_loop, kvcache
from tda.engine import threads as thread_policy
from tda.engine.config import SparsityConfig, as_config
from tda.engine.methods.registry import get_method, method_names
from tda.engine.methods.thresholds import calibrated_cett
from tda.engine.session import SparseSession, sync
from tda.models.load import cache_kwarg

METHODS = method_names()



def check_method(method: str) -> str:
    """``method`` if it names a registered method or a ``PROMPT+tt`` combination, optionally with an
    lm_head suffix ``+headD`` (:func:`tda.engine.config.split_head`); else BadInput."""
    from tda.engine.config import split_head

    get_method(split_head(method)[0])
    return method


def thresholds_for(lm, cett: float = 0.2, texts: list[str] | None = None) -> list[float]:
    """Per-layer CETT thresholds ``t_L`` (cached calibration; ``texts`` default: shipped corpus)."""
    return calibrated_cett(lm, cett, texts)


# ----- generate -------------------------------------------------------------------------------------
@dataclass
class GenerationResult:
    """What :func:`generate` returns. ``token_ids[i]``: prompt ``i``'s new tokens (up to and
    including a stop token); ``density_per_layer[i][L]``; ``timings`` in seconds (and ms/token)."""

    texts: list[str]
    token_ids: list[list[int]]
    prompt_token_ids: list[list[int]]
    method: str
    density: float
    density_per_layer: list[list[float]]
    timings: dict
    params: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.texts[0]

    def to_json(self, i: int = 0) -> dict:
        return {
            "text": self.texts[i], "token_ids": self.token_ids[i], "density": self.density,
            "density_per_layer": self.density_per_layer[min(i, len(self.density_per_layer) - 1)],
            "timings": self.timings, "method": self.method, "params": self.params,
        }


class _StepClock:
    """A pass-through LogitsProcessor: first call = prefill done -> build masks; timestamps. It never
    writes into the scores (:func:`tda.engine.decode_loop.decode` then reads the logits in place)."""

    writes_scores = False

    def __init__(self, session: SparseSession | None, device: torch.device):
        self.session, self.device = session, device
        self.calls = 0
        self.t_prefill = self.t_decode_start = None

    def __call__(self, input_ids, scores):
        if self.calls == 0:
            sync(self.device)
            self.t_prefill = time.perf_counter()
            if self.session is not None:
                self.session.finish_prefill()
            self.t_decode_start = time.perf_counter()
        self.calls += 1
        return scores


class _MinNewTokens:
    """``min_new_tokens`` without Hugging Face's per-step cost: its min-length processors rebuild
    an ``isin(arange(vocab), eos)`` mask at every step, even past the minimum (~1.5 ms per step on
    Gemma's 262k vocabulary); this one indexes the stop ids directly. Same rule: stop tokens get ``-inf``
    while fewer than ``min_new`` tokens have been generated."""

    def __init__(self, prompt_len: int, min_new: int, stops: list[int]):
        self.prompt_len, self.min_new, self.stops = prompt_len, min_new, list(stops)
        self._idx = None

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] - self.prompt_len < self.min_new:
            if self._idx is None or self._idx.device != scores.device:
                self._idx = torch.tensor([t for t in self.stops if 0 <= t < scores.shape[-1]],
                                         dtype=torch.long, device=scores.device)
            scores.index_fill_(1, self._idx, -float("inf"))
        return scores


def _pad_id(lm) -> int:
    tok = lm.tokenizer
    for v in (tok.pad_token_id, tok.eos_token_id, getattr(lm.model.config, "pad_token_id", None)):
        if isinstance(v, int):
            return v
    return 0


def encode_batch(lm, prompts: list[str], max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Left-padded ``input_ids[B, T]``, ``attention_mask[B, T]`` and the unpadded ids; validates."""
    from tda.activations.capture import tokenize

    ids = [tokenize(lm, p) for p in prompts]
    T = max(len(i) for i in ids)
    if T + max_new_tokens > lm.n_ctx:
        raise BadInput(f"prompt ({T} tokens) + max-new-tokens ({max_new_tokens}) exceeds the context ({lm.n_ctx})")
    pad = _pad_id(lm)
    input_ids = torch.full((len(ids), T), pad, dtype=torch.long)
    attn = torch.zeros((len(ids), T), dtype=torch.long)
    for r, seq in enumerate(ids):
        input_ids[r, T - len(seq):] = torch.tensor(seq)
        attn[r, T - len(seq):] = 1
    return input_ids.to(lm.device), attn.to(lm.device), ids


def stop_ids(lm, extra: list[int] | None = None) -> list[int]:
    out = []
    eos = lm.tokenizer.eos_token_id
    cfg_eos = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    for v in (eos, cfg_eos, extra):
        for x in (v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(x, int) and x not in out:
                out.append(x)
    return out


def prefill_chunk(lm, input_ids: torch.Tensor, attn: torch.Tensor, max_new_tokens: int) -> int:
    """Prompt tokens per prefill forward: the budget's plan (:func:`tda.activations.budget.prefill_plan`,
    the chunking capture uses) for unpadded prompts; a padded batch runs in one forward (checked
    against the budget). A one-line BadInput when it does not fit."""
    from tda.activations.budget import check_generation, prefill_plan

    B, T = input_ids.shape
    if bool(attn.all()):
        return prefill_plan(lm, T, max_new_tokens, batch=B).chunk
    check_generation(lm, T, max_new_tokens, batch=B)
    return T


def chunked_prefill(lm, input_ids: torch.Tensor, attn: torch.Tensor, chunk: int, session: SparseSession | None,
                    cache) -> None:
    """When the prompt is longer than ``chunk``: all its positions but the last through ``cache``,
    ``chunk`` per forward (:func:`tda.activations.capture.forward_chunks`), the session's prefill
    statistics gathered window by window; ``generate``'s own prefill is then the last position."""
    from tda.activations.capture import forward_chunks

    T = input_ids.shape[1]
    if chunk >= T:
        return
    window = session.prefill_window if session is not None else None
    forward_chunks(lm, input_ids[:, :-1], chunk, attention_mask=attn[:, :-1], cache=cache, on_chunk=window)
    if session is not None:
        session.prefill_window(T - 1, T)


def generate(lm, prompts: str | list[str], method: str | SparsityConfig = "dense", *,
             max_new_tokens: int = 32, min_new_tokens: int | None = None, do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
             stop_token_ids: list[int] | None = None, stock: bool = False, chunk: int | None = None,
             threads: str | int | None = None, **sparsity) -> GenerationResult:
    """Generate from ``prompts`` with a sparse method at every decode step (see the module doc).

    ``method``: a :class:`SparsityConfig`, or a method name with its fields as keywords
    (``density``, ``cett``, ``thresholds``, ``lm_head_density``, ``fast``, ``batch_mode``,
    ``mask_seed``, ``calibration_texts``, ``griffin_reference``). ``stock=True`` is plain Hugging Face ``generate`` with
    no override at all (the baseline a user has today); ``fast`` routes fp32 CPU linears through
    oneDNN when a probe agrees. Long prompts prefill in chunks through the KV cache within the
    memory budget (:func:`prefill_chunk`); ``chunk`` forces the chunk size (tests, benchmarks).
    ``threads``: ``all`` cores, ``auto`` (the cores free when it starts: robust beside a busy
    neighbour; every core on a quiet machine) or a count; default ``$TDA_THREADS`` or ``auto``
    (:mod:`tda.engine.threads`).
    """
    from transformers import GenerationConfig, LogitsProcessorList

    cfg = as_config(method, **sparsity)
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise BadInput("no prompts given")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise BadInput(f"max-new-tokens must be an integer >= 1, got {max_new_tokens}")
    if stock and cfg.method != "dense":
        raise BadInput("stock generation is dense only")
    threads = thread_policy.check_policy(threads)
    input_ids, attn, prompt_ids = encode_batch(lm, list(prompts), max_new_tokens)
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise BadInput(f"chunk must be a positive integer, got {chunk}")
    planned = prefill_chunk(lm, input_ids, attn, max_new_tokens)  # checks the budget before any work
    chunk = min(chunk, planned) if chunk is not None else planned
    session = None if stock else SparseSession(lm, cfg)
    clock = _StepClock(session if session is not None and cfg.method != "dense" else None, lm.device)
    stops = stop_ids(lm, stop_token_ids)
    processors = [clock]
    # greedy only: with sampling, Hugging Face must mask stop tokens before its top-k/top-p warpers
    if min_new_tokens and not stock and not do_sample and stops:  # stock keeps HF's processor
        processors.append(_MinNewTokens(int(input_ids.shape[1]), int(min_new_tokens), stops))
        hf_min_new = None
    else:  # None, not 0: min_new_tokens=0 makes HF add a MinLengthLogitsProcessor (isin per step)
        hf_min_new = min_new_tokens or None
    gen_cfg = GenerationConfig(
        max_new_tokens=max_new_tokens, min_new_tokens=hf_min_new, do_sample=bool(do_sample),
        temperature=float(temperature) if do_sample else None, top_p=float(top_p) if do_sample else None,
        top_k=int(top_k) if do_sample else None, eos_token_id=stops or None, pad_token_id=_pad_id(lm),
        use_cache=True,
    )
    ctx = session.active() if session is not None else contextlib.nullcontext()
    rng = torch.random.fork_rng(devices=[lm.device] if lm.device.type == "cuda" else []) if seed is not None \
        else contextlib.nullcontext()
    with rng, thread_policy.threads(threads) as n_threads, ctx, torch.inference_mode():
        if seed is not None:
            torch.manual_seed(int(seed))
        if session is not None:
            session.begin(input_ids, attn)
        sync(lm.device)
        t0 = time.perf_counter()
        # stock: Hugging Face's own cache; else one written in place (no per-step cat of the whole cache)
        cache = None if stock else kvcache.new_cache(lm, int(input_ids.shape[1]) + max_new_tokens)
        if cache is not None or chunk < input_ids.shape[1]:
            cache = cache if cache is not None else lm.new_cache()
            chunked_prefill(lm, input_ids, attn, chunk, session, cache)
        if not stock and decode_loop.applicable(lm.model, attn, cache, do_sample=bool(do_sample)):
            lean = list(processors)
            if do_sample and hf_min_new and stops:  # generate's MinNewTokensLengthLogitsProcessor, the same rule
                lean.append(_MinNewTokens(int(input_ids.shape[1]), int(hf_min_new), stops))
            sample = (gen_cfg.temperature, gen_cfg.top_k, gen_cfg.top_p) if do_sample else None
            out = decode_loop.decode(lm.model, input_ids, cache, cache_kwarg(lm.model), max_new_tokens=max_new_tokens,
                                     processors=lean, stop_ids=stops, pad_id=_pad_id(lm), sample=sample)
        else:
            out = lm.model.generate(input_ids=input_ids, attention_mask=attn, generation_config=gen_cfg,
                                    logits_processor=LogitsProcessorList(processors),
                                    **(lm.cache_kw(cache) if cache is not None else {}))
        sync(lm.device)
        t1 = time.perf_counter()
    new = out[:, input_ids.shape[1]:].tolist()
    token_ids = []
    for row in new:
        cut = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
        token_ids.append(row[:cut])
    texts = [lm.tokenizer.decode([t for t in row if t not in stops], skip_special_tokens=True) for row in token_ids]
    n_steps = max(len(r) for r in new)
    prefill_s = (clock.t_prefill or t1) - t0
    decode_s = t1 - (clock.t_decode_start or t1)
    timings = {
        "prefill_s": prefill_s, "mask_s": session.mask_s if session is not None else 0.0,
        "decode_s": decode_s, "decode_steps": max(n_steps - 1, 0),
        "decode_ms_per_token": 1000 * decode_s / (n_steps - 1) if n_steps > 1 else float("nan"),
        "total_s": t1 - t0, "new_tokens": n_steps, "prompt_tokens": int(input_ids.shape[1]),
        "batch": len(prompts), "prefill_chunk": chunk, "threads": n_threads,
    }
    dens, per = session.densities() if session is not None else (1.0, [[1.0] * lm.ffn.n_layers] * len(prompts))
    params = {**cfg.to_dict(), "fast": bool(session.fast) if session else False, "stock": stock,
              "do_sample": bool(do_sample), "seed": seed, "max_new_tokens": max_new_tokens,
              "model_id": lm.model_id, "dtype": str(lm.dtype).replace("torch.", ""), "device": str(lm.device),
              "read_fraction": session.read_fraction() if session is not None
              else {"ffn": 1.0, "other": 1.0, "lm_head": 1.0}}
    return GenerationResult(texts, token_ids, prompt_ids, cfg.method, dens, per, timings, params)
