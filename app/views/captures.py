"""Helpers shared by the pages that show captures."""

from __future__ import annotations

from tda.common.errors import BadInput


def layer_index(cap, layer: int) -> int:
    if layer not in cap.layers:
        raise BadInput(f"layer {layer} was not captured (layers {cap.layers[0]}..{cap.layers[-1]})")
    return cap.layers.index(layer)


def order_by_counts(counts):
    """Neuron ids sorted by ``counts[neuron]`` (how many tokens each fires for), most first, ties by id."""
    import torch

    counts = torch.as_tensor(counts).to(torch.int64)
    n = counts.numel()
    return torch.argsort(counts * n + (n - 1 - torch.arange(n)), descending=True)


def token_label(tokenizer, token_id: int) -> str:
    """One token as the app shows it everywhere: decoded on its own, a space as "␣", a newline as "⏎"."""
    return tokenizer.decode([int(token_id)]).replace(" ", "␣").replace("\n", "⏎")
