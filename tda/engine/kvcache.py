"""A KV cache that writes each step in place instead of concatenating.

Hugging Face's ``DynamicLayer.update`` runs ``torch.cat([keys, new])`` at every step: each decode
step copies the whole cache of every full-attention layer (at a 12k-token prompt on Gemma 3 270M,
~25 MB per such layer per step). :class:`PreallocatedLayer` holds buffers of a known capacity
(prompt + new tokens) and copies only the new positions into them; ``keys``/``values`` are views
of the filled prefix, so every other cache method (length, crop, batch selection) works unchanged.
Sliding-window layers get a ring written in place (:class:`SlidingRingLayer`). A decode step's
write is one C++ call on CPU (``kv_write``, tda/engine/csrc/kv_cache.h) and two views; the layers
know the step is theirs to take when ``keys`` is still the view they last set (anything that
replaced it — a crop, a batch selection — sends the update through the general path). Same values
as the dynamic cache, so results are identical.
"""

from __future__ import annotations

import torch

from tda.engine.kernel_build import _ops


def _write(kbuf: torch.Tensor, vbuf: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: int) -> None:
    """``kbuf[:, :, pos] = k[:, :, 0]`` and the same for values: one C++ call on CPU
    (``kv_write``), else two slice copies."""
    ops = _ops() if kbuf.device.type == "cpu" else None
    if ops is not None and hasattr(ops, "kv_write"):
        ops.kv_write(kbuf, vbuf, k, v, pos)
    else:
        kbuf[:, :, pos:pos + 1].copy_(k)
        vbuf[:, :, pos:pos + 1].copy_(v)


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
            self._kbuf = self._vbuf = self._kview = None  # _kview: the prefix view this layer last set as keys

        def _fits(self, k: torch.Tensor, need: int) -> bool:
            buf = self._kbuf
            if buf is None or buf.shape[-2] < need or buf.dtype != k.dtype or buf.device != k.device:
                return False
            if buf.shape[0] != k.shape[0] or buf.shape[1] != k.shape[1] or buf.shape[-1] != k.shape[-1]:
                return False
            n = self.keys.shape[-2] if self.keys is not None and self.keys.dim() == 4 else 0
            return n == 0 or self.keys.data_ptr() == buf.data_ptr()  # still a prefix view of the buffer

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            kb = self._kbuf
            if (key_states.shape[-2] == 1 and kb is not None and self.keys is self._kview
                    and self._kview.shape[2] < kb.shape[2] and key_states.dtype == kb.dtype):  # a decode step
                n = self._kview.shape[2]
                _write(kb, self._vbuf, key_states, value_states, n)
                n += 1
                self.keys = self._kview = kb.narrow(2, 0, n)
                self.values = self._vbuf.narrow(2, 0, n)
                return self.keys, self.values
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
            self._kview = self.keys
            return self.keys, self.values

    PreallocatedLayer = _PreallocatedLayer
    return PreallocatedLayer


PreallocatedLayer = None
SlidingRingLayer = None


def sliding_layer_class():
    """:class:`SlidingRingLayer`, defined on first use (transformers imported lazily)."""
    global SlidingRingLayer
    if SlidingRingLayer is not None:
        return SlidingRingLayer
    from transformers.cache_utils import DynamicSlidingWindowLayer

    class _SlidingRingLayer(DynamicSlidingWindowLayer):
        """``DynamicSlidingWindowLayer`` whose one-token updates write in place: buffers of
        ``2 * window - 1`` positions hold the last ``window - 1`` keys (and values) as a moving view;
        when the end is reached the kept ``window - 1`` move to the front (one copy every ``window``
        steps). Hugging Face's ``update`` concatenates the whole window at every step (at
        Gemma 3's 512-token window: ~1 MB copied per sliding layer per step). Everything else —
        prefill chunks, ``record_past``, ``crop`` — is the parent's; the buffers are (re)filled from
        its tensors whenever they no longer are a view of them."""

        def __init__(self, sliding_window: int, **kwargs):
            super().__init__(sliding_window, **kwargs)
            self._kbuf = self._vbuf = self._kview = None
            self._start = self._end = 0

        def _synced(self, k: torch.Tensor) -> bool:
            """``keys`` is still the view this layer last set (nothing replaced it), of ``k``'s dtype."""
            return self._kbuf is not None and self.keys is self._kview and self._kbuf.dtype == k.dtype

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if key_states.shape[-2] != 1 or self.record_past or not self.is_initialized:
                return super().update(key_states, value_states, *args, **kwargs)
            w = self.sliding_window
            if not self._synced(key_states):
                n = self.keys.shape[-2] if self.keys.dim() == 4 else 0
                shape = (*key_states.shape[:2], 2 * w - 1, key_states.shape[-1])
                self._kbuf = key_states.new_empty(shape)
                self._vbuf = value_states.new_empty((*value_states.shape[:2], 2 * w - 1, value_states.shape[-1]))
                if n:
                    self._kbuf[:, :, :n].copy_(self.keys)
                    self._vbuf[:, :, :n].copy_(self.values)
                self._start, self._end = 0, n
            kb, vb = self._kbuf, self._vbuf
            if self._end == kb.shape[-2]:  # full: the last window - 1 positions move to the front
                n = self._end - self._start
                kb[:, :, :n].copy_(kb[:, :, self._start:self._end])
                vb[:, :, :n].copy_(vb[:, :, self._start:self._end])
                self._start, self._end = 0, n
            _write(kb, vb, key_states, value_states, self._end)
            self._end = end = self._end + 1
            self.cumulative_length += 1
            start = self._start
            full_k, full_v = kb.narrow(2, start, end - start), vb.narrow(2, start, end - start)
            self._start = start = max(start, end - (w - 1))
            self.keys = self._kview = kb.narrow(2, start, end - start)
            self.values = vb.narrow(2, start, end - start)
            return full_k, full_v

    SlidingRingLayer = _SlidingRingLayer
    return SlidingRingLayer


def new_cache(lm, capacity: int):
    """``lm.new_cache()`` with every full-attention layer preallocated for ``capacity`` positions
    (it grows, by doubling, if more come) and every sliding-window layer written in place
    (:class:`SlidingRingLayer`). Caches whose layers are created lazily (older transformers, no
    config) are returned as they are."""
    cache = lm.new_cache()
    layers = getattr(cache, "layers", None)
    if not layers:
        return cache
    base, cls = _layer_base(), preallocated_layer_class()
    sliding = None
    for i, layer in enumerate(layers):
        if type(layer) is base:
            layers[i] = cls(capacity)
        elif type(layer).__name__ == "DynamicSlidingWindowLayer" and getattr(layer, "sliding_window", 0) > 1:
            sliding = sliding or sliding_layer_class()
            layers[i] = sliding(layer.sliding_window)
    return cache
