"""A lean decode-step decoder stack (issue 17, point 1): one Python loop over the layers, no HF
per-layer plumbing.

At a decode step (one new position, no padding) Hugging Face's base-model forward builds a causal
and a sliding-window mask that the fused attention of :mod:`tda.engine.attention` never reads,
passes every layer through its output-capturing decorators, ``GradientCheckpointingLayer.__call__``,
``deprecate_kwarg`` wrappers and the attention-interface plumbing. :func:`decode_stack` replaces
the base model's forward (:func:`tda.models.dispatch.decoder_override`) by the same computation
done directly: ``embed_tokens`` → rotary ``cos/sin`` once per step (per layer type for Gemma 3) →
per layer ``norm → attention → (post-norm) → residual → norm → MLP → (post-norm) → residual`` →
final norm. Each linear and norm inside the layers runs the function of this context's override
table (:func:`tda.models.dispatch.current_overrides`, looked up once per step) — exactly what its
instrumented forward would call, minus ``nn.Module.__call__`` and the wrapper — so every method's
overrides and the fast dense path apply unchanged; modules without an override are called as
modules. The gated MLPs of :data:`GATED_MLP` are computed inline in their own call order; the
attention is :func:`tda.engine.attention.decode_attention` called directly.

Kept because it is exact and faster: fp32 greedy tokens identical to stock HF on every tiny
Llama/Gemma-shaped family and Gemma 3 270M (tests/test_decode_step.py), and it removes the mask
creation and most of the per-layer Python of a decode step. It covers only the decoder-layer
classes listed in :data:`PRE_NORM` / :data:`SANDWICH` whose attention the lean attention takes;
anything else (padding, prefill, ``output_hidden_states``/``output_attentions``, forward hooks on
a decoder layer or attention module — they would not fire —, offloaded or dispatched models, bidirectional Gemma, GPT-2/OPT) returns None and HF's own forward runs.
"""

from __future__ import annotations

import inspect
import weakref

import torch

from tda.engine.attention import _rotary, _sdpa_takes_gqa, decode_attention
from tda.models.dispatch import current_overrides

PRE_NORM = {"LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer"}
SANDWICH = {"Gemma3DecoderLayer"}  # post-attention and pre/post-feedforward norms too
GATED_MLP = {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP", "Gemma3MLP"}  # down(act(gate(x)) * up(x))
DIRECT_CALLS = True  # look each linear/norm up in the override table instead of calling the module
_HARMLESS = {"return_dict", "cache_position", "use_cache"}  # kwargs the lean stack may ignore

_PLAN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # base model -> plan or False


def _plan(model):
    """``(layers, sandwich, layer_types, modules_whose_hooks_it_would_skip, gated_mlp)`` when every layer of the base ``model`` fits the lean stack,
    else False (cached per model)."""
    plan = _PLAN.get(model)
    if plan is not None:
        return plan
    plan = False
    layers = getattr(model, "layers", None)
    cfg = getattr(model, "config", None)
    ok = (layers is not None and len(layers) > 0 and cfg is not None and _sdpa_takes_gqa()
          and all(hasattr(model, n) for n in ("embed_tokens", "norm", "rotary_emb"))
          and not getattr(cfg, "use_bidirectional_attention", False)
          and not hasattr(model, "hf_device_map") and not any(hasattr(m, "_hf_hook") for m in model.modules()))
    if ok:
        names = {type(layer).__name__ for layer in layers}
        sandwich = names <= SANDWICH
        attns = [getattr(layer, "self_attn", None) for layer in layers]
        ok = (names <= PRE_NORM or sandwich) and len(names) == 1 and all(
            a is not None and hasattr(a, "layer_idx") and _rotary(a) is not None
            and getattr(a, "attn_logit_softcapping", None) is None and getattr(a, "sinks", None) is None
            for a in attns) and len(layers) == cfg.num_hidden_layers
        if ok:
            per_type = "layer_type" in inspect.signature(model.rotary_emb.forward).parameters
            types = list(getattr(cfg, "layer_types", None) or []) if per_type else []
            if per_type and len(types) != len(layers):
                ok = False
            else:
                hooked = [m for layer in layers for m in layer.modules()]
                gated = all(type(layer.mlp).__name__ in GATED_MLP for layer in layers)
                plan = (list(layers), sandwich, types, hooked, gated)
    _PLAN[model] = plan
    return plan


def _hooks_on(modules) -> bool:
    """Some forward (pre-)hook, on one of ``modules`` or global, that the lean stack would skip."""
    from torch.nn.modules import module as M

    if M._global_forward_hooks or M._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def decode_stack(model, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                 **kwargs):
    """The base model's output for one unpadded decode position (``last_hidden_state[B, 1, d]``),
    or None to defer to its own forward."""
    from transformers.modeling_outputs import BaseModelOutputWithPast

    if cache is None:
        cache = kwargs.pop("past_key_values", None)
    else:
        kwargs.pop("past_key_values", None)
    if (input_ids is None or inputs_embeds is not None or cache is None or input_ids.dim() != 2
            or input_ids.shape[1] != 1 or model.training or isinstance(attention_mask, dict)
            or any(v for k, v in kwargs.items() if k not in _HARMLESS) or kwargs.get("use_cache") is False):
        return None
    plan = _plan(model)
    if not plan:
        return None
    layers, sandwich, types, hooked, gated = plan
    if _hooks_on(hooked):  # forward hooks inside a decoder layer: HF's forward runs them
        return None
    table = current_overrides() if DIRECT_CALLS else None
    if table:
        def call(mod, x, _get=table.get):
            fn = _get(id(mod))
            return fn(x) if fn is not None else mod(x)
    else:
        def call(mod, x):
            return mod(x)

    def mlp(m, x):
        if gated and table:  # the MLP's own forward, in its order, with direct calls
            g = m.act_fn(call(m.gate_proj, x))
            return call(m.down_proj, g * call(m.up_proj, x))
        return m(x)
    h = model.embed_tokens(input_ids)
    if position_ids is None:
        position_ids = torch.full_like(input_ids, cache.get_seq_length())
    if types:
        pe = {t: model.rotary_emb(h, position_ids, t) for t in set(types)}
        per_layer = [pe[t] for t in types]
    else:
        per_layer = [model.rotary_emb(h, position_ids)] * len(layers)
    for layer, rope in zip(layers, per_layer):
        r = h
        a = decode_attention(layer.self_attn, hidden_states=call(layer.input_layernorm, h), position_embeddings=rope,
                             cache=cache, call=call)
        if a is None:  # pragma: no cover - _plan mirrors decode_attention's static conditions
            raise RuntimeError("lean decode stack: the fused attention declined a layer it was planned for")
        if sandwich:
            h = r + call(layer.post_attention_layernorm, a[0])
            h = h + call(layer.post_feedforward_layernorm, mlp(layer.mlp, call(layer.pre_feedforward_layernorm, h)))
        else:
            h = r + a[0]
            h = h + mlp(layer.mlp, call(layer.post_attention_layernorm, h))
    return BaseModelOutputWithPast(last_hidden_state=model.norm(h), cache=cache)
