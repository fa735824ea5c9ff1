"""A leaner decode-step attention: one fused ``scaled_dot_product_attention`` call per layer.

Hugging Face's eager attention runs, per layer and decode step, ``repeat_kv`` (copies of K and V
for grouped heads), two matmuls, a mask add, an fp32 softmax, a dropout call, a transpose and a
copy — ~10 small ops and 4–5 parallel regions, plus the attention-interface plumbing. For one
query position with no padding (every key visible, except beyond a sliding window) the same
result is ``F.scaled_dot_product_attention(q, k, v, scale, enable_gqa=True)`` over the cached keys
(the last ``sliding_window`` of them in sliding layers): one op, one parallel region. The
projections and q/k norms still go through their modules, so every method's overrides and the
fast dense path apply as before.

:func:`decode_attention` is the override (:func:`tda.models.dispatch.attention_override`); it
returns None — HF's own forward runs — for anything but a single-position step of a Llama/Gemma
-shaped attention without logit soft-capping. fp32 results equal eager attention up to summation
order (tests: greedy tokens identical to stock HF on every tiny family and Gemma 3 270M).
"""

from __future__ import annotations

import functools
import sys

import torch
import torch.nn.functional as F


def _rotary(mod):
    """The ``apply_rotary_pos_emb`` of the module's own modeling file (cached on the class)."""
    cls = type(mod)
    fn = cls.__dict__.get("_tda_rotary")
    if fn is None:
        fn = getattr(sys.modules[cls.__module__], "apply_rotary_pos_emb", None)
        cls._tda_rotary = fn if fn is not None else False
    return fn or None


@functools.cache
def _sdpa_takes_gqa() -> bool:
    """``scaled_dot_product_attention`` takes ``enable_gqa`` (torch >= 2.5)."""
    try:
        q = torch.zeros(1, 2, 1, 4)
        F.scaled_dot_product_attention(q, q[:, :1], q[:, :1], enable_gqa=True)
        return True
    except TypeError:  # pragma: no cover - older torch: HF's attention runs
        return False


def _module_call(mod, x):
    return mod(x)


def decode_attention(mod, hidden_states=None, position_embeddings=None, attention_mask=None, cache=None,
                     call=None, **kwargs):
    """The attention output ``(y[B, 1, d_model], None)`` of one decode position, or None to defer
    to the module's own forward. ``call(submodule, x)`` runs the projections and q/k norms (default:
    the module call; :mod:`tda.engine.decoder` passes its direct override lookup)."""
    if hidden_states is None or hidden_states.dim() != 3 or hidden_states.shape[1] != 1:
        return None
    if cache is None:
        cache = kwargs.get("past_key_values")
    if cache is None or position_embeddings is None or getattr(mod, "training", False):
        return None
    if getattr(mod, "attn_logit_softcapping", None) is not None or getattr(mod, "sinks", None) is not None:
        return None
    rope = _rotary(mod)
    if rope is None or not _sdpa_takes_gqa():
        return None
    c = call if call is not None else _module_call
    B, T, _ = hidden_states.shape
    hd = mod.head_dim
    q = c(mod.q_proj, hidden_states).view(B, T, -1, hd)
    k = c(mod.k_proj, hidden_states).view(B, T, -1, hd)
    v = c(mod.v_proj, hidden_states).view(B, T, -1, hd).transpose(1, 2)
    if getattr(mod, "q_norm", None) is not None:
        q, k = c(mod.q_norm, q), c(mod.k_norm, k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    cos, sin = position_embeddings
    q, k = rope(q, k, cos, sin)
    k, v = cache.update(k, v, mod.layer_idx)
    window = getattr(mod, "sliding_window", None)
    if window is None and type(mod).__name__.startswith("Mistral"):
        window = getattr(mod.config, "sliding_window", None)
    if window is not None and k.shape[-2] > window:
        k, v = k[:, :, -window:], v[:, :, -window:]
    y = F.scaled_dot_product_attention(q, k, v, scale=mod.scaling, enable_gqa=k.shape[1] != q.shape[1])
    y = y.transpose(1, 2).reshape(B, T, -1)
    return c(mod.o_proj, y), None
