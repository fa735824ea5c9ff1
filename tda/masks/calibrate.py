"""CETT calibration of per-layer thresholds ``t_L`` on calibration text, cached on disk.

``calibrate(lm, texts, target)`` captures all layers of the texts (batched), then bisects each
layer's threshold with :func:`tda.masks.cett.find_threshold` over all calibration tokens, and reports
the density that threshold gives (fraction of token×neuron pairs active). Results are cached
under ``$TDA_CACHE_DIR/calibration`` keyed by (model id, data hash, target).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tda.common.atomic import write_text_atomic
from tda.common.errors import BadInput
from tda.common.paths import cache_dir
from tda.masks.cett import DEFAULT_CETT, active_by_threshold, check_target, find_threshold


@dataclass
class Calibration:
    """Per-layer CETT thresholds and the densities they give on the calibration data."""

    model_id: str
    d_ff: int
    n_layers: int
    target: float
    data_hash: str
    n_tokens: int
    thresholds: list[float]
    densities: list[float]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def save(self, path: str | Path) -> Path:
        return write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        p = Path(path)
        try:
            return cls(**json.loads(p.read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise BadInput(f"{p} is not a valid threshold file ({type(e).__name__})") from None

    def check_model(self, lm) -> Calibration:
        """Fail loud if these thresholds were made for another model."""
        if self.model_id != lm.model_id or self.d_ff != lm.ffn.d_ff or self.n_layers != lm.ffn.n_layers:
            raise BadInput(
                f"thresholds are for model '{self.model_id}' (d_ff {self.d_ff}, {self.n_layers} layers), "
                f"not '{lm.model_id}' (d_ff {lm.ffn.d_ff}, {lm.ffn.n_layers} layers)"
            )
        return self


def data_hash(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


MAX_TOKENS = 4096  # a seeded subsample of calibration tokens per layer bounds the search's cost


def calibrate(lm, texts: list[str], target: float = DEFAULT_CETT, *, batch_size: int = 8,
              progress=None, max_tokens: int = MAX_TOKENS) -> Calibration:
    """Find ``t_L`` for every layer so that mean CETT over the calibration tokens is ``target``."""
    from tda.activations.capture import iter_batch_captures
    from tda.masks.build import model_down_norms

    target = check_target(target)
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise BadInput("the calibration data is empty")
    per_layer: list[list[torch.Tensor]] = [[] for _ in range(lm.ffn.n_layers)]
    it = iter_batch_captures(lm, texts, None, batch_size=batch_size)
    if progress is not None:
        it = progress(it, total=len(texts))
    for cap in it:
        for i in range(len(cap.layers)):
            per_layer[i].append(cap.acts[i])
    norms = model_down_norms(lm)
    thresholds, densities = [], []
    n_tokens = 0
    total = sum(a.shape[0] for a in per_layer[0])
    pick = None
    if total > max_tokens:
        pick = torch.randperm(total, generator=torch.Generator().manual_seed(0))[:max_tokens].sort().values
    for L in range(lm.ffn.n_layers):
        acts = torch.cat(per_layer[L])
        if pick is not None:
            acts = acts[pick]
        n_tokens = acts.shape[0]
        w = lm.ffn.down_weight(L).detach().float().cpu()
        t = find_threshold(acts, w, target, iters=24)
        thresholds.append(t)
        densities.append(float(active_by_threshold(acts, norms[L], t).float().mean()))
    return Calibration(
        model_id=lm.model_id, d_ff=lm.ffn.d_ff, n_layers=lm.ffn.n_layers, target=target,
        data_hash=data_hash(texts), n_tokens=n_tokens, thresholds=thresholds, densities=densities,
    )


def cache_path(model_id: str, dhash: str, target: float) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)
    d = cache_dir() / "calibration"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{safe}-{dhash}-cett{target:g}.json"


def load_or_calibrate(lm, texts: list[str] | None = None, target: float = DEFAULT_CETT, *,
                      progress=None) -> Calibration:
    """Cached :func:`calibrate`; ``texts`` defaults to the shipped corpus."""
    from tda.common.data import load_texts

    target = check_target(target)
    texts = texts if texts is not None else load_texts()
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise BadInput("the calibration data is empty")
    path = cache_path(lm.model_id, data_hash(texts), target)
    if path.exists():
        try:
            return Calibration.load(path).check_model(lm)
        except BadInput:
            path.unlink(missing_ok=True)
    cal = calibrate(lm, texts, target, progress=progress)
    cal.save(path)
    return cal
