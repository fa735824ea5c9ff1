"""CETT — cumulative error of tail truncation — and the per-layer threshold search.

For one token of one layer, neuron ``i`` writes ``n_i = a_i · W_down[:, i]`` into the residual
stream, with norm ``‖n_i‖ = |a_i| · ‖W_down[:, i]‖``. Truncating the tail below ``t`` gives

    CETT(t) = ‖Σ_{i: ‖n_i‖ < t} n_i‖ / ‖Σ_i n_i‖,

averaged over calibration tokens. The layer threshold ``t_L`` is the largest ``t`` with mean
``CETT(t) ≤ target`` (0.2 by default), found by bisection. A neuron is then *active* for a token
when ``|a_i| ≥ t_L / ‖W_down[:, i]‖``.

All functions here are pure tensor maths: ``acts[token, neuron]`` and ``w_down[d_model, neuron]``.
"""

from __future__ import annotations

import torch

from tda.common.errors import BadInput

DEFAULT_CETT = 0.2


def check_target(target: float) -> float:
    if not isinstance(target, (int, float)) or not 0.0 < float(target) < 1.0:
        raise BadInput(f"CETT target must be in (0, 1), got {target}")
    return float(target)


def neuron_output_norms(acts: torch.Tensor, down_norms: torch.Tensor) -> torch.Tensor:
    """``‖n_i‖ = |a_i|·‖W_down[:, i]‖`` for ``acts[..., neuron]`` and ``down_norms[neuron]``."""
    return acts.abs() * down_norms


def cett_per_token(acts: torch.Tensor, w_down: torch.Tensor, threshold: float) -> torch.Tensor:
    """``CETT[token]`` of dropping every neuron with ``‖n_i‖ < threshold``.

    ``acts[token, neuron]``, ``w_down[d_model, neuron]``. Tokens whose full output is zero give 0.
    """
    acts = acts.float()
    w = w_down.float()
    norms = neuron_output_norms(acts, w.norm(dim=0))
    full = acts @ w.T
    tail = (acts * (norms < threshold)) @ w.T
    denom = full.norm(dim=-1)
    return torch.where(denom > 0, tail.norm(dim=-1) / denom.clamp_min(1e-30), torch.zeros_like(denom))


def mean_cett(acts: torch.Tensor, w_down: torch.Tensor, threshold: float) -> float:
    return float(cett_per_token(acts, w_down, threshold).mean())


def find_threshold(acts: torch.Tensor, w_down: torch.Tensor, target: float = DEFAULT_CETT,
                   iters: int = 40) -> float:
    """Largest ``t`` with mean ``CETT(t) ≤ target`` over the tokens of ``acts[token, neuron]``.

    Bisection between 0 (CETT 0) and the largest neuron output norm (CETT 1). CETT is
    non-decreasing in ``t`` up to cancellations between neurons; bisection keeps the invariant
    ``CETT(lo) ≤ target < CETT(hi)``.
    """
    target = check_target(target)
    if acts.numel() == 0 or acts.shape[0] == 0:
        raise BadInput("no calibration tokens")
    acts = acts.float()
    w = w_down.float()
    norms = neuron_output_norms(acts, w.norm(dim=0))
    lo, hi = 0.0, float(norms.max()) * (1 + 1e-6) + 1e-12
    full = acts @ w.T
    denom = full.norm(dim=-1).clamp_min(1e-30)

    def cett(t: float) -> float:
        tail = (acts * (norms < t)) @ w.T
        return float((tail.norm(dim=-1) / denom).mean())

    for _ in range(iters):
        mid = (lo + hi) / 2
        if cett(mid) <= target:
            lo = mid
        else:
            hi = mid
    return lo


def active_by_threshold(acts: torch.Tensor, down_norms: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean ``active[..., neuron]``: ``|a_i| ≥ t / ‖W_down[:, i]‖`` (the CETT/TT rule)."""
    return neuron_output_norms(acts.float(), down_norms.float()) >= threshold
