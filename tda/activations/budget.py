"""Memory estimates of forwards, captures and generations, checked against the budget up front.

Eager attention materialises ``[heads, queries, keys]`` scores (float32 softmax, plus the additive
masks), so one forward of ``T`` tokens needs ``~(2·heads + 2)·T²·4`` bytes in its attention
alone — 14 GB and more for a 30,000-word prompt on Gemma 3 270M. Capture therefore runs long
prompts in chunks of ``C`` tokens through the KV cache (exact for causal attention): the scores
shrink to ``C × T``. :func:`capture_plan` picks the largest chunk that fits the budget
(:mod:`tda.common.memory`) and refuses, with one line, what does not fit at any chunk size.

All estimates are upper-leaning sums of the big buffers (weights, KV cache, activations,
results, the attention and FFN working set of one forward); Python and the libraries themselves
(~0.5 GB) are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from tda.common import memory
from tda.models.specs import ModelShape, shape_of_model

SINGLE_PASS_MAX = 1024  # prompts up to this many tokens run in one forward when they fit
CHUNKS = (1024, 512, 256, 128, 64, 32, 16)  # chunk sizes tried for longer prompts, largest first
ROW_BATCHES = (4096, 1024, 256, 64, 16, 4, 1)  # isolated mode: [BOS, token] rows per forward
FLOAT = 4


def weights_bytes(lm) -> int:
    """Bytes of a loaded model's parameters (tied weights counted once)."""
    return sum(p.numel() * p.element_size() for p in lm.model.parameters())


def shape_and_width(lm) -> tuple[ModelShape, int]:
    return shape_of_model(lm.model), next(lm.model.parameters()).element_size()


def _kv_len(shape: ModelShape, layer: int, kv: int, q: int) -> int:
    w = shape.windows[layer] if layer < len(shape.windows) else None
    return kv if w is None else min(kv, w + q)


def kv_cache_bytes(shape: ModelShape, n_tokens: int, layers_run: int, width: int, batch: int = 1) -> int:
    """The KV cache of ``n_tokens`` positions in the first ``layers_run`` layers."""
    per = 2 * shape.n_kv_heads * shape.head_dim * width * batch
    return sum(per * _kv_len(shape, L, n_tokens, 0) for L in range(min(layers_run, shape.n_layers)))


def forward_bytes(shape: ModelShape, *, q: int, kv: int, layers_run: int, width: int, batch: int = 1) -> int:
    """Working set of one eager forward of ``q`` new positions attending to ``kv`` positions."""
    kv_eff = max((_kv_len(shape, L, kv, q) for L in range(min(layers_run, shape.n_layers))), default=q)
    H = shape.n_heads
    attn = batch * (2 * H + 2) * q * kv_eff * FLOAT  # scores, softmax (float32) and the additive masks
    repeat = batch * 2 * H * kv_eff * shape.head_dim * width  # K and V expanded to every head
    qkv = batch * q * (H + 2 * shape.n_kv_heads) * shape.head_dim * width * 2
    ffn = batch * q * shape.d_ff * width * 4  # gate, up, act(gate), a
    hidden = batch * q * shape.d_model * width * 8
    return attn + repeat + qkv + ffn + hidden


@dataclass(frozen=True)
class Plan:
    """How a job will run: ``chunk`` tokens (or rows) per forward and its estimated peak bytes."""

    chunk: int
    need: int


