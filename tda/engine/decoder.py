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
attention is :func:`tda.engine.attention.fused_step` (the fused SDPA of ``decode_attention``).
What a step reads of each layer (its modules, head dims, rotary, window) is looked up once per
model (:func:`_plan`): ``nn.Module`` attribute access costs ~0.3 µs a name. With forward hooks on
modules inside the layers (benchmarks/breakdown.py's timers) every module is called as a module,
so the hooks fire.

Kept because it is exact and faster: fp32 greedy tokens identical to stock HF on every tiny
Llama/Gemma-shaped family and Gemma 3 270M (tests/test_decode_step.py), and it removes the mask
creation and most of the per-layer Python of a decode step. It covers only the decoder-layer
classes listed in :data:`PRE_NORM` / :data:`SANDWICH` whose attention the lean attention takes;
anything else (padding, prefill, ``output_hidden_states``/``output_attentions``, forward hooks on
a decoder layer — they would not fire —, offloaded or dispatched models,
bidirectional Gemma, GPT-2/OPT) returns None and HF's own forward runs.
"""

from __future__ import annotations

import inspect
import weakref

import torch

from tda.engine.attention import (
    _sdpa_takes_gqa,
    decode_attention,
    fusable,
    fused_step,
    qk_norm_args,
    step_plan,
)
from tda.models.dispatch import attention_override, current_overrides

PRE_NORM = {"LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer"}
SANDWICH = {"Gemma3DecoderLayer"}  # post-attention and pre/post-feedforward norms too
GATED_MLP = {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP", "Gemma3MLP"}  # down(act(gate(x)) * up(x))
DIRECT_CALLS = True  # look each linear/norm up in the override table instead of calling the module
_HARMLESS = {"return_dict", "cache_position", "use_cache"}  # kwargs the lean stack may ignore

_PLAN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # base model -> plan or False


def _fits(model) -> bool:
    """Every layer of the base ``model`` is one of the covered shapes, on one device, with an
    attention the fused step takes."""
    layers, cfg = getattr(model, "layers", None), getattr(model, "config", None)
    if not layers or cfg is None or not _sdpa_takes_gqa() or len(layers) != cfg.num_hidden_layers:
        return False
    if not all(hasattr(model, n) for n in ("embed_tokens", "norm", "rotary_emb")):
        return False
    if getattr(cfg, "use_bidirectional_attention", False) or any(hasattr(m, "_hf_hook") for m in model.modules()):
        return False
    names = {type(layer).__name__ for layer in layers}
    if len(names) != 1 or not names <= PRE_NORM | SANDWICH:
        return False
    return all(hasattr(layer.self_attn, "layer_idx") and fusable(layer.self_attn) for layer in layers)


def _plan(model):
    """``(steps, layer_types, layer_hooks, inner_hooks, rotary)`` for a base model that :func:`_fits`, else False
    (cached per model): per layer ``(attention module, attention plan, input norm, post-attention
    norm, pre-FF norm or None, post-FF norm or None, mlp, (gate, up, down, act) or None)``; the
    layer types whose rotary tables Gemma 3 computes apart (empty: one table); the hook dicts of the
    decoder layers and of every module inside them (:func:`_hook_dicts`); the model's
    :class:`RotaryBlocks`."""
    plan = _PLAN.get(model)
    if plan is not None:
        return plan
    plan = False
    if _fits(model):
        layers = list(model.layers)
        per_type = "layer_type" in inspect.signature(model.rotary_emb.forward).parameters
        types = list(getattr(model.config, "layer_types", None) or []) if per_type else []
        if not per_type or len(types) == len(layers):
            steps = []
            for layer in layers:
                sandwich = type(layer).__name__ in SANDWICH
                m = layer.mlp
                gated = (m.gate_proj, m.up_proj, m.down_proj, _act_call(m.act_fn)) if type(m).__name__ in GATED_MLP else None
                steps.append((layer.self_attn, step_plan(layer.self_attn), layer.input_layernorm, layer.post_attention_layernorm,
                              layer.pre_feedforward_layernorm if sandwich else None,
                              layer.post_feedforward_layernorm if sandwich else None, m, gated))
            inner = [m for layer in layers for m in layer.modules() if m is not layer]
            rotary = RotaryBlocks(model.rotary_emb, sorted(set(types)) if types else (None,))
            plan = (steps, types, _hook_dicts(layers), _hook_dicts(inner), rotary)
    _PLAN[model] = plan
    return plan


ROPE_BLOCK = 64  # positions whose rotary cos/sin one call computes ahead (batch 1)


class RotaryBlocks:
    """A batch-1 decode step's rotary ``(cos[1, 1, D], sin[1, 1, D])`` read from a block of the next
    :data:`ROPE_BLOCK` positions, computed in one call of the model's own rotary module (per layer
    type for Gemma 3): Hugging Face's rotary costs ~25 µs a call and Gemma 3 makes two per step. Its
    values are elementwise in the position (``cos(p * inv_freq) * scaling``), so a row of the block
    equals a one-position call; each new block is checked against one (its first row), and a
    mismatch — or a rotary whose frequencies move with the sequence length (dynamic, longrope) —
    turns the blocks off for the model."""

    def __init__(self, rotary, layer_types=(None,)):
        self.rotary = rotary
        self.layer_types = tuple(layer_types)  # the rotary's tables: one per layer type (None: one table)
        kinds = getattr(rotary, "rope_type", "default")
        kinds = list(kinds.values()) if isinstance(kinds, dict) else [kinds]
        self.ok = all(isinstance(k, str) and "dynamic" not in k and "longrope" not in k for k in kinds)
        self.blocks: dict = {}

    def _call(self, h, ids, layer_type):
        return self.rotary(h, ids) if layer_type is None else self.rotary(h, ids, layer_type)

    def tables(self, h: torch.Tensor, position_ids: torch.Tensor) -> dict:
        """``{layer type: (cos, sin)}`` from the rotary module itself (one call per table)."""
        return {t: self._call(h, position_ids, t) for t in self.layer_types}

    def at(self, h: torch.Tensor, pos: int) -> dict | None:
        """``{layer type: (cos, sin)}`` at ``pos`` read from the blocks, or None (blocks off)."""
        out = {}
        for t in self.layer_types:
            cs = self.get(h, pos, t)
            if cs is None:
                return None
            out[t] = cs
        return out

    def get(self, h: torch.Tensor, pos: int, layer_type=None):
        """``(cos, sin)`` at position ``pos`` for ``h[1, 1, d]``, or None (blocks off)."""
        key = (layer_type, h.dtype, h.device)
        blk = self.blocks.get(key)
        if blk is None or not blk[0] <= pos < blk[0] + ROPE_BLOCK:
            ids = torch.arange(pos, pos + ROPE_BLOCK, device=h.device)[None]
            cos, sin = self._call(h, ids, layer_type)
            one = self._call(h, ids[:, :1], layer_type)
            if not (torch.equal(cos[:, :1], one[0]) and torch.equal(sin[:, :1], one[1])):
                self.ok = False
                return None
            blk = self.blocks[key] = (pos, cos, sin)
        i = pos - blk[0]
        return blk[1][:, i:i + 1], blk[2][:, i:i + 1]


def _act_call(act):
    """The plain function behind an activation module (``GELUTanh.act``, ``F.silu`` for SiLU), when
    it gives exactly the module's output on a random input; else the module (``nn.Module.__call__``
    costs a few microseconds a call)."""
    import torch.nn.functional as F

    fn = getattr(act, "act", None) if type(act).__name__ in ("GELUTanh", "PytorchGELUTanh") else None
    if fn is None and type(act).__name__ in ("SiLU", "SiLUActivation") and not getattr(act, "inplace", False):
        fn = F.silu
    if fn is None or not callable(fn):
        return act
    x = torch.randn(64, generator=torch.Generator().manual_seed(0)) * 4
    return fn if all(torch.equal(fn(x.to(dt)), act(x.to(dt))) for dt in (torch.float32, torch.bfloat16)) else act


def _hook_dicts(modules) -> list:
    """The forward and forward-pre hook dicts of ``modules`` (``register_forward_hook`` adds to these
    same dict objects, so the plan can keep them), the global ones first."""
    from torch.nn.modules import module as M

    return [M._global_forward_hooks, M._global_forward_pre_hooks,
            *(d for m in modules for d in (m._forward_hooks, m._forward_pre_hooks))]


def _hooks_on(hook_dicts: list) -> bool:
    """Some forward (pre-)hook in ``hook_dicts`` (:func:`_hook_dicts`) that the lean stack would skip:
    one C-level pass over ~300 dicts per step (a Python generator over the modules took ~0.1 ms)."""
    return any(hook_dicts)


def _module_call(mod, x):
    return mod(x)


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
    steps, types, layer_hooks, inner_hooks, rotary = plan
    if _hooks_on(layer_hooks):  # forward hooks on a decoder layer: HF's forward runs them
        return None
    hooked = _hooks_on(inner_hooks)  # hooks inside the layers (a profiler): every module is called as a module
    table = current_overrides() if DIRECT_CALLS and not hooked else None
    if table:
        def call(mod, x, _get=table.get):
            fn = _get(id(mod))
            return fn(x) if fn is not None else mod(x)
    else:
        call = _module_call
    h = model.embed_tokens(input_ids)
    pe = None
    if position_ids is None:
        pos = cache.get_seq_length()
        if rotary.ok and input_ids.shape[0] == 1:  # batch 1: cos/sin from the next positions' block
            pe = rotary.at(h, pos)
        if pe is None:
            position_ids = torch.full_like(input_ids, pos)
    if pe is None:
        pe = rotary.tables(h, position_ids)
    per_layer = [pe[t] for t in types] if types else [pe[None]] * len(steps)
    residual = _residual(table, call)
    x = call(steps[0][2], h)  # the first layer's input norm; each later one comes fused with a residual add
    last = len(steps) - 1
    for i, ((attn_mod, attn, _, post_attn, pre_ff, post_ff, mlp, gated), (cos, sin)) in enumerate(zip(steps, per_layer)):
        if hooked:  # through the module (its hooks fire), computed by the same fused step
            with attention_override(decode_attention):
                a = attn_mod(hidden_states=x, position_embeddings=(cos, sin), cache=cache)[0]
        else:
            qn = attn[4]
            a = fused_step(attn, x, cos, sin, cache, call,
                           qk_norm_args(table.get(id(qn)), table.get(id(attn[5])), x.dtype) if qn is not None and table
                           else None)
        if pre_ff is not None:  # Gemma 3: norms before and after attention and MLP
            h, x = residual(h, a, post_attn, pre_ff)
        else:
            h, x = residual(h, a, None, post_attn)
        if gated is not None and table:  # the MLP's own forward, in its call order
            gate, up, down, act = gated
            x = call(down, act(call(gate, x)) * call(up, x))
        else:
            x = mlp(x)
        h, x = residual(h, x, post_ff, steps[i + 1][2] if i < last else model.norm)
    return BaseModelOutputWithPast(last_hidden_state=x, cache=cache)


def _residual(table, call):
    """``residual(h, a, n1, n2) -> (h', n2(h'))`` with ``h' = h + (n1(a) if n1 else a)``: one fused
    C++ call (``residual_norm``) when the override table runs both norms through the fast path's
    fused RMSNorm (:func:`tda.engine.fastpath.norm_fn`, which tags them ``tda_norm``) — the same
    roundings as the separate calls —, else the separate calls."""
    ops = None
    if table:
        from tda.engine import kernels

        ops = kernels.cpp_ops()
        if ops is not None and not hasattr(ops, "residual_norm"):
            ops = None

    def unfused(h, a, n1, n2):
        h = h + (call(n1, a) if n1 is not None else a)
        return h, call(n2, h)

    if ops is None:
        return unfused
    get = table.get

    def residual(h, a, n1, n2):
        s2 = getattr(get(id(n2)), "tda_norm", None)
        if s2 is not None and h.dtype is s2[3] and a.dtype is s2[3] and h.is_contiguous() and a.is_contiguous():
            if n1 is None:
                return ops.residual_norm(h, a, None, 0.0, s2[0], s2[1], s2[2])
            s1 = getattr(get(id(n1)), "tda_norm", None)
            if s1 is not None and s1[2] == s2[2] and s1[3] is s2[3]:
                return ops.residual_norm(h, a, s1[0], s1[1], s2[0], s2[1], s2[2])
        return unfused(h, a, n1, n2)

    return residual
