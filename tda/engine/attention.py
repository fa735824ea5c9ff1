"""A leaner decode-step attention: one fused ``scaled_dot_product_attention`` call per layer.

Hugging Face's eager attention runs, per layer and decode step, ``repeat_kv`` (copies of K and V
for grouped heads), two matmuls, a mask add, an fp32 softmax, a dropout call, a transpose and a
copy — ~10 small ops and 4–5 parallel regions, plus the attention-interface plumbing. For one
query position with no padding (every key visible, except beyond a sliding window) the same
result is ``F.scaled_dot_product_attention(q, k, v, scale, enable_gqa=True)`` over the cached keys
(the last ``sliding_window`` of them in sliding layers): one op, one parallel region. The
projections and q/k norms still go through their modules, so every method's overrides and the
fast dense path apply as before.

:func:`fused_step` is that computation for a per-module :func:`step_plan` (the lean decoder stack
of :mod:`tda.engine.decoder` calls it directly); :func:`decode_attention` is the override
(:func:`tda.models.dispatch.attention_override`); it
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


def fusable(mod) -> bool:
    """The module's decode step can be one fused SDPA: not training, no logit soft-capping, no
    attention sinks, a known rotary function, a torch whose SDPA takes ``enable_gqa``."""
    return (not getattr(mod, "training", False) and getattr(mod, "attn_logit_softcapping", None) is None
            and getattr(mod, "sinks", None) is None and _rotary(mod) is not None and _sdpa_takes_gqa())


_CPP_DTYPES = (torch.float32, torch.bfloat16)  # what the C++ rope_qk / decode_attention take


@functools.cache
def cpp_attention(rope):
    """The C++ ops ``torch.ops.tda_kernels`` when they exist and their ``rope_qk`` gives exactly
    what the modeling file's ``rope`` gives (checked once per function, fp32 and bf16, on random
    inputs: a rotary of another form — partial, interleaved — fails it), else None."""
    from tda.engine import kernels

    ops = kernels.cpp_ops()
    if ops is None or not hasattr(ops, "rope_qk") or rope is None:
        return None
    g = torch.Generator().manual_seed(0)
    for dt in _CPP_DTYPES:
        q, k = torch.randn(2, 1, 4, 16, generator=g).to(dt), torch.randn(2, 1, 2, 16, generator=g).to(dt)
        ang = torch.randn(2, 1, 8, generator=g).repeat(1, 1, 2)
        cos, sin = ang.cos().to(dt), ang.sin().to(dt)
        try:
            want = rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        except Exception:  # noqa: BLE001 - a rotary with another signature: not ours to replace
            return None
        got = ops.rope_qk(q, k, cos, sin)
        if not all(torch.equal(a, b) for a, b in zip(got, want)):
            return None
    return ops


def step_plan(mod) -> tuple:
    """What :func:`fused_step` reads of an attention module (looked up once: ``nn.Module`` attribute
    access is slow): ``(q, k, v, o, q_norm, k_norm, head_dim, layer_idx, scaling, rotary, window,
    ops)`` — ``ops``: the C++ rotary and attention (:func:`cpp_attention`) or None."""
    window = getattr(mod, "sliding_window", None)
    if window is None and type(mod).__name__.startswith("Mistral"):
        window = getattr(mod.config, "sliding_window", None)
    q_norm = getattr(mod, "q_norm", None)
    rope = _rotary(mod)
    return (mod.q_proj, mod.k_proj, mod.v_proj, mod.o_proj, q_norm, mod.k_norm if q_norm is not None else None,
            mod.head_dim, mod.layer_idx, mod.scaling, rope, window, cpp_attention(rope))


def qk_norm_args(q_fn, k_fn, dtype: torch.dtype) -> tuple | None:
    """``(wq, eps_q, wk, eps_k, round_normed)`` for ``rope_qk`` when both q/k norm functions are the
    fast path's fused RMSNorms (:func:`tda.engine.fastpath.norm_fn` tags them ``tda_norm``) for
    ``dtype`` with one rounding mode, else None (the norms are called as they are)."""
    sq, sk = getattr(q_fn, "tda_norm", None), getattr(k_fn, "tda_norm", None)
    if sq is None or sk is None or sq[3] is not dtype or sk[3] is not dtype or sq[2] != sk[2]:
        return None
    return sq[0], sq[1], sk[0], sk[1], sq[2]


def fused_step(plan: tuple, hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache, call=None,
               qk_norms: tuple | None = None):
    """The attention output ``y[B, 1, d_model]`` of one decode position for a :func:`step_plan`;
    ``call(submodule, x)`` runs the projections and q/k norms (default: the module call;
    :mod:`tda.engine.decoder` passes its direct override lookup).

    fp32/bf16 on CPU with the C++ kernels: the rotary is one ``rope_qk`` call — with the q/k norms
    inside it when ``qk_norms`` (:func:`qk_norm_args`) says they are the fused RMSNorms — and the
    attention one ``decode_attention`` call (fp32 softmax and accumulation; it writes ``y`` already
    in the ``[B, 1, heads * head_dim]`` layout the output projection takes); otherwise the modeling
    file's rotary and ``scaled_dot_product_attention``."""
    q_proj, k_proj, v_proj, o_proj, q_norm, k_norm, hd, layer_idx, scaling, rope, window, ops = plan
    c = call if call is not None else _module_call
    B, T, _ = hidden_states.shape
    q = c(q_proj, hidden_states).view(B, T, -1, hd)
    k = c(k_proj, hidden_states).view(B, T, -1, hd)
    v = c(v_proj, hidden_states).view(B, T, -1, hd).transpose(1, 2)
    cpp = (ops is not None and T == 1 and q.is_cpu and q.dtype in _CPP_DTYPES and q.dtype == cos.dtype
           and q.is_contiguous() and k.is_contiguous() and cos.is_contiguous() and sin.is_contiguous())
    norms = qk_norms if q_norm is not None and cpp and qk_norms is not None and qk_norms[0].shape[0] == hd else ()
    if q_norm is not None and not norms:
        q, k = c(q_norm, q), c(k_norm, k)
        cpp = cpp and q.is_contiguous() and k.is_contiguous()
    if cpp:
        q, k = ops.rope_qk(q, k, cos, sin, *norms)
        k, v = cache.update(k, v, layer_idx)
        return c(o_proj, ops.decode_attention(q, k, v, scaling, window or 0))
    q, k = rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    k, v = cache.update(k, v, layer_idx)
    if window is not None and k.shape[-2] > window:
        k, v = k[:, :, -window:], v[:, :, -window:]
    y = F.scaled_dot_product_attention(q, k, v, scale=scaling, enable_gqa=k.shape[1] != q.shape[1])
    return c(o_proj, y.transpose(1, 2).reshape(B, T, -1))


def decode_attention(mod, hidden_states=None, position_embeddings=None, attention_mask=None, cache=None,
                     **kwargs):
    """The attention output ``(y[B, 1, d_model], None)`` of one decode position, or None to defer
    to the module's own forward."""
    if hidden_states is None or hidden_states.dim() != 3 or hidden_states.shape[1] != 1:
        return None
    if cache is None:
        cache = kwargs.get("past_key_values")
    if cache is None or position_embeddings is None or not fusable(mod):
        return None
    cos, sin = position_embeddings
    return fused_step(step_plan(mod), hidden_states, cos, sin, cache), None
