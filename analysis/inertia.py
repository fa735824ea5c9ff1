"""Activation inertia as numbers: pure functions of boolean ``active[token, neuron]`` masks.

Per layer and capture mode:

- ``jaccard``: mean over tokens ``t ≥ 1`` of ``J(A_t, A_{t-k} ∪ … ∪ A_{t-1})`` — how much a
  token's active set overlaps the union of the previous ``k`` tokens' sets (``jaccard_prev`` is
  ``k = 1``); ``jaccard_chance`` is the same with each set placed at random (``E|A∩U| =
  |A|·|U|/N``), the value density alone would give;
- ``n50`` / ``n90``: the fewest neurons that account for 50% / 90% of all activation events
  (token × neuron pairs active) over the tokens — small means concentrated ("flocking");
- ``density``: the fraction of token × neuron pairs active.

Across modes: ``self_jaccard`` is ``J(A_t^sequence, A_t^isolated)`` — how much of a token's
in-context set its context-free set explains. :func:`claim4_verdict` turns these into the
verdict on the paper's Claim 4; its logic was fixed before any result was looked at.
"""

from __future__ import annotations

import numpy as np
import torch

CONCENTRATION = (0.5, 0.9)
DEFAULT_K = 4
MAJORITY = 2 / 3  # a part of Claim 4 holds for a token source when it holds in ≥ 2/3 of the layers


def _check(active: torch.Tensor, min_dim: int = 2) -> torch.Tensor:
    if active.dtype != torch.bool or active.dim() < min_dim:
        raise ValueError("expected a bool tensor active[..., token, neuron]")
    return active


def _jaccard_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``|a∩b| / |a∪b|`` over the last axis of bool tensors; two empty sets count as identical (1)."""
    inter = (a & b).sum(-1).double()
    union = (a | b).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """Jaccard overlap of two bool vectors (1 when both are empty)."""
    return float(_jaccard_rows(a.reshape(1, -1), b.reshape(1, -1))[0])


def history_unions(active: torch.Tensor, k: int) -> torch.Tensor:
    """``U[..., t-1, :] = A_{max(0,t-k)} ∪ … ∪ A_{t-1}`` for ``t = 1..T-1`` → bool ``[..., T-1, N]``."""
    active = _check(active)
    if k < 1:
        raise ValueError("k must be at least 1")
    T = active.shape[-2]
    U = torch.zeros(*active.shape[:-2], max(T - 1, 0), active.shape[-1], dtype=torch.bool)
    for j in range(1, min(k, T - 1) + 1):  # U[t-1] |= A[t-j] for t >= j
        U[..., j - 1:, :] |= active[..., : T - j, :]
    return U


def history_jaccard(active: torch.Tensor, k: int = DEFAULT_K) -> torch.Tensor:
    """Per token ``t ≥ 1``: Jaccard of ``A_t`` with the union of the previous ``k`` sets (``[..., T-1]``)."""
    return _jaccard_rows(active[..., 1:, :], history_unions(active, k))


def chance_history_jaccard(active: torch.Tensor, k: int = DEFAULT_K) -> torch.Tensor:
    """Expected :func:`history_jaccard` if every set kept its size but sat at random neurons."""
    U = history_unions(active, k)
    n = active.shape[-1]
    a, u = active[..., 1:, :].sum(-1).double(), U.sum(-1).double()
    inter = a * u / n
    union = a + u - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.ones_like(union))


def self_jaccard(seq_active: torch.Tensor, iso_active: torch.Tensor) -> torch.Tensor:
    """Per token: Jaccard of its in-sequence active set with its isolated one (``[..., T]``)."""
    if seq_active.shape != iso_active.shape:
        raise ValueError("sequence and isolated masks must have the same shape")
    return _jaccard_rows(_check(seq_active), _check(iso_active))


def concentration(active: torch.Tensor, fractions=CONCENTRATION) -> dict[float, int]:
    """``{f: fewest neurons covering a fraction f of all activation events}`` (0 when no events)."""
    counts = _check(active).sum(dim=0)
    return concentration_of_counts(counts, fractions)


def concentration_of_counts(counts: torch.Tensor, fractions=CONCENTRATION) -> dict[float, int]:
    """Same as :func:`concentration` from per-neuron event counts ``[N]``."""
    c = np.sort(np.asarray(counts, dtype=np.int64))[::-1]
    total = int(c.sum())
    if total == 0:
        return dict.fromkeys(fractions, 0)
    cum = np.cumsum(c)
    return {f: int(np.searchsorted(cum, f * total - 1e-9 * total, side="left") + 1) for f in fractions}


def inertia_table(active: torch.Tensor, layers, k: int = DEFAULT_K) -> list[dict]:
    """Per layer of ``active[layer, token, neuron]``: ``{"layer", density, jaccard, jaccard_prev,
    jaccard_chance, n50, n90, events, n_active_neurons}`` (all layers computed at once)."""
    active = _check(active, 3)
    T = active.shape[1]
    nan = torch.full((active.shape[0],), float("nan"), dtype=torch.float64)

    def mean_over_tokens(x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=-1) if T > 1 else nan

    density = active.double().mean(dim=(1, 2))
    jac = mean_over_tokens(history_jaccard(active, k))
    prev = mean_over_tokens(history_jaccard(active, 1))
    chance = mean_over_tokens(chance_history_jaccard(active, k))
    counts = active.sum(dim=1)
    rows = []
    for i, L in enumerate(layers):
        conc = concentration_of_counts(counts[i])
        rows.append({
            "layer": int(L), "density": float(density[i]), "jaccard": float(jac[i]),
            "jaccard_prev": float(prev[i]), "jaccard_chance": float(chance[i]),
            "n50": conc[0.5], "n90": conc[0.9], "events": int(counts[i].sum()),
            "n_active_neurons": int((counts[i] > 0).sum()),
        })
    return rows


def layer_metrics(active: torch.Tensor, k: int = DEFAULT_K) -> dict:
    """All single-mode numbers of one layer's ``active[token, neuron]`` (see :func:`inertia_table`)."""
    row = inertia_table(_check(active)[None], [0], k)[0]
    del row["layer"]
    return row


