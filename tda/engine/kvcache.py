"""A KV cache that writes each step in place instead of concatenating.

Hugging Face's ``DynamicLayer.update`` runs ``torch.cat([keys, new])`` at every step: each decode
step copies the whole cache of every full-attention layer (at a 12k-token prompt on Gemma 3 270M,
~25 MB per such layer per step). :class:`PreallocatedLayer` holds buffers of a known capacity
(prompt + new tokens) and copies only the new positions into them; ``keys``/``values`` are views
of the filled prefix, so every other cache method (length, crop, batch selection) works unchanged.
Sliding-window layers keep Hugging Face's own (their window bounds the copy). Same values as the
dynamic cache, so results are identical.
"""

from __future__ import annotations

import torch


def _layer_base():
    from transformers.cache_utils import DynamicLayer

    return DynamicLayer


def preallocated_layer_class():
    """:class:`PreallocatedLayer`, defined on first use (transformers imported lazily)."""
    global PreallocatedLayer
    if PreallocatedLayer is not None:
        return PreallocatedLayer
    base = _layer_base()

    class _PreallocatedLayer(base):
        """``DynamicLayer`` with buffers ``[B, heads, capacity, head_dim]`` filled in place."""

        def __init__(self, capacity: int):
            super().__init__()
            self.capacity = int(capacity)
            self._kbuf = self._vbuf = None

        def _fits(self, k: torch.Tensor, need: int) -> bool:
            buf = self._kbuf
            if buf is None or buf.shape[-2] < need or buf.dtype != k.dtype or buf.device != k.device:
                return False
            if buf.shape[0] != k.shape[0] or buf.shape[1] != k.shape[1] or buf.shape[-1] != k.shape[-1]:
                return False
            n = self.keys.shape[-2] if self.keys is not None and self.keys.dim() == 4 else 0
            return n == 0 or self.keys.data_ptr() == buf.data_ptr()  # still a prefix view of the buffer

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            have = self.keys.shape[-2] if self.keys.dim() == 4 else 0
            need = have + key_states.shape[-2]
            if not self._fits(key_states, need):
                cap = max(self.capacity, 2 * need)
                shape = (*key_states.shape[:2], cap, key_states.shape[-1])
                kb = key_states.new_empty(shape)
                vb = value_states.new_empty((*value_states.shape[:2], cap, value_states.shape[-1]))
                if have:
                    kb[:, :, :have].copy_(self.keys)
                    vb[:, :, :have].copy_(self.values)
                self._kbuf, self._vbuf = kb, vb
            self._kbuf[:, :, have:need].copy_(key_states)
            self._vbuf[:, :, have:need].copy_(value_states)
            self.keys, self.values = self._kbuf[:, :, :need], self._vbuf[:, :, :need]
            return self.keys, self.values

    PreallocatedLayer = _PreallocatedLayer
    return PreallocatedLayer


PreallocatedLayer = None


def new_cache(lm, capacity: int):
    """``lm.new_cache()`` with every full-attention (non-sliding) layer preallocated for
    ``capacity`` positions (it grows, by doubling, if more come). Caches whose layers are created
    lazily (older transformers, no config) are returned as they are."""
    cache = lm.new_cache()
    layers = getattr(cache, "layers", None)
    if not layers:
        return cache
    base, cls = _layer_base(), preallocated_layer_class()
    for i, layer in enumerate(layers):
        if type(layer) is base:
            layers[i] = cls(capacity)
    return cache
