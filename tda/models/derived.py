"""Values derived from a loaded model's fixed weights, computed once and kept on their module.

Scoring builds a method once per passage; what only the weights decide (a weight's column sums,
the ``static`` method's slices) must not be recomputed each time. ``derived(module, key, fn)``
runs ``fn()`` the first time and keeps the result on ``module`` (an attribute outside its
parameters and buffers: not in its ``state_dict``), so it is freed with the model and never shared
between two models. Inference only: a weight changed in place would not refresh it — put what the
value depends on (a layout's strides, a density) into ``key``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

import torch

T = TypeVar("T")
_SLOT = "_tda_derived"


def derived(module: torch.nn.Module, key: Hashable, fn: Callable[[], T]) -> T:
    """``fn()``, computed once per ``(module, key)``."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"derived values live on a torch.nn.Module, got {type(module).__name__}")
    store = module.__dict__.setdefault(_SLOT, {})
    if key not in store:
        store[key] = fn()
    return store[key]