def capture_plan(lm, n_tokens: int, n_out_tokens: int, layers: list[int], *, mode: str = "sequence",
                 backend: str = "hooks") -> Plan:
    """The chunk size (tokens per forward; rows for ``isolated``) that keeps a capture in budget.

    Raises a one-line BadInput naming the estimate and the budget when nothing fits.
    """
    shape, width = shape_and_width(lm)
    base = weights_bytes(lm) + len(layers) * n_out_tokens * shape.d_ff * FLOAT  # model + result
    run = max(layers) + 1
    what = f"capturing {len(layers)} layer(s) of a {n_tokens}-token prompt"
    if mode == "isolated":
        b = memory.budget().bytes
        seq = n_tokens - n_out_tokens + 1  # [BOS, token] or [token]
        for rows in (n_out_tokens, *[r for r in ROW_BATCHES if r < n_out_tokens]):
            need = base + forward_bytes(shape, q=seq, kv=seq, layers_run=run, width=width, batch=rows) \
                + len(layers) * rows * seq * shape.d_ff * width
            if need <= b:
                return Plan(rows, need)
        memory.check(need, what)
    if backend == "tl":  # TransformerLens: a copy of the model and one whole forward, cached hooks
        need = 2 * weights_bytes(lm) + len(layers) * n_out_tokens * shape.d_ff * (FLOAT + width) \
            + forward_bytes(shape, q=n_tokens, kv=n_tokens, layers_run=run, width=width)
        memory.check(need, what + " through TransformerLens (use --backend hooks: it works in chunks)")
        return Plan(n_tokens, need)

    def need_of(c: int) -> int:
        cache = 0 if c >= n_tokens else kv_cache_bytes(shape, n_tokens, run, width) * 2  # cat() copies
        return base + cache + forward_bytes(shape, q=c, kv=n_tokens, layers_run=run, width=width)

    return pick_chunk(n_tokens, need_of, what)


def chunk_sizes(n_tokens: int) -> list[int]:
    """Tokens per forward to try for a ``n_tokens`` sequence, largest first: the whole sequence when
    it is at most :data:`SINGLE_PASS_MAX`, then the :data:`CHUNKS` below it."""
    return ([n_tokens] if n_tokens <= SINGLE_PASS_MAX else []) + [c for c in CHUNKS if c < n_tokens] or [n_tokens]


def pick_chunk(n_tokens: int, need_of, what: str) -> Plan:
    """The largest of :func:`chunk_sizes` whose ``need_of(chunk)`` bytes fit the budget; a one-line
    BadInput naming ``what`` when none does. Capture and generation's prefill share it."""
    b = memory.budget().bytes
    cands = chunk_sizes(n_tokens)
    need = 0
    for c in cands:
        need = need_of(c)
        if need <= b:
            return Plan(c, need)
    memory.check(need, what)
    return Plan(cands[-1], need)  # pragma: no cover - check() raised


def generation_bytes(lm, prompt_tokens: int, new_tokens: int, *, batch: int = 1, capture_layers: int = 0,
                     logits_rows: int = 1, chunk: int | None = None) -> int:
    """Peak bytes of a dense prefill of ``prompt_tokens`` (``chunk`` tokens per forward; default one
    forward, all layers) and a decode of ``new_tokens``: weights, KV cache, the prefill's working
    set, ``logits_rows`` rows of logits per sequence, and (``capture_layers``) the recorded
    activations of the prompt and decode steps."""
    shape, width = shape_and_width(lm)
    return _generation_bytes(shape, width, weights_bytes(lm), prompt_tokens, new_tokens, batch=batch,
                             capture_layers=capture_layers, logits_rows=logits_rows, chunk=chunk)


def _generation_bytes(shape: ModelShape, width: int, weights: int, prompt_tokens: int, new_tokens: int, *,
                      batch: int = 1, capture_layers: int = 0, logits_rows: int = 1, chunk: int | None = None) -> int:
    T = prompt_tokens + new_tokens
    q = min(chunk or prompt_tokens, prompt_tokens)
    need = weights + kv_cache_bytes(shape, T, shape.n_layers, width, batch) * 2
    need += forward_bytes(shape, q=q, kv=prompt_tokens, layers_run=shape.n_layers, width=width, batch=batch)
    need += batch * logits_rows * shape.vocab * FLOAT * 3  # logits, (log-)softmax, a copy
    need += capture_layers * T * shape.d_ff * FLOAT * 2  # per-call records and the stacked result
    return need