DIFF_KEYS = ("density", "jaccard", "jaccard_prev", "n50", "n90")


def mode_differences(isolated: list[dict], sequence: list[dict]) -> list[dict]:
    """Per layer: ``sequence − isolated`` of the keys in ``DIFF_KEYS`` (prefixed ``d_``)."""
    return [
        {"layer": i["layer"], **{f"d_{k}": s[k] - i[k] for k in DIFF_KEYS}}
        for i, s in zip(isolated, sequence, strict=True)
    ]


def group_means(rows: list[dict], groups: dict[str, list[int]], keys) -> dict[str, dict]:
    """``{group: {key: mean over the group's layers}}`` for per-layer rows."""
    by_layer = {r["layer"]: r for r in rows}
    out = {}
    for g, layers in groups.items():
        sel = [by_layer[L] for L in layers if L in by_layer]
        out[g] = {k: float(np.mean([r[k] for r in sel])) if sel else float("nan") for k in keys}
    return out


# ----- Claim 4 -----------------------------------------------------------------------------------
def claim4_verdict(result: dict, control: dict | None = None, majority: float = MAJORITY) -> dict:
    """Verdict on Claim 4 ("which neurons fire is decided more by the preceding tokens than by
    the current token's meaning") from an inertia result (see :func:`analysis.studies.run_inertia`).

    ``result["sources"][src]`` holds ``isolated``/``sequence`` per-layer rows and ``self_jaccard``
    per layer, for ``src`` in ``real``/``random``. Parts, each counted over layers:

    - A (flocking): in sequence mode a token's set overlaps its history more
      (``d_jaccard > 0``) *and* events concentrate on fewer neurons (``d_n50 < 0``);
    - B (context over identity): in sequence mode, ``J(A_t, A_{t-1}) > J(A_t, A_t^isolated)`` —
      a token's in-context set is closer to the previous token's set than to its own
      context-free set;
    - C (from training, needs ``control``): the mean ``d_jaccard`` over layers is larger in the
      trained model than in the random-weights one.

    A and B hold when they hold in ≥ ``majority`` of the layers for both real and random
    tokens. Verdict: ``holds`` (A and B), ``partly holds`` (one), ``fails`` (neither).
    """
    parts: dict = {"A": {}, "B": {}, "C": {}}
    for src, d in result["sources"].items():
        diffs = mode_differences(d["isolated"], d["sequence"])
        n = len(diffs)
        a_layers = [r["layer"] for r in diffs if r["d_jaccard"] > 0 and r["d_n50"] < 0]
        b_layers = [s["layer"] for s, sj in zip(d["sequence"], d["self_jaccard"], strict=True)
                    if s["jaccard_prev"] > sj]
        parts["A"][src] = {"layers": a_layers, "n": len(a_layers), "of": n,
                           "holds": len(a_layers) >= majority * n,
                           "mean_d_jaccard": float(np.mean([r["d_jaccard"] for r in diffs])),
                           "mean_d_n50": float(np.mean([r["d_n50"] for r in diffs]))}
        parts["B"][src] = {"layers": b_layers, "n": len(b_layers), "of": n,
                           "holds": len(b_layers) >= majority * n,
                           "mean_jaccard_prev_seq": float(np.mean([s["jaccard_prev"] for s in d["sequence"]])),
                           "mean_self_jaccard": float(np.mean(d["self_jaccard"]))}
        if control is not None and src in control["sources"]:
            c = control["sources"][src]
            cd = mode_differences(c["isolated"], c["sequence"])
            trained = parts["A"][src]["mean_d_jaccard"]
            ctrl = float(np.mean([r["d_jaccard"] for r in cd]))
            parts["C"][src] = {"trained_mean_d_jaccard": trained, "control_mean_d_jaccard": ctrl,
                               "holds": trained > ctrl}
    a = all(p["holds"] for p in parts["A"].values())
    b = all(p["holds"] for p in parts["B"].values())
    c = all(p["holds"] for p in parts["C"].values()) if parts["C"] else None
    verdict = "holds" if a and b else ("partly holds" if a or b else "fails")
    return {"verdict": verdict, "A": a, "B": b, "C": c, "parts": parts, "majority": majority,
            "statement": claim4_statement(result, verdict, parts, c)}


