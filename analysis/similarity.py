"""Study 2: activation patterns of short samples and their pairwise similarity.

Choices, all explicit and recorded in every result:

- capture: each sample alone in ``sequence`` mode; the BOS position is excluded (the capture
  default — it is no token of the sample and identical for every sample, so including it would
  only add the same constant row to every pattern);
- pattern per sample and layer: ``mean_abs`` — mean ``|a|`` over the sample's tokens (a
  ``d_ff`` vector); ``tda_mask`` — the TDA sequence mask of :func:`tda.masks.build.tda_mask` (RMS over
  tokens of ``|a_i|·‖W_down[:, i]‖ ≥ t_L``, CETT-calibrated ``t_L``); ``griffin_mask`` — GRIFFIN's
  top-k mask (:func:`tda.masks.build.griffin_mask`, 50% of neurons by default);
- measures: ``cosine`` and ``spearman`` (scipy) of ``mean_abs``; ``jaccard_tda`` and
  ``jaccard_griffin``: Jaccard of the masks;
- layers: a matrix per layer; a layer group's matrix (``early``/``middle``/``late`` thirds of
  the layers, ``all``) is the mean of its layers' matrices, each layer weighing the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from tda.common.errors import BadInput

MEASURES: dict[str, dict] = {
    "cosine": {"pattern": "mean_abs", "label": "cosine of mean |a|"},
    "spearman": {"pattern": "mean_abs", "label": "Spearman of mean |a|"},
    "jaccard_tda": {"pattern": "tda_mask", "label": "Jaccard of TDA masks (CETT)"},
    "jaccard_griffin": {"pattern": "griffin_mask", "label": "Jaccard of GRIFFIN top-k masks"},
}
DEFAULT_GRIFFIN_DENSITY = 0.5


# ----- similarity of rows ------------------------------------------------------------------------
def cosine_matrix(X) -> np.ndarray:
    """Pairwise cosine of the rows of ``X[n, d]`` (a zero row has cosine 0 with others, 1 with itself)."""
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1)
    Y = X / np.where(norms > 0, norms, 1.0)[:, None]
    S = Y @ Y.T
    np.fill_diagonal(S, 1.0)
    return np.clip(S, -1.0, 1.0)


def spearman_matrix(X) -> np.ndarray:
    """Pairwise Spearman rank correlation of the rows of ``X[n, d]`` (``scipy.stats.spearmanr``).

    A constant row has no ranks to correlate: its correlations are 0 (1 with itself).
    """
    from scipy.stats import spearmanr

    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        if n == 2:
            r = spearmanr(X[0], X[1]).statistic
            S = np.array([[1.0, r], [r, 1.0]])
        else:
            S = np.asarray(spearmanr(X, axis=1).statistic, dtype=np.float64)
    S = np.nan_to_num(S, nan=0.0)
    np.fill_diagonal(S, 1.0)
    return S


def jaccard_matrix(M) -> np.ndarray:
    """Pairwise Jaccard of the boolean rows of ``M[n, d]`` (two empty rows: 1)."""
    M = np.asarray(M, dtype=bool).astype(np.float64)
    inter = M @ M.T
    sizes = M.sum(axis=1)
    union = sizes[:, None] + sizes[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 1.0)


_MEASURE_FN = {"cosine": cosine_matrix, "spearman": spearman_matrix,
               "jaccard_tda": jaccard_matrix, "jaccard_griffin": jaccard_matrix}


def layer_groups(n_layers: int) -> dict[str, list[int]]:
    """Early/middle/late thirds of ``range(n_layers)`` (as equal as possible) and ``all``."""
    parts = np.array_split(np.arange(n_layers), 3)
    out = {name: [int(x) for x in p] for name, p in zip(("early", "middle", "late"), parts, strict=True) if len(p)}
    out["all"] = list(range(n_layers))
    return out


# ----- patterns ----------------------------------------------------------------------------------
@dataclass
class SamplePatterns:
    """Per-layer activation patterns of samples: ``[layer, sample, neuron]`` tensors."""

    ids: list[int]
    texts: list[str]
    treatments: list[str]
    n_tokens: list[int]
    layers: list[int]
    mean_abs: torch.Tensor
    tda_mask: torch.Tensor
    griffin_mask: torch.Tensor
    settings: dict = field(default_factory=dict)

    def pattern(self, name: str) -> torch.Tensor:
        if name not in ("mean_abs", "tda_mask", "griffin_mask"):
            raise BadInput(f"unknown pattern '{name}'")
        return getattr(self, name)


def check_samples(samples: Sequence[dict]) -> list[dict]:
    """At least 2 samples, each with a non-empty text; ids unique (default 1..n)."""
    if not isinstance(samples, (list, tuple)) or len(samples) < 2:
        raise BadInput("need at least 2 samples")
    out = []
    for i, s in enumerate(samples):
        if not isinstance(s, dict) or not isinstance(s.get("text"), str) or not s["text"].strip():
            raise BadInput(f"sample {i} lacks a non-empty 'text'")
        try:
            sid = int(s.get("id", i + 1))
        except (TypeError, ValueError):
            raise BadInput(f"sample {i} has a non-integer id {s.get('id')!r}") from None
        out.append({"id": sid, "text": s["text"], "treatment": str(s.get("treatment", ""))})
    ids = [s["id"] for s in out]
    if len(set(ids)) != len(ids):
        raise BadInput("sample ids must be unique")
    return out


def sample_patterns(lm, samples: Sequence[dict], cett_rule, *,
                    griffin_density: float = DEFAULT_GRIFFIN_DENSITY) -> SamplePatterns:
    """Capture every sample (sequence mode, all layers, BOS excluded) and build its patterns.

    ``cett_rule`` is a CETT :class:`analysis.activation.ActivationRule` of ``lm`` (its thresholds
    and down-projection norms make the TDA masks).
    """
    from tda.activations.capture import capture
    from tda.masks.build import check_density, griffin_mask, tda_mask

    samples = check_samples(samples)
    if cett_rule.kind != "cett":
        raise BadInput("the TDA masks need a CETT rule")
    griffin_density = check_density(griffin_density)
    mean_abs, tmask, gmask, n_tok = [], [], [], []
    layers = None
    for s in samples:
        cap = capture(lm, s["text"], mode="sequence")
        layers = cap.layers
        mean_abs.append(cap.acts.abs().mean(dim=1))
        tmask.append(tda_mask(cap.acts, cett_rule.down_norms, list(cett_rule.thresholds)).keep)
        gmask.append(griffin_mask(cap.acts, griffin_density).keep)
        n_tok.append(cap.n_tokens)
    return SamplePatterns(
        ids=[s["id"] for s in samples], texts=[s["text"] for s in samples],
        treatments=[s["treatment"] for s in samples], n_tokens=n_tok, layers=list(layers),
        mean_abs=torch.stack(mean_abs, dim=1), tda_mask=torch.stack(tmask, dim=1),
        griffin_mask=torch.stack(gmask, dim=1),
        settings={"capture": "sequence", "bos": "excluded", "vector": "mean |a| over tokens",
                  "tda_mask": f"tda.masks.build.tda_mask, CETT {cett_rule.value:g}",
                  "griffin_density": griffin_density, "cett": cett_rule.describe()},
    )


def layer_similarity(patterns: SamplePatterns, measure: str, layer: int) -> np.ndarray:
    """The ``[sample, sample]`` similarity of one model layer under ``measure``."""
    if measure not in MEASURES:
        raise BadInput(f"unknown measure '{measure}'; use one of {', '.join(MEASURES)}")
    if layer not in patterns.layers:
        raise BadInput(f"layer {layer} out of range: layers {patterns.layers[0]}..{patterns.layers[-1]}")
    X = patterns.pattern(MEASURES[measure]["pattern"])[patterns.layers.index(layer)].numpy()
    return _MEASURE_FN[measure](X)


def group_similarity(patterns: SamplePatterns, measure: str, layers: Sequence[int]) -> np.ndarray:
    """Mean of the per-layer matrices over ``layers``."""
    if not layers:
        raise BadInput("no layers in the group")
    return np.mean([layer_similarity(patterns, measure, L) for L in layers], axis=0)


def similarity_study(lm, samples: Sequence[dict], cett_rule, *, measures: Sequence[str] = tuple(MEASURES),
                     groups: dict[str, list[int]] | None = None,
                     griffin_density: float = DEFAULT_GRIFFIN_DENSITY,
                     patterns: SamplePatterns | None = None) -> dict:
    """Study 2 end to end: patterns → matrices per measure and layer group → verdicts (a)–(e).

    Returns a JSON-able dict: ``samples``, ``settings``, ``groups``, ``measures``,
    ``matrices[measure][group]`` (lists), and ``observations[key][measure][group]`` =
    ``{"holds", "margin", ...}`` (or ``observations`` = None when the samples are not ids 1..13).
    """
    from analysis.verdicts import OBSERVATIONS, applicable, duplicate_groups, evaluate

    for m in measures:
        if m not in MEASURES:
            raise BadInput(f"unknown measure '{m}'; use one of {', '.join(MEASURES)}")
    pats = patterns or sample_patterns(lm, samples, cett_rule, griffin_density=griffin_density)
    groups = groups or layer_groups(len(pats.layers))
    matrices = {m: {g: group_similarity(pats, m, [pats.layers[i] for i in Ls]) for g, Ls in groups.items()}
                for m in measures}
    samples_out = [{"id": i, "text": t, "treatment": tr, "n_tokens": n}
                   for i, t, tr, n in zip(pats.ids, pats.texts, pats.treatments, pats.n_tokens, strict=True)]
    observations = None
    if applicable(pats.ids):
        dups = duplicate_groups(samples_out)
        observations = {
            o.key: {"wording": o.wording, "reading": o.reading,
                    **{m: {g: _compact(evaluate(o.key, S, pats.ids, dups)) for g, S in by_g.items()}
                       for m, by_g in matrices.items()}}
            for o in OBSERVATIONS
        }
    return {
        "model_id": lm.model_id,
        "samples": samples_out,
        "settings": pats.settings,
        "groups": {g: [pats.layers[i] for i in Ls] for g, Ls in groups.items()},
        "measures": {m: MEASURES[m] for m in measures},
        "matrices": {m: {g: np.round(S, 6).tolist() for g, S in by_g.items()} for m, by_g in matrices.items()},
        "observations": observations,
    }


def _compact(v: dict) -> dict:
    """A verdict without the repeated wording, numbers rounded."""
    return {
        "holds": v["holds"], "margin": round(v["margin"], 6), "n_hold": v["n_hold"],
        "n_comparisons": v["n_comparisons"],
        "comparisons": [{"greater": c["greater"], "s_greater": round(c["s_greater"], 6),
                         "than": c["than"], "s_than": round(c["s_than"], 6), "holds": c["holds"]}
                        for c in v["comparisons"]],
    }


def verdict_rows(result: dict) -> list[dict]:
    """Flat rows ``{observation, measure, group, holds, margin, n_hold, n_comparisons}`` for tables."""
    obs = result.get("observations")
    if not obs:
        return []
    rows = []
    for key, per in obs.items():
        for m in result["measures"]:
            for g, v in per[m].items():
                rows.append({"observation": key, "measure": m, "group": g, "holds": v["holds"],
                             "margin": v["margin"], "n_hold": v["n_hold"], "n_comparisons": v["n_comparisons"]})
    return rows
