"""CHESS's per-channel statistics, calibrated offline in one pass (and the cache both CHESS and
SCAP's calibration, :mod:`tda.masks.scap_calibration`, use).

CHESS needs more than the ``|x|`` quantiles of :mod:`tda.masks.input_thresholds`, whose grid
container (:class:`~tda.masks.input_thresholds.InputThresholds`: one quantile grid per site,
interpolated to any density), sampling budget and text limits it reuses:

- **CHESS** (arXiv 2409.01366) keeps FFN channel ``j`` of layer ``L`` when
  ``|act(gate)_j|·m_j ≥ τ_L`` with ``m_j = E|up_j|``: site ``"chess.<L>"`` holds the quantiles of
  that importance score over tokens × channels, ``scales["chess.<L>"]`` the vector ``m[d_ff]``;
  the per-channel cut on ``|act(gate)_j|`` is ``τ_L / m_j`` (:meth:`ChannelThresholds.chess_cuts`).
  Its attention thresholds: sites ``"chess.q.<L>"`` (``|x|`` at the q projection's input) and
  ``"chess.o.<L>"`` (at the o projection's input). As its code (``CHESS/notebooks/thresholds.py``)
  does, every CHESS statistic is a **mean over calibration texts of per-text statistics** (per-text
  quantiles, per-text ``E|up_j|``); the scores use the final ``m``. Gated FFNs only.
Entries are sampled (seeded; per text at most :data:`~tda.masks.input_thresholds.SAMPLES_PER_SITE`
÷ number of texts per site; the FFN samples keep their channel so the score is formed once ``m``
is known); BOS positions are excluded (the project's convention; the reference code keeps them).
Results are cached per (model, data hash) under ``$TDA_CACHE_DIR/calibration`` like the input
thresholds.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tda.common.errors import BadInput
from tda.masks import input_thresholds as it

_LOCK = threading.Lock()
_MEMO: dict[str, object] = {}  # cache file -> loaded calibration (this process)


@dataclass
class ChannelThresholds(it.InputThresholds):
    """Quantile grids per site (as the input thresholds), plus ``scales["chess.<L>"]`` = ``E|up_j|`` ``[d_ff]``."""

    scales: dict[str, list[float]] = field(default_factory=dict)

    def chess_cuts(self, layer: int, density: float) -> torch.Tensor:
        """Per-channel cut on ``|act(gate)_j|``: ``τ_L / m_j`` (zeros at density 1) ``[d_ff]`` float32."""
        site = f"chess.{layer}"
        m = torch.tensor(self.scales[site], dtype=torch.float64)
        tau = self.threshold(site, density)
        cut = tau / m.clamp_min(torch.finfo(torch.float64).tiny) if tau > 0 else torch.zeros_like(m)
        return cut.float()


def attention_projections(layer) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """``(q_proj, o_proj)`` of a decoder layer with separate q/k/v projections, else ``None``."""
    attn = getattr(layer, "self_attn", None)
    q, o = getattr(attn, "q_proj", None), getattr(attn, "o_proj", None)
    return (q, o) if q is not None and o is not None and hasattr(attn, "k_proj") else None


def calibrate_channels(lm, texts: list[str], *, seed: int = 0, progress=None) -> ChannelThresholds:
    """One dense pass over ``texts`` (the input thresholds' limits): importance scores and ``E|up_j|``
    of every (gated) FFN layer, ``|x|`` at its q and o inputs."""
    from tda.activations.capture import has_bos
    from tda.masks.calibrate import data_hash
    from tda.models.dispatch import linear_overrides, module_weight

    texts = clean_texts(texts)
    model, ffn = lm.model, lm.ffn
    if not ffn.gated:
        raise BadInput(f"CHESS's calibration needs a gated FFN; {lm.model_id} has none")
    gen = torch.Generator().manual_seed(int(seed))
    budget = max(1, it.SAMPLES_PER_SITE // len(texts))
    grids: dict[str, list[torch.Tensor]] = {}  # CHESS attention site -> per-text quantile grid
    scores: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # L -> per text (|act(gate)|, channel)
    up_means: dict[int, list[torch.Tensor]] = {}  # L -> per text E|up_j|
    state = {"valid": None, "n": 0}

    def rows(v: torch.Tensor) -> torch.Tensor:
        v = v.detach().reshape(-1, v.shape[-1])
        valid = state["valid"]
        return v[valid] if valid is not None and valid.numel() == v.shape[0] else v

    def sample(v: torch.Tensor) -> torch.Tensor:
        return sample_indices(v.numel(), budget, gen)

    def recorder(module, L: int, role: str):
        w, b = module_weight(module), getattr(module, "bias", None)

        def fn(x):
            if role in ("q", "o"):
                flat = rows(x).abs().float().flatten().cpu()
                grids.setdefault(f"chess.{role}.{L}", []).append(_grid(flat[sample(flat)]))
            y = torch.nn.functional.linear(x, w, b)
            if role == "gate":
                g = rows(ffn.act_fn(L)(y)).abs().float().cpu()
                idx = sample(g)
                scores.setdefault(L, []).append((g.flatten()[idx], (idx % g.shape[1]).to(torch.int32)))
            elif role == "up":
                up_means.setdefault(L, []).append(rows(y).abs().double().mean(dim=0).cpu())
            return y

        return fn

    table = {}
    for L in range(ffn.n_layers):
        table.update({m: recorder(m, L, r) for m, r in zip(ffn.in_modules(L), ("gate", "up"))})
        qo = attention_projections(ffn.layers[L])
        if qo is not None:
            table.update({m: recorder(m, L, r) for m, r in zip(qo, ("q", "o"))})
    skip_bos = has_bos(lm)
    with torch.inference_mode(), linear_overrides(table):
        for i, text in enumerate(texts):
            ids = lm.tokenizer(text, add_special_tokens=True).input_ids[:it.MAX_TOKENS_PER_TEXT]
            valid = torch.ones(len(ids), dtype=torch.bool)
            if skip_bos and len(ids) > 1:
                valid[0] = False
            state["valid"] = valid.to(lm.device)
            state["n"] += int(valid.sum())
            model.base_model(input_ids=torch.tensor([ids], device=lm.device), use_cache=False)
            if progress:
                progress(f"channel thresholds: text {i + 1}/{len(texts)}")
    quantiles, scales = {}, {}
    for site, per_text in grids.items():
        quantiles[site] = [float(v) for v in torch.stack(per_text).mean(dim=0)]
    for L, parts in scores.items():
        m = torch.stack(up_means[L]).mean(dim=0)
        grid = torch.stack([_grid(g.double() * m[ch.long()]) for g, ch in parts]).mean(dim=0)
        quantiles[f"chess.{L}"] = [float(v) for v in grid]
        scales[f"chess.{L}"] = [float(v) for v in m]
    return ChannelThresholds(lm.model_id, data_hash(texts), state["n"], quantiles, scales)


def _grid(values: torch.Tensor) -> torch.Tensor:
    """The :data:`~tda.masks.input_thresholds.GRID` + 1 quantile levels of ``values`` (float64)."""
    levels = torch.linspace(0, 1, it.GRID + 1, dtype=torch.float64)
    return torch.quantile(values.double(), levels)


def clean_texts(texts) -> list[str]:
    """The non-empty texts, at most :data:`~tda.masks.input_thresholds.MAX_TEXTS`; one-line error if none."""
    texts = [t for t in texts if isinstance(t, str) and t.strip()][:it.MAX_TEXTS]
    if not texts:
        raise BadInput("the calibration data is empty")
    return texts


def sample_indices(n: int, budget: int, gen: torch.Generator) -> torch.Tensor:
    """Flat indices of a seeded sample of ``budget`` of ``n`` entries (all of them when ``n ≤ budget``)."""
    return torch.randperm(n, generator=gen)[:budget] if n > budget else torch.arange(n)


def cache_path(model_id: str, dhash: str, kind: str) -> Path:
    """``$TDA_CACHE_DIR/calibration/<model>-<data hash>-<kind>.json`` (beside the input thresholds)."""
    p = it.cache_path(model_id, dhash)
    return p.with_name(p.name.removesuffix("-inputs.json") + f"-{kind}.json")


def cached(lm, texts: list[str], kind: str, cls, compute, what: str, problem):
    """``compute()`` once per (model, data hash, ``kind``): memoised in this process, stored as JSON
    (``cls(**json)``) with its content hash (:func:`tda.masks.validate.load_cached_json`: a damaged,
    unreadable, foreign or impossible file is recomputed with one line; ``problem(cal)`` says why
    values cannot be right, checked when read and before writing)."""
    from tda.masks import validate
    from tda.masks.calibrate import data_hash

    path = cache_path(lm.model_id, data_hash(texts), kind)
    with _LOCK:
        if str(path) in _MEMO and path.exists():
            return _MEMO[str(path)]
        cal = validate.load_cached_json(path, cls, what, problem, lm.model_id)
        if cal is None:
            cal = compute()
            validate.save_cached_json(path, cal, what, problem)
        _MEMO[str(path)] = cal
        return cal


def load_or_calibrate_channels(lm, texts: list[str] | None = None, *, progress=None) -> ChannelThresholds:
    """Cached :func:`calibrate_channels`; ``texts`` defaults to the shipped corpus."""
    from tda.common.data import load_texts

    texts = clean_texts(texts if texts is not None else load_texts())
    from tda.masks import validate

    return cached(lm, texts, "chess", ChannelThresholds, lambda: calibrate_channels(lm, texts, progress=progress),
                  "CHESS channel thresholds", lambda cal: validate.channel_thresholds_problem(cal, it.GRID))