def claim4_statement(result: dict, verdict: str, parts: dict, from_training: bool | None) -> str:
    """One paragraph, generated from the numbers, stating the Claim 4 verdict."""
    rule = result["rule"]["label"]
    s = [f"Claim 4 (activation inertia) {verdict.upper()} on {result['model_id']} under rule {rule}, "
         f"k={result['k']}."]
    for src, a in parts["A"].items():
        b = parts["B"][src]
        s.append(
            f"{src.capitalize()} tokens: sequence vs isolated raises history overlap and concentrates "
            f"events in {a['n']}/{a['of']} layers (mean ΔJaccard {a['mean_d_jaccard']:+.3f}, mean Δn50 "
            f"{a['mean_d_n50']:+.1f} neurons) [{'holds' if a['holds'] else 'fails'}]; in context a token's "
            f"set is closer to the previous token's (mean J {b['mean_jaccard_prev_seq']:.3f}) than to its own "
            f"isolated set (mean J {b['mean_self_jaccard']:.3f}) in {b['n']}/{b['of']} layers "
            f"[{'holds' if b['holds'] else 'fails'}]."
        )
    if parts["C"]:
        bits = [f"{src}: trained ΔJ {c['trained_mean_d_jaccard']:+.3f} vs random-weights "
                f"{c['control_mean_d_jaccard']:+.3f}" for src, c in parts["C"].items()]
        larger = [src for src, c in parts["C"].items() if c["holds"]]
        if from_training:
            tail = "The sequence-vs-isolated effect is larger with trained weights for every token source."
        elif larger:
            tail = (f"It is larger with trained weights only for {', '.join(larger)} tokens; elsewhere the "
                    f"random-weights model shows at least as large an effect.")
        else:
            tail = "The random-weights model shows at least as large an effect for every token source."
        s.append("Control (same architecture, random weights): " + "; ".join(bits) + ". " + tail)
    return " ".join(s)
