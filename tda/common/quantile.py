"""``torch.quantile`` (linear interpolation) of a 1-D tensor by two selections instead of a sort.

The same value, bit for bit: the rank ``q·(n-1)`` is computed in the tensor's dtype as torch does,
the two neighbouring order statistics come from ``kthvalue`` (exact, O(n)), and ``torch.lerp``
interpolates them. About 3.5× faster than ``torch.quantile`` on the millions of prefill scores TT
fits its scale on per prompt.
"""

from __future__ import annotations

import torch

from tda.common.errors import BadInput


def quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(x, q)`` for a non-empty 1-D floating ``x[n]``, ``0 <= q <= 1`` (NaN if ``x``
    holds one, as torch's)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 1 or not x.numel() or not x.is_floating_point():
        raise BadInput("quantile needs a non-empty 1-D floating tensor")
    if not 0.0 <= float(q) <= 1.0:
        raise BadInput(f"quantile level must be in [0, 1], got {q}")
    if bool(x.isnan().any()):
        return x.new_tensor(float("nan"))
    rank = torch.tensor(float(q), dtype=x.dtype, device=x.device) * (x.numel() - 1)
    lo, hi = int(rank.floor()), int(rank.ceil())
    v_lo = x.kthvalue(lo + 1).values
    v_hi = v_lo if hi == lo else x.kthvalue(hi + 1).values
    return torch.lerp(v_lo, v_hi, rank - lo)
