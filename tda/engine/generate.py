"""Sparse generation: dense prefill, masks from the prefill, sliced FFNs at every decode step.

How it works (one :class:`SparseSession` per call; the shared model is never mutated):
- every FFN projection gets a *phase-switching* override (``tda.models.dispatch.linear_overrides``,
  context-local, so concurrent callers are independent). In the ``prefill`` phase the overrides
  compute the dense projections and the output projection's override — which sees exactly the
  activation ``a`` that a forward pre-hook on ``lm.ffn.out_module(L)`` would — accumulates the
  per-row mask statistics (pad positions and the BOS position are left out, as in
  ``tda.activations.capture``). Nothing is registered on the model, so a second thread is not even visited;
- :func:`generate` calls Hugging Face ``model.generate`` unchanged (KV cache, greedy/sampling,
  stop tokens, ``min_new_tokens``) with a first ``LogitsProcessor`` that runs once per step:
  its first call comes right after the (dense) prefill, so it builds the masks, slices the
  weights (once per prompt) and switches the session to the ``decode`` phase; it also
  timestamps prefill and decode. One prefill only, and HF semantics for everything else;
- mask statistics are reduced online, never stored per token: TDA's RMS over tokens of
  ``|a_i|`` and GRIFFIN's ``Σ_t (a[t, j]/‖a[t, :]‖)²`` are kept per row and turned into a single
  equivalent "token" for :func:`tda.masks.build.build_mask`, which gives the same mask as the full
  activations (tested).

Methods: ``dense``; ``tt`` (per-token threshold; CETT thresholds, or scaled by one factor to hit
``density`` on the prefill); ``griffin``, ``static``, ``random`` (top-k at ``density``); ``tda``
(``tda_matched`` at ``density``, else calibrated CETT thresholds at ``cett``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field

import torch

from tda.common.errors import BadInput
from tda.engine import fastpath
from tda.engine.sparse import BATCH_MODES, slice_layer_batch, sliced_fns, tt_out_fn
from tda.masks.build import (
    NeuronMask,
    build_mask,
    check_density,
    model_down_norms,
    model_static_scores,
)
from tda.models.dispatch import linear_overrides

METHODS = ("dense", "tt", "griffin", "tda", "static", "random")
_CAL_LOCK = threading.Lock()


def check_method(method: str) -> str:
    if method not in METHODS:
        raise BadInput(f"unknown method '{method}'; use one of {', '.join(METHODS)}")
    return method


def thresholds_for(lm, cett: float = 0.2, texts: list[str] | None = None) -> list[float]:
    """Per-layer CETT thresholds ``t_L`` (cached calibration; ``texts`` default: shipped corpus)."""
    from tda.masks.calibrate import load_or_calibrate

    with _CAL_LOCK:
        return list(load_or_calibrate(lm, texts=texts, target=cett).thresholds)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SparseSession:
    """State of one sparse forward/generation: overrides, prefill statistics, masks, slices.

    Use ``with session.active(): session.begin(input_ids, attention_mask); <prefill forward>;
    session.finish_prefill(); <decode forwards>``.
    """

    def __init__(self, lm, method: str = "dense", *, density: float | None = None, cett: float = 0.2,
                 thresholds: list[float] | None = None, fast: bool | None = True, batch_mode: str = "union",
                 seed: int = 0, calibration_texts: list[str] | None = None, griffin_reference: bool = False):
        self.lm, self.method = lm, check_method(method)
        if griffin_reference and method != "griffin":
            raise BadInput("griffin_reference applies to method 'griffin' only")
        self.griffin_reference = bool(griffin_reference)  # BOS in the statistic, k rounded down
        self.density = None if density is None else check_density(density)
        if method in ("griffin", "static", "random") and self.density is None:
            raise BadInput(f"method '{method}' needs a density")
        if batch_mode not in BATCH_MODES:
            raise BadInput(f"unknown batch mode '{batch_mode}'; use one of {', '.join(BATCH_MODES)}")
        self.batch_mode, self.seed, self.cett = batch_mode, int(seed), float(cett)
        self.fast = fastpath.use_fast(lm, fast)
        self.thresholds = thresholds
        if method == "tt" or (method == "tda"):
            self.thresholds = list(thresholds) if thresholds is not None else thresholds_for(lm, cett, calibration_texts)
        self.phase = "prefill"
        self.masks: list[NeuronMask] = []  # one per batch row (sequence methods)
        self.tt_scale = 1.0
        self.tt_counters: list[list] = []
        self.mask_s = 0.0
        self._decode_fns: dict[int, tuple[list, object]] = {}

    # ----- overrides ----------------------------------------------------------------------
    def table(self) -> dict:
        lm, ffn = self.lm, self.lm.ffn
        table = dict(fastpath.dense_table(lm.model, fast=self.fast))
        if self.method == "dense":
            return table
        for L in range(ffn.n_layers):
            ins, out = ffn.in_modules(L), ffn.out_module(L)
            dense_in = [table.get(m) or fastpath.linear_fn(fastpath.module_weight(m), getattr(m, "bias", None))
                        for m in ins]
            dense_out = table.get(out) or fastpath.linear_fn(fastpath.module_weight(out), getattr(out, "bias", None))
            for j, m in enumerate(ins):
                table[m] = self._in_fn(L, j, dense_in[j])
            table[out] = self._out_fn(L, dense_out)
        return table

    def _in_fn(self, L: int, j: int, dense):
        def fn(x):
            if self.phase == "decode" and self.method != "tt":
                return self._decode_fns[L][0][j](x)
            return dense(x)
        return fn

    def _out_fn(self, L: int, dense):
        def fn(a):
            if self.phase == "decode":
                return self._decode_fns[L][1](a)
            self._accumulate(L, a)
            return dense(a)
        return fn

    @contextlib.contextmanager
    def active(self):
        with linear_overrides(self.table()):
            yield self

    # ----- prefill statistics -----------------------------------------------------------------
    def begin(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
        """Declare the prefill's ``input_ids[B, T]`` (left padding allowed) before running it."""
        B, T = input_ids.shape
        am = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        use = am.clone()
        bos = self.lm.tokenizer.bos_token_id
        if bos is not None and not self.griffin_reference:
            first = am.float().argmax(dim=1)  # first real position of each row
            rows = torch.arange(B, device=input_ids.device)
            is_bos = (input_ids[rows, first] == bos) & (am.sum(dim=1) > 1)
            use[rows[is_bos], first[is_bos]] = False
        self.B, self.T = B, T
        self.use = use.float()
        self.n_used = self.use.sum(dim=1).clamp_min(1.0)  # [B]
        self.phase = "prefill"
        self.stats: dict[int, torch.Tensor] = {}
        self.tt_samples: dict[int, torch.Tensor] = {}
        self._norms = None

    def _accumulate(self, L: int, a: torch.Tensor) -> None:
        m = self.method
        if m in ("dense", "static", "random") or (m == "tt" and self.density is None):
            return
        a = a.detach().float().reshape(self.B, self.T, -1)  # OPT passes [B*T, d_ff]
        w = self.use.to(a.device)[:, :, None]
        if m == "griffin":
            rows = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            self.stats[L] = (rows.pow(2) * w).sum(dim=1)  # [B, d_ff]
        elif m == "tda":
            self.stats[L] = (a.pow(2) * w).sum(dim=1) / self.n_used.to(a.device)[:, None]
        elif m == "tt":  # relative scores of the used tokens, subsampled, for the density scale
            norms = self.lm.ffn.down_norms(L).float().to(a.device)
            rel = (a.abs() * norms / max(self.thresholds[L], 1e-12))[w[..., 0] > 0].flatten()
            step = max(1, rel.numel() // 65536)
            self.tt_samples[L] = rel[::step].cpu()

    # ----- masks and slices ---------------------------------------------------------------------
    def _row_masks(self) -> list[NeuronMask]:
        lm, n, d = self.lm, self.lm.ffn.n_layers, self.lm.ffn.d_ff
        m = self.method
        if m == "static":
            return [build_mask("static", torch.zeros(n, 1, d), density=self.density,
                               static_scores=model_static_scores(lm))] * self.B
        if m == "random":
            return [build_mask("random", torch.zeros(n, 1, d), density=self.density, seed=self.seed)] * self.B
        if set(self.stats) != set(range(n)):
            raise RuntimeError("the prefill did not reach every FFN layer; no mask can be built")
        pseudo = torch.stack([self.stats[L].cpu() for L in range(n)], dim=1)  # [B, layer, d_ff]
        out = []
        for b in range(self.B):
            acts = pseudo[b].sqrt()[:, None, :]  # one equivalent token [layer, 1, d_ff]
            if m == "griffin":
                out.append(build_mask("griffin", acts, density=self.density, reference=self.griffin_reference))
            elif self.density is None:
                out.append(build_mask("tda", acts, thresholds=self.thresholds, down_norms=model_down_norms(lm)))
            else:
                out.append(build_mask("tda_matched", acts, density=self.density, thresholds=self.thresholds,
                                      down_norms=model_down_norms(lm)))
        return out

    def finish_prefill(self) -> None:
        """Build masks from the prefill, slice the weights (once), switch to the decode phase."""
        t0 = time.perf_counter()
        lm, ffn = self.lm, self.lm.ffn
        if self.method == "tt":
            if self.density is not None:
                rel = torch.cat([self.tt_samples[L] for L in range(ffn.n_layers)])
                self.tt_scale = float(torch.quantile(rel, 1.0 - self.density)) if rel.numel() else 1.0
            self.tt_counters = []
            for L in range(ffn.n_layers):
                cut = self.tt_scale * self.thresholds[L] / ffn.down_norms(L).float().clamp_min(1e-12)
                counter = [torch.zeros((), device=lm.device, dtype=torch.long), 0]
                self.tt_counters.append(counter)
                fn = tt_out_fn(ffn.down_weight(L), ffn.down_bias(L), cut, fast=self.fast, counter=counter)
                self._decode_fns[L] = ([], fn)
        elif self.method != "dense":
            self.masks = self._row_masks()
            keep = torch.stack([mk.keep for mk in self.masks], dim=1)  # [layer, B, d_ff]
            for L in range(ffn.n_layers):
                sl = slice_layer_batch(ffn, L, keep[L], self.batch_mode)
                self._decode_fns[L] = sliced_fns(sl, fast=self.fast)
        self.stats, self.tt_samples = {}, {}
        _sync(lm.device)
        self.mask_s = time.perf_counter() - t0
        self.phase = "decode"

    # ----- reporting ------------------------------------------------------------------------------
    def densities(self) -> tuple[float, list[list[float]]]:
        """(mean density, ``[row][layer]`` densities); TT: measured over decode tokens."""
        n = self.lm.ffn.n_layers
        if self.method == "dense":
            return 1.0, [[1.0] * n for _ in range(getattr(self, "B", 1))]
        if self.method == "tt":
            per = [float(c[0]) / c[1] if c[1] else float("nan") for c in self.tt_counters] or [float("nan")] * n
            valid = [p for p in per if p == p]
            return (sum(valid) / len(valid) if valid else float("nan")), [per]
        rows = [[float(x) for x in mk.density_per_layer()] for mk in self.masks]
        return sum(mk.density for mk in self.masks) / len(self.masks), rows


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
    """A pass-through LogitsProcessor: first call = prefill done -> build masks; timestamps."""

    def __init__(self, session: SparseSession | None, device: torch.device):
        self.session, self.device = session, device
        self.calls = 0
        self.t_prefill = self.t_decode_start = None

    def __call__(self, input_ids, scores):
        if self.calls == 0:
            _sync(self.device)
            self.t_prefill = time.perf_counter()
            if self.session is not None:
                self.session.finish_prefill()
            self.t_decode_start = time.perf_counter()
        self.calls += 1
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


def generate(lm, prompts: str | list[str], method: str = "dense", *, density: float | None = None,
             cett: float = 0.2, max_new_tokens: int = 32, min_new_tokens: int | None = None,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             seed: int | None = None, stop_token_ids: list[int] | None = None, fast: bool | None = True,
             stock: bool = False, batch_mode: str = "union", mask_seed: int = 0,
             thresholds: list[float] | None = None, calibration_texts: list[str] | None = None,
             griffin_reference: bool = False) -> GenerationResult:
    """Generate from ``prompts`` with a sparse FFN at every decode step (see the module docstring).

    ``stock=True`` is plain Hugging Face ``generate`` with no override at all (the baseline a
    user has today); ``fast`` routes fp32 CPU linears through oneDNN when the probe agrees.
    ``griffin_reference``: GRIFFIN exactly as its reference code (BOS in the statistic, k rounded down).
    """
    from transformers import GenerationConfig, LogitsProcessorList

    check_method(method)
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise BadInput("no prompts given")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise BadInput(f"max-new-tokens must be an integer >= 1, got {max_new_tokens}")
    if density is not None:
        check_density(density)
    if stock and method != "dense":
        raise BadInput("stock generation is dense only")
    input_ids, attn, prompt_ids = encode_batch(lm, list(prompts), max_new_tokens)
    from tda.activations.budget import check_generation

    check_generation(lm, int(input_ids.shape[1]), max_new_tokens, batch=len(prompts))  # before any work
    session = None if stock else SparseSession(
        lm, method, density=density, cett=cett, thresholds=thresholds, fast=fast, batch_mode=batch_mode,
        seed=mask_seed, calibration_texts=calibration_texts, griffin_reference=griffin_reference)
    clock = _StepClock(session if session is not None and method != "dense" else None, lm.device)
    stops = stop_ids(lm, stop_token_ids)
    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens or 0, do_sample=bool(do_sample),
        temperature=float(temperature) if do_sample else None, top_p=float(top_p) if do_sample else None,
        top_k=int(top_k) if do_sample else None, eos_token_id=stops or None, pad_token_id=_pad_id(lm),
        use_cache=True,
    )
    ctx = session.active() if session is not None else contextlib.nullcontext()
    rng = torch.random.fork_rng(devices=[lm.device] if lm.device.type == "cuda" else []) if seed is not None \
        else contextlib.nullcontext()
    with rng, ctx, torch.inference_mode():
        if seed is not None:
            torch.manual_seed(int(seed))
        if session is not None:
            session.begin(input_ids, attn)
        _sync(lm.device)
        t0 = time.perf_counter()
        out = lm.model.generate(input_ids=input_ids, attention_mask=attn, generation_config=cfg,
                                logits_processor=LogitsProcessorList([clock]))
        _sync(lm.device)
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
        "batch": len(prompts),
    }
    dens, per = session.densities() if session is not None else (1.0, [[1.0] * lm.ffn.n_layers] * len(prompts))
    params = {"density": density, "cett": cett, "fast": bool(session.fast) if session else False, "stock": stock,
              "batch_mode": batch_mode, "do_sample": bool(do_sample), "seed": seed,
              "max_new_tokens": max_new_tokens, "model_id": lm.model_id, "dtype": str(lm.dtype).replace("torch.", ""),
              "device": str(lm.device)}
    return GenerationResult(texts, token_ids, prompt_ids, method, dens, per, timings, params)
