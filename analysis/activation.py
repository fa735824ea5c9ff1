"""Activation rules: when is a neuron *active* for a token?

Two rules, each a frozen :class:`ActivationRule` that turns activations ``acts[layer, token,
neuron]`` into a boolean ``active[layer, token, neuron]`` and describes itself for figures,
tables and manifests:

- ``cett``: the per-layer CETT rule shared with the engine — ``|a_i| ≥ t_L / ‖W_down[:, i]‖``
  with ``t_L`` calibrated (:func:`tda.masks.calibrate.load_or_calibrate`) so that mean CETT equals the
  target (0.2 by default) on calibration text; the test itself is
  :func:`tda.masks.cett.active_by_threshold`.
- ``topp``: per token, the top ``p`` fraction of neurons by ``|a|`` (exactly
  ``max(1, round(p·d_ff))`` of them, so every token has the same number of active neurons).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from tda.common.errors import BadInput
from tda.masks.cett import DEFAULT_CETT, active_by_threshold, check_target

RULES = ("cett", "topp")
DEFAULT_TOP_P = 0.1


@dataclass(frozen=True)
class ActivationRule:
    """A stated rule for "active". Build with :func:`cett_rule`, :func:`topp_rule` or :func:`make_rule`."""

    kind: str
    value: float
    thresholds: tuple[float, ...] = ()
    down_norms: torch.Tensor | None = field(default=None, repr=False, compare=False)
    model_id: str | None = None
    calibration: dict = field(default_factory=dict, compare=False)

    @property
    def label(self) -> str:
        if self.kind == "cett":
            return f"CETT {self.value:g} (|a_i| ≥ t_L/‖W_down[:,i]‖)"
        return f"top {self.value * 100:g}% |a| per token"

    @property
    def short(self) -> str:
        return f"cett{self.value:g}" if self.kind == "cett" else f"top{self.value * 100:g}pct"

    def describe(self) -> dict:
        out = {"rule": self.kind, "value": self.value, "label": self.label}
        if self.kind == "cett":
            out.update(model_id=self.model_id, thresholds=[round(t, 6) for t in self.thresholds],
                       calibration=self.calibration)
        return out

    def _check_layers(self, layers: Sequence[int], d_ff: int) -> None:
        if self.kind == "cett":
            n = len(self.thresholds)
            bad = [L for L in layers if not 0 <= L < n]
            if bad:
                raise BadInput(f"layer {bad[0]} out of range: the rule has thresholds for layers 0..{n - 1}")
            if self.down_norms is not None and self.down_norms.shape[1] != d_ff:
                raise BadInput(f"the rule was calibrated for d_ff {self.down_norms.shape[1]}, not {d_ff}")

    def active(self, acts: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
        """``active[layer, token, neuron]`` for ``acts[layer, token, neuron]`` of model ``layers``."""
        if acts.dim() != 3 or acts.shape[0] != len(layers):
            raise BadInput("activations must be acts[layer, token, neuron] matching the layers")
        self._check_layers(layers, acts.shape[2])
        if self.kind == "topp":
            return topp_active(acts, self.value)
        return torch.stack([
            active_by_threshold(acts[i], self.down_norms[L], self.thresholds[L]) for i, L in enumerate(layers)
        ])

    def active_capture(self, cap) -> torch.Tensor:
        """``active[layer, token, neuron]`` of a :class:`tda.activations.capture.Capture`."""
        return self.active(cap.acts, cap.layers)


def check_top_p(p: float) -> float:
    if not isinstance(p, (int, float)) or not 0.0 < float(p) < 1.0:
        raise BadInput(f"top-p fraction must be in (0, 1), got {p}")
    return float(p)


def topp_active(acts: torch.Tensor, p: float) -> torch.Tensor:
    """Boolean mask of the top ``max(1, round(p·d_ff))`` neurons by ``|a|`` per token (last axis)."""
    p = check_top_p(p)
    d = acts.shape[-1]
    k = max(1, min(d, round(p * d)))
    idx = acts.abs().topk(k, dim=-1).indices
    out = torch.zeros(acts.shape, dtype=torch.bool)
    out.scatter_(-1, idx, True)
    return out


def topp_rule(p: float = DEFAULT_TOP_P) -> ActivationRule:
    return ActivationRule("topp", check_top_p(p))


def cett_rule(lm, target: float = DEFAULT_CETT, *, texts: list[str] | None = None, calibration=None,
              progress=None) -> ActivationRule:
    """The CETT rule of ``lm``: thresholds from ``calibration`` or the cached calibration on ``texts``.

    ``texts`` default to the shipped corpus (:func:`tda.common.data.load_texts`).
    """
    from tda.masks.build import model_down_norms
    from tda.masks.calibrate import load_or_calibrate

    target = check_target(target)
    cal = calibration if calibration is not None else load_or_calibrate(lm, texts, target, progress=progress)
    cal.check_model(lm)
    if abs(cal.target - target) > 1e-12:
        raise BadInput(f"the calibration is for CETT {cal.target:g}, not {target:g}")
    return ActivationRule(
        "cett", target, tuple(float(t) for t in cal.thresholds), model_down_norms(lm), lm.model_id,
        {"data_hash": cal.data_hash, "n_tokens": cal.n_tokens,
         "densities": [round(d, 6) for d in cal.densities]},
    )


def make_rule(lm, kind: str = "cett", value: float | None = None, **kw) -> ActivationRule:
    """``cett`` (value = CETT target, default 0.2) or ``topp`` (value = fraction, default 0.1)."""
    if kind == "cett":
        return cett_rule(lm, DEFAULT_CETT if value is None else value, **kw)
    if kind == "topp":
        return topp_rule(DEFAULT_TOP_P if value is None else value)
    raise BadInput(f"unknown activation rule '{kind}'; use cett or topp")


def check_rule_args(kind: str, value: float | None) -> None:
    """Validate a rule's name and value without a model (for the CLI, before loading one)."""
    if kind == "cett":
        if value is not None:
            check_target(value)
    elif kind == "topp":
        if value is not None:
            check_top_p(value)
    else:
        raise BadInput(f"unknown activation rule '{kind}'; use cett or topp")