def _what(prompt_tokens: int, new_tokens: int, batch: int) -> str:
    return f"generating {new_tokens} tokens after a {prompt_tokens}-token prompt" + (
        f" (batch of {batch})" if batch > 1 else "")


def check_generation(lm, prompt_tokens: int, new_tokens: int, *, batch: int = 1, capture_layers: int = 0,
                     logits_rows: int = 1, what: str | None = None) -> int:
    """:func:`generation_bytes` of a one-forward prefill against the budget: a one-line BadInput
    when it does not fit."""
    need = generation_bytes(lm, prompt_tokens, new_tokens, batch=batch, capture_layers=capture_layers,
                            logits_rows=logits_rows)
    memory.check(need, what or _what(prompt_tokens, new_tokens, batch))
    return need


def prefill_plan(lm, prompt_tokens: int, new_tokens: int, *, batch: int = 1, capture_layers: int = 0,
                 what: str | None = None) -> Plan:
    """How many prompt tokens per forward a generation's prefill runs (:func:`pick_chunk`, as
    capture): the whole prompt up to :data:`SINGLE_PASS_MAX` tokens when it fits, else the
    largest chunk that keeps :func:`generation_bytes` within the budget; a one-line BadInput
    naming ``what`` when none does."""
    return pick_chunk(prompt_tokens, lambda c: generation_bytes(lm, prompt_tokens, new_tokens, batch=batch,
                                                                capture_layers=capture_layers, chunk=c),
                      what or _what(prompt_tokens, new_tokens, batch))


def check_batch(lm, rows: int, width_tokens: int, n_layers_out: int) -> int:
    """One padded batch of ``rows × width_tokens`` captured in ``n_layers_out`` layers, against the budget."""
    shape, width = shape_and_width(lm)
    need = weights_bytes(lm) + forward_bytes(shape, q=width_tokens, kv=width_tokens, layers_run=shape.n_layers,
                                             width=width, batch=rows)
    need += n_layers_out * rows * width_tokens * shape.d_ff * (width + FLOAT)
    memory.check(need, f"capturing a batch of {rows} texts of up to {width_tokens} tokens "
                       "(use a smaller batch size or shorter texts)")
    return need


def check_before_load(spec: str, dtype: str = "auto", *, new_tokens: int | None = None, batch: int = 1,
                      capture_all: bool = False, doing: str | None = None) -> int | None:
    """Refuse, before the model is loaded, work that cannot fit the budget whatever the input: the
    model's weights (:func:`tda.models.specs.weights_estimate`: the parameter count times the dtype's
    width, or a GGUF's size) and, for a generation of ``new_tokens`` (``batch`` prompts), its
    :func:`generation_bytes` after a one-token prompt (``capture_all``: recording every layer's
    activations, as recall does) — a lower bound of what the checks after the
    load count, so nothing they accept is refused here. A one-line BadInput in the same words as
    theirs (``doing`` names the work: default "generating N tokens"); returns the bytes estimated (None when the model's size cannot be known before loading:
    the checks after the load still run)."""
    from tda.models.specs import DTYPE_BYTES, known_shape, weights_estimate

    est = weights_estimate(spec, dtype)
    if est is None:
        return None
    weights, kind = est
    shape = known_shape(spec) if new_tokens is not None else None
    if shape is None:
        memory.check(weights, f"loading {spec} ({kind})", at_least=True, hint=memory.SMALLER)
        return weights
    width = 4 if str(dtype).startswith("gguf") else DTYPE_BYTES.get(str(dtype), 4)
    need = _generation_bytes(shape, width, weights, 1, new_tokens, batch=batch,
                             capture_layers=shape.n_layers if capture_all else 0)
    doing = doing or f"generating {new_tokens} tokens"
    memory.check(need, f"{doing} with {spec} ({kind}: {memory.format_bytes(weights)})",
                 at_least=True, hint=memory.SMALLER + (", fewer new tokens" if new_tokens else ""))
    return need
