"""Helpers shared by the pages that show captures."""

from __future__ import annotations

from tda.common.errors import BadInput


def layer_index(cap, layer: int) -> int:
    if layer not in cap.layers:
        raise BadInput(f"layer {layer} was not captured (layers {cap.layers[0]}..{cap.layers[-1]})")
    return cap.layers.index(layer)
