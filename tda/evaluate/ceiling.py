"""The roofline ceiling of FFN slicing: bytes read per decode step, dense vs sliced.

At batch 1 decoding is memory-bound, so a step's time is at best proportional to the bytes it
reads: every linear weight once (attention projections, FFN, lm_head; an embedding lookup
reads one row and is ignored) plus the KV cache of every layer. Slicing the FFN to density
``d`` reads ``d`` of the FFN bytes, so the best possible speedup is
``bytes_dense / bytes_sliced``. TT reads all FFN weights (ceiling 1.0).

More generally a method reads a fraction of each group of weights per decode step — a
*read fraction* ``{"ffn": f, "other": f, "lm_head": f}`` (the engine reports the fractions it
actually read over a decode in ``GenerationResult.params["read_fraction"]``; for an engine that
does not, :func:`default_read_fraction` derives them from the method and the density it ran at).
:func:`ceiling_from_read` turns one into bytes per step and a ceiling; the KV cache is always read
in full.
"""

from __future__ import annotations

from tda.engine import quant_kernels
from tda.engine.fastpath import linear_modules, module_weight
from tda.models.quant import QuantLinear


def _nbytes(t) -> int:
    return t.numel() * t.element_size()


def weight_bytes(lm) -> dict[str, int]:
    """Bytes of linear weights (+biases) read per decode step: ``ffn``, ``lm_head``, ``other``."""
    ffn = lm.ffn
    ffn_ids = {id(m) for L in range(ffn.n_layers) for m in (*ffn.in_modules(L), ffn.out_module(L))}
    head = lm.model.get_output_embeddings()
    out = {"ffn": 0, "lm_head": 0, "other": 0}
    seen: set[int] = set()
    for m in linear_modules(lm.model):
        if isinstance(m, QuantLinear):  # the quantized format: its integer tiles, file blocks or int8 repack
            key, n = (m.storage.data_ptr(), tuple(m.storage.shape)), quant_kernels.decode_nbytes(m)
        else:
            w = module_weight(m)
            key, n = (w.data_ptr(), tuple(w.shape)), _nbytes(w)
        if key in seen:
            continue
        seen.add(key)
        n += _nbytes(m.bias) if getattr(m, "bias", None) is not None else 0
        kind = "ffn" if id(m) in ffn_ids else "lm_head" if m is head else "other"
        out[kind] += n
    return out


def kv_bytes(lm, ctx: int) -> int:
    """Bytes of K and V read by one decode step at context length ``ctx`` (all layers)."""
    cfg = lm.model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n_layers = lm.ffn.n_layers
    n_heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    head_dim = getattr(cfg, "head_dim", None) or hidden // n_heads
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * n_layers
    elem = lm.dtype.itemsize if hasattr(lm.dtype, "itemsize") else 4
    total = 0
    for L in range(n_layers):
        span = min(ctx, window) if window and "sliding" in str(types[L]) else ctx
        total += 2 * n_kv * head_dim * span * elem
    return total


def ceiling(lm, density: float, prompt_tokens: int, new_tokens: int, *, method: str = "sliced") -> dict:
    """Bytes per decode step (averaged over the generation's contexts) and the best speedup.

    ``method="tt"`` keeps every FFN byte (ceiling 1.0).
    """
    w = weight_bytes(lm)
    ctxs = range(prompt_tokens, prompt_tokens + max(new_tokens - 1, 1))
    kv = sum(kv_bytes(lm, c) for c in ctxs) / len(ctxs)
    dense = w["ffn"] + w["lm_head"] + w["other"] + kv
    ffn_read = w["ffn"] if method == "tt" else w["ffn"] * density
    sliced = ffn_read + w["lm_head"] + w["other"] + kv
    return {
        "weight_bytes": w, "kv_bytes_per_step": kv, "dense_bytes_per_step": dense,
        "sliced_bytes_per_step": sliced, "density": density,
        "ceiling_speedup": dense / sliced,
        "ceiling_speedup_weights_only": (dense - kv) / (sliced - kv),
    }


GROUPS = ("ffn", "other", "lm_head")
# methods that decode with physically sliced FFN weights (they read ``density`` of the FFN bytes)
SLICED = ("griffin", "tda", "static", "random")


def default_read_fraction(method: str, density: float | None) -> dict[str, float]:
    """Read fractions when the engine reports none: a sliced method (or a combination containing
    one, ``griffin+tt``) reads ``density`` of the FFN bytes; ``dense``, ``stock``, ``tt`` and any
    other token-wise method are assumed to read every byte (a conservative ceiling of 1)."""
    parts = str(method).split("+")
    ffn = 1.0
    if density is not None and density == density and any(p in SLICED for p in parts):
        ffn = min(max(float(density), 0.0), 1.0)
    return {"ffn": ffn, "other": 1.0, "lm_head": 1.0}


def read_fraction_of(method: str, density: float | None, params: dict | None = None) -> dict[str, float]:
    """The read fractions of one generation: ``params["read_fraction"]`` when the engine gave it
    (missing groups count as fully read), else :func:`default_read_fraction`."""
    given = (params or {}).get("read_fraction")
    if isinstance(given, dict) and given:
        out = {g: 1.0 for g in GROUPS}
        for g in GROUPS:
            v = given.get(g)
            if isinstance(v, (int, float)) and v == v:
                out[g] = float(v)
        return out
    return default_read_fraction(method, density)


def mean_read_fraction(fractions: list[dict[str, float]]) -> dict[str, float]:
    """Group-wise mean of several runs' read fractions."""
    if not fractions:
        return {g: 1.0 for g in GROUPS}
    return {g: sum(f.get(g, 1.0) for f in fractions) / len(fractions) for g in GROUPS}


def ceiling_from_read(lm, read_fraction: dict[str, float], prompt_tokens: int, new_tokens: int, *,
                      weights: dict[str, int] | None = None) -> dict:
    """Bytes per decode step when each weight group is read at ``read_fraction`` (KV cache in full,
    averaged over the generation's contexts) and the ceiling ``dense bytes / these bytes``.

    ``weights``: :func:`weight_bytes` of ``lm`` when already computed.
    """
    w = weights if weights is not None else weight_bytes(lm)
    ctxs = range(prompt_tokens, prompt_tokens + max(new_tokens - 1, 1))
    kv = sum(kv_bytes(lm, c) for c in ctxs) / len(ctxs)
    rf = {g: float(read_fraction.get(g, 1.0)) for g in GROUPS}
    dense = sum(w[g] for g in GROUPS) + kv
    read = sum(w[g] * rf[g] for g in GROUPS) + kv
    return {"read_fraction": rf, "weight_bytes": w, "kv_bytes_per_step": kv, "dense_bytes_per_step": dense,
            "bytes_per_step": read, "ceiling_speedup": dense / read if read > 0 else float("inf")}


MIN_CEILING_GAIN = 0.01  # a ceiling within 1% of dense has no gain to share out: its share is nan


def fraction_of_gain(measured_speedup: float, ceiling_speedup: float) -> float:
    """How much of the ceiling's gain was reached: ``(s - 1) / (c - 1)``; nan when the ceiling is
    within :data:`MIN_CEILING_GAIN` of dense (nearly every byte read: the ratio of two small numbers
    would be noise, e.g. 2419% for a 1.063× speedup under a 1.003× ceiling)."""
    if ceiling_speedup <= 1.0 + MIN_CEILING_GAIN:
        return float("nan")
    return (measured_speedup - 1.0) / (ceiling_speedup - 1.0)
