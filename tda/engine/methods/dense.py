"""``dense``: every linear computed in full (the baseline every speedup is measured against)."""

from __future__ import annotations

from tda.engine.methods.base import Method


class Dense(Method):
    name = "dense"
    kind = "dense"
    summary = "every neuron, every linear (our fast dense path)"
