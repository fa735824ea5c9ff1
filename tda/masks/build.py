"""Neuron masks: which FFN neurons each layer keeps.

A :class:`NeuronMask` is one boolean row per layer, ``keep[layer, neuron]``, fixed for a whole
generation (sequence-wise). A :class:`TokenMasks` is one row per token, ``keep[layer, token,
neuron]`` (token-wise, like TT). Constructors are pure functions of activations
``acts[layer, token, neuron]`` (a prefill capture of all layers), ``down_norms[layer, neuron]``
(``‖W_down[:, i]‖``) and per-layer thresholds ``thresholds[layer]`` from CETT calibration.

Methods
- ``tda``: relative magnitudes as TT does (neuron output norm ``|a_i|·‖W_down[:, i]‖``),
  aggregated over the prompt by root-mean-square over tokens, kept when ``≥ t_L``. So a neuron
  active (by TT's rule) on every prompt token is kept; one active on none is not.
  ``tda_matched``: the same scores with every ``t_L`` scaled by one factor so the mean density
  hits a target (for comparisons at equal sparsity).
- ``griffin``: GRIFFIN's statistic ``s_j = ‖(a[t, j] / ‖a[t, :]‖)_t‖₂``, top-k, same k in every layer.
  The project's default rounds ``k = d_ff · density`` to nearest and leaves BOS out of the
  statistic (as every capture does); ``reference=True`` is GRIFFIN's own code exactly:
  ``k = int(d_ff · density)`` (rounded down) — and the caller includes the BOS row in ``acts``
  (GRIFFIN's Gemma evaluation tokenizes with special tokens, so BOS is part of its statistic).
- ``tt``: token-wise ``|a_i| ≥ t_L / ‖W_down[:, i]‖`` (see :func:`tt_masks`).
- ``static``: weight magnitudes only, ``‖W_gate[j]‖·‖W_up[j]‖`` (or ``‖W_in[j]‖``), top-k.
- ``random``: seeded, top-k of uniform noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tda.common.errors import BadInput
from tda.masks.cett import neuron_output_norms

SEQUENCE_METHODS = ("tda", "tda_matched", "griffin", "static", "random")
ALL_METHODS = (*SEQUENCE_METHODS, "tt")


def check_density(density: float) -> float:
    if not isinstance(density, (int, float)) or not 0.0 < float(density) <= 1.0:
        raise BadInput(f"density must be in (0, 1], got {density}")
    return float(density)


def k_for_density(d_ff: int, density: float, *, reference: bool = False) -> int:
    """Neurons kept per layer at ``density`` (at least 1): ``d_ff · density`` rounded to nearest, or
    with ``reference`` rounded down, ``int(d_ff · density)``, as GRIFFIN's reference code does."""
    d = check_density(density)
    k = int(d_ff * d) if reference else round(d * d_ff)
    return max(1, min(d_ff, k))


@dataclass
class NeuronMask:
    """A sequence-wise mask: ``keep[layer, neuron]`` (bool) for all layers of a model."""

    keep: torch.Tensor
    method: str
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.keep.dtype != torch.bool or self.keep.dim() != 2:
            raise ValueError("NeuronMask.keep must be a bool tensor [layer, neuron]")

    @property
    def n_layers(self) -> int:
        return self.keep.shape[0]

    @property
    def d_ff(self) -> int:
        return self.keep.shape[1]

    def indices(self, layer: int) -> torch.Tensor:
        """Sorted indices of the kept neurons of ``layer`` (``LongTensor[k]``)."""
        return torch.nonzero(self.keep[layer], as_tuple=False).flatten()

    def density_per_layer(self) -> torch.Tensor:
        return self.keep.float().mean(dim=1)

    @property
    def density(self) -> float:
        return float(self.keep.float().mean())

    def summary(self) -> dict:
        return {
            "method": self.method,
            "density": round(self.density, 6),
            "density_per_layer": [round(float(d), 6) for d in self.density_per_layer()],
            **self.params,
        }


@dataclass
class TokenMasks:
    """Token-wise masks: ``keep[layer, token, neuron]`` (bool)."""

    keep: torch.Tensor
    method: str = "tt"
    params: dict = field(default_factory=dict)

    def density_per_layer(self) -> torch.Tensor:
        return self.keep.float().mean(dim=(1, 2))

    @property
    def density(self) -> float:
        return float(self.keep.float().mean())


# ----- scores ------------------------------------------------------------------------------------
def _check_acts(acts: torch.Tensor) -> torch.Tensor:
    if acts.dim() != 3:
        raise BadInput("activations must be acts[layer, token, neuron]")
    if acts.shape[1] == 0:
        raise BadInput("no prompt tokens to build a mask from")
    return acts.float()


def griffin_scores(acts: torch.Tensor) -> torch.Tensor:
    """GRIFFIN: ``s[layer, j] = ‖ a[layer, :, j] / ‖a[layer, t, :]‖ ‖₂`` over tokens ``t``."""
    acts = _check_acts(acts)
    rows = acts / acts.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return rows.norm(dim=1)


def tda_scores(acts: torch.Tensor, down_norms: torch.Tensor) -> torch.Tensor:
    """TDA sequence scores ``[layer, neuron]``: RMS over tokens of ``|a_i|·‖W_down[:, i]‖``."""
    acts = _check_acts(acts)
    out = neuron_output_norms(acts, down_norms.float()[:, None, :])
    return out.pow(2).mean(dim=1).sqrt()


def topk_mask(scores: torch.Tensor, density: float, *, reference: bool = False) -> torch.Tensor:
    """``keep[layer, neuron]``: the top-k scores of each layer, the same k everywhere
    (``reference``: k rounded down, see :func:`k_for_density`)."""
    k = k_for_density(scores.shape[1], density, reference=reference)
    idx = scores.topk(k, dim=1).indices
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep.scatter_(1, idx, True)
    return keep


def _check_thresholds(thresholds, n_layers: int) -> torch.Tensor:
    t = torch.as_tensor(thresholds, dtype=torch.float32).flatten()
    if t.numel() != n_layers:
        raise BadInput(f"need one threshold per layer ({n_layers}), got {t.numel()}")
    if bool((t < 0).any()):
        raise BadInput("thresholds must be non-negative")
    return t


# ----- constructors ------------------------------------------------------------------------------
def tda_mask(acts: torch.Tensor, down_norms: torch.Tensor, thresholds, *, scale: float = 1.0) -> NeuronMask:
    """TDA: keep ``j`` where the prompt's RMS neuron output norm is ``≥ scale·t_L``."""
    scores = tda_scores(acts, down_norms)
    t = _check_thresholds(thresholds, scores.shape[0])
    keep = scores >= (scale * t)[:, None]
    return NeuronMask(keep, "tda", {"scale": float(scale)})


def tda_matched_mask(acts: torch.Tensor, down_norms: torch.Tensor, thresholds, density: float,
                     iters: int = 50) -> NeuronMask:
    """TDA with all ``t_L`` scaled by one factor (bisection) so the mean density ≈ ``density``."""
    density = check_density(density)
    scores = tda_scores(acts, down_norms)
    t = _check_thresholds(thresholds, scores.shape[0]).clamp_min(1e-12)
    rel = scores / t[:, None]  # kept when rel >= scale
    lo, hi = 0.0, float(rel.max()) * 2 + 1e-12
    for _ in range(iters):  # density(scale) is non-increasing: find the scale hitting the target
        mid = (lo + hi) / 2
        if float((rel >= mid).float().mean()) >= density:
            lo = mid
        else:
            hi = mid
    keep = rel >= lo
    return NeuronMask(keep, "tda_matched", {"scale": lo, "target_density": density})


def griffin_mask(acts: torch.Tensor, density: float, *, reference: bool = False) -> NeuronMask:
    """GRIFFIN: top-k of :func:`griffin_scores` per layer. ``reference=True`` rounds k down as
    GRIFFIN's code does; for its statistic to match too, ``acts`` must include the BOS row
    (``capture(..., include_bos=True)``; the engine does this itself)."""
    keep = topk_mask(griffin_scores(acts), density, reference=reference)
    params = {"target_density": float(density), **({"reference": True} if reference else {})}
    return NeuronMask(keep, "griffin", params)


def static_mask(static_scores: torch.Tensor, density: float) -> NeuronMask:
    """``static_scores[layer, neuron]`` from the weights (see ``FFNAdapter.static_scores``)."""
    return NeuronMask(topk_mask(static_scores.float(), density), "static", {"target_density": float(density)})


def random_mask(n_layers: int, d_ff: int, density: float, seed: int = 0) -> NeuronMask:
    gen = torch.Generator().manual_seed(int(seed))
    scores = torch.rand(n_layers, d_ff, generator=gen)
    return NeuronMask(topk_mask(scores, density), "random", {"target_density": float(density), "seed": int(seed)})


def tt_masks(acts: torch.Tensor, down_norms: torch.Tensor, thresholds) -> TokenMasks:
    """TT: per token, ``|a_i| ≥ t_L / ‖W_down[:, i]‖`` → ``keep[layer, token, neuron]``."""
    acts = _check_acts(acts)
    t = _check_thresholds(thresholds, acts.shape[0])
    keep = neuron_output_norms(acts, down_norms.float()[:, None, :]) >= t[:, None, None]
    return TokenMasks(keep, "tt", {})


# ----- model-level helpers -----------------------------------------------------------------------
def model_down_norms(lm) -> torch.Tensor:
    """``down_norms[layer, neuron]`` (float32, CPU) of a :class:`tda.models.load.LoadedModel`."""
    return torch.stack([lm.ffn.down_norms(L).cpu() for L in range(lm.ffn.n_layers)])


def model_static_scores(lm) -> torch.Tensor:
    return torch.stack([lm.ffn.static_scores(L).cpu() for L in range(lm.ffn.n_layers)])


def build_mask(method: str, acts: torch.Tensor, *, density: float | None = None, thresholds=None,
               down_norms: torch.Tensor | None = None, static_scores: torch.Tensor | None = None,
               seed: int = 0, reference: bool = False) -> NeuronMask:
    """Dispatch to a sequence-wise constructor by name (``tt`` is token-wise: use :func:`tt_masks`).

    ``reference`` (griffin only): GRIFFIN's reference rounding, see :func:`griffin_mask`.
    """
    if method not in SEQUENCE_METHODS:
        raise BadInput(f"unknown mask method '{method}'; use one of {', '.join(SEQUENCE_METHODS)}")
    if reference and method != "griffin":
        raise BadInput("the GRIFFIN reference option applies to method 'griffin' only")
    if method in ("griffin", "static", "random", "tda_matched") and density is None:
        raise BadInput(f"method '{method}' needs a density")
    if method in ("tda", "tda_matched") and (thresholds is None or down_norms is None):
        raise BadInput(f"method '{method}' needs CETT thresholds and down-projection norms")
    if method == "tda":
        return tda_mask(acts, down_norms, thresholds)
    if method == "tda_matched":
        return tda_matched_mask(acts, down_norms, thresholds, density)
    if method == "griffin":
        return griffin_mask(acts, density, reference=reference)
    if method == "static":
        if static_scores is None:
            raise BadInput("method 'static' needs the weight scores")
        return static_mask(static_scores, density)
    return random_mask(acts.shape[0], acts.shape[2], density, seed)
