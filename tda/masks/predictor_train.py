"""Learned FFN-neuron predictors in the Deja Vu line, trained on the CPU from calibration text.

One predictor per layer, a rank-``r`` linear map of the FFN input ``x[d_model]`` to a score per
neuron: ``scores = (x A) B`` with ``A[d_model, r]``, ``B[r, d_ff]`` — the shape both reference
codes use (Deja Vu, FMInference/DejaVu ``sparse_predictor``: ``Linear(d, D) → Linear(D, d_ff)``,
no bias, no non-linearity; NimbleEdge's sparse_transformers ``FastLoRAProjection``, ``r`` = 4% of
``d_ff`` by default). Training follows their recipe: binary cross-entropy on the logits with
positives weighted 1 and negatives ``w = mean(label) + 0.005`` (Deja Vu's ``loss_weight``),
AdamW (weight decay 0.01), shuffled mini-batches.

Labels: both codes label a neuron active when its activation is ``> 0`` (ReLU OPT; for SiLU
models sparse_transformers keeps that rule). Here the label is the token's **true top-k**: the
``label_density · d_ff`` neurons with the largest ``|a_j|`` (``a = act(gate)·up``, the input of
the down projection) — the set a top-k method must find, and what the held-out recall reports.

Data: the calibration corpus (``data/corpus.jsonl``, disjoint from the evaluation text), at most
:data:`MAX_TEXTS` texts × 128 tokens, BOS left out — the whole shipped corpus (on Gemma 3 270M, one layer's
held-out recall rose from 0.633 with the 32 texts the threshold calibrations use to 0.658; training
recall stays near 0.68: the rank-r linear form, not the data, is the limit). The last texts
(:attr:`PredictorSettings.heldout`) are held out: recall of the true top-k among the predictor's
top-k on their tokens is reported per layer. Trained predictors are cached per (model, data hash,
settings) under ``$TDA_CACHE_DIR/calibration``, next to the model's other calibrations.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from tda.common.atomic import atomic_path
from tda.common.errors import BadInput
from tda.masks.calibrate import data_hash

MAX_TEXTS = 128
_LOCK = threading.Lock()
_MEMO: dict[str, NeuronPredictor] = {}


@dataclass(frozen=True)
class PredictorSettings:
    """``rank``: ``None`` = 4% of ``d_ff`` (at least 8, sparse_transformers' default share)."""

    rank: int | None = None
    epochs: int = 10
    label_density: float = 0.5
    lr: float = 3e-3
    batch: int = 256
    seed: int = 0
    heldout: int = 8  # texts held out for the recall report

    def check(self) -> PredictorSettings:
        if self.rank is not None and self.rank < 1:
            raise BadInput(f"rank must be at least 1, got {self.rank}")
        if self.epochs < 1:
            raise BadInput(f"epochs must be at least 1, got {self.epochs}")
        if not 0.0 < self.label_density < 1.0:
            raise BadInput(f"label density must be in (0, 1), got {self.label_density}")
        if not (math.isfinite(self.lr) and self.lr > 0.0) or self.batch < 1 or self.heldout < 0:
            raise BadInput("lr must be > 0, batch >= 1 and heldout >= 0")
        return self

    def rank_for(self, d_ff: int) -> int:
        return int(self.rank) if self.rank is not None else max(8, round(0.04 * d_ff))

    def key(self) -> str:
        return (f"r{self.rank if self.rank is not None else 'auto'}-e{self.epochs}-l{self.label_density:g}"
                f"-lr{self.lr:g}-b{self.batch}-s{self.seed}-h{self.heldout}")


@dataclass
class NeuronPredictor:
    """Per layer ``A[L][d_model, r]``, ``B[L][r, d_ff]`` and held-out ``recall[L]``."""

    model_id: str
    data_hash: str
    settings: dict
    A: list[torch.Tensor]
    B: list[torch.Tensor]
    recall: list[float]
    n_train: int
    n_heldout: int
    meta: dict = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return int(self.A[0].shape[1])

    def n_params(self) -> int:
        return sum(a.numel() + b.numel() for a, b in zip(self.A, self.B))

    def problem(self) -> str | None:
        """Why this predictor cannot be right (NaN/inf weights, held-out recall below chance), or None."""
        for name, mats in (("A", self.A), ("B", self.B)):
            for L, m in enumerate(mats):
                if not bool(torch.isfinite(m).all()):
                    return f"{name}[{L}] holds NaN or inf"
        chance = float(self.settings.get("label_density", 0.0)) if isinstance(self.settings, dict) else 0.0
        known = [r for r in self.recall if isinstance(r, int | float) and math.isfinite(r)]
        if len(known) != len([r for r in self.recall if r == r]):
            return "held-out recall holds inf"
        if known and chance > 0 and sum(known) / len(known) < chance:
            return (f"held-out recall {sum(known) / len(known):.3f} is below chance ({chance:g}, "
                    f"a random choice of the same share of neurons)")
        return None

    def save(self, path: str | Path) -> Path:
        bad = self.problem()
        if bad:  # never cached: `--method predictor` would pick it up
            raise BadInput(f"the trained predictor for {path} cannot be right: {bad}; not saved")
        with atomic_path(path) as tmp:
            torch.save({"info": json.dumps({k: v for k, v in asdict(self).items() if k not in ("A", "B")}),
                        "A": self.A, "B": self.B}, tmp)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> NeuronPredictor:
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            pred = cls(A=list(blob["A"]), B=list(blob["B"]), **json.loads(blob["info"]))
        except Exception as e:  # a truncated or foreign file
            raise BadInput(f"{path} is not a valid predictor file ({type(e).__name__})") from None
        bad = pred.problem()
        if bad:
            raise BadInput(f"predictor file {path} cannot be right: {bad}")
        return pred


def topk_labels(a: torch.Tensor, density: float) -> torch.Tensor:
    """``a[n, d_ff]`` -> bool ``[n, d_ff]``: each row's ``round(density · d_ff)`` largest ``|a_j|``."""
    k = max(1, round(density * a.shape[-1]))
    top = torch.topk(a.abs(), k, dim=-1).indices
    return torch.zeros(a.shape, dtype=torch.bool).scatter_(-1, top, True)


def topk_recall(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over rows of |predicted top-k ∩ true set| / |true set|, with k = the true set's size."""
    if not labels.shape[0]:
        return float("nan")
    k = int(labels[0].sum())
    top = torch.topk(scores, k, dim=-1).indices
    return float(labels.gather(-1, top).float().sum(dim=-1).div(labels.sum(dim=-1).clamp_min(1)).mean())


def train_layer(x: torch.Tensor, y: torch.Tensor, rank: int, *, epochs: int, lr: float, batch: int,
                seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ``A[d_model, r]``, ``B[r, d_ff]`` so that ``sigmoid((x A) B)`` predicts ``y`` (bool)."""
    with torch.inference_mode(False), torch.enable_grad():  # also when called during a generation
        return _fit(x.float().clone(), y.float(), rank, epochs, lr, batch, seed)


def _fit(x, y, rank, epochs, lr, batch, seed):
    gen = torch.Generator().manual_seed(int(seed))
    n, d = x.shape
    d_ff = y.shape[1]
    # Xavier-normal init (sparse_transformers), A scaled by the inputs' RMS so first logits are O(1)
    rms = float(x.pow(2).mean().sqrt()) or 1.0
    a = (torch.randn(d, rank, generator=gen) * math.sqrt(2.0 / (d + rank)) / rms).requires_grad_()
    b = (torch.randn(rank, d_ff, generator=gen) * math.sqrt(2.0 / (rank + d_ff))).requires_grad_()
    opt = torch.optim.AdamW([a, b], lr=lr, weight_decay=0.01)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch):
            rows = perm[i:i + batch]
            yb = y[rows]
            w = yb.mean() + 0.005
            loss = F.binary_cross_entropy_with_logits((x[rows] @ a) @ b, yb, weight=yb * (1 - w) + w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return a.detach().contiguous(), b.detach().contiguous()


def train_predictor(lm, texts: list[str], settings: PredictorSettings | None = None, *,
                    progress=None) -> NeuronPredictor:
    """Capture every layer's FFN input and true top-k labels on ``texts`` (one pass), hold out the
    last ``settings.heldout`` texts, train one predictor per layer and report held-out recall."""
    from tda.masks.linear_inputs import clean_texts, sample_linear_inputs

    settings = (settings or PredictorSettings()).check()
    texts = clean_texts(texts, MAX_TEXTS)
    ffn = lm.ffn
    n_layers = ffn.n_layers
    mods = [ffn.in_modules(L)[0] for L in range(n_layers)] + [ffn.out_module(L) for L in range(n_layers)]

    def to_label(j, rows):  # the down projection's input a -> its true top-k (bool: 32x smaller)
        return topk_labels(rows, settings.label_density) if j >= n_layers else rows

    data, where = sample_linear_inputs(lm, texts, mods, transform=to_label, progress=progress)
    held = min(settings.heldout, len(texts) // 4)  # at least 3/4 of the texts train
    test = torch.tensor([w >= len(texts) - held for w in where], dtype=torch.bool) if held > 0 else None
    train = ~test if test is not None else torch.ones(len(where), dtype=torch.bool)
    rank = settings.rank_for(ffn.d_ff)
    A, B, recall = [], [], []
    for L in range(n_layers):
        x, y = data[L], data[n_layers + L]
        a, b = train_layer(x[train], y[train], rank, epochs=settings.epochs, lr=settings.lr,
                           batch=settings.batch, seed=settings.seed + L)
        A.append(a)
        B.append(b)
        r = topk_recall((x[test] @ a) @ b, y[test]) if test is not None else float("nan")
        recall.append(r)
        data[L] = data[n_layers + L] = None  # free this layer's tokens
        if progress:
            progress(f"predictor: layer {L + 1}/{n_layers} trained (rank {rank}), held-out top-k recall {r:.3f}")
    n_test = int(test.sum()) if test is not None else 0
    return NeuronPredictor(lm.model_id, data_hash(texts), asdict(settings), A, B, recall,
                           n_train=len(where) - n_test, n_heldout=n_test,
                           meta={"d_model": int(ffn.d_model), "d_ff": int(ffn.d_ff), "n_layers": n_layers})


def cache_prefix(model_id: str, dhash: str) -> Path:
    """``<calibration folder>/<model>-<data hash>-predictor-``: next to the model's calibrations."""
    from tda.masks.input_thresholds import cache_path as inputs_path

    p = inputs_path(model_id, dhash)
    return p.with_name(p.name.removesuffix("-inputs.json") + "-predictor-")


def cache_path(model_id: str, dhash: str, settings: PredictorSettings) -> Path:
    prefix = cache_prefix(model_id, dhash)
    return prefix.with_name(prefix.name + f"{settings.key()}.pt")


def _fits(pred: NeuronPredictor, lm) -> bool:
    ffn = lm.ffn
    return (pred.model_id == lm.model_id and len(pred.A) == ffn.n_layers
            and tuple(pred.A[0].shape)[0] == ffn.d_model and tuple(pred.B[0].shape)[1] == ffn.d_ff)


def _read(path: Path, lm) -> NeuronPredictor | None:
    if str(path) in _MEMO:
        return _MEMO[str(path)]
    from tda.common import integrity

    if not integrity.cached_ok(path, "predictor"):
        return None
    try:
        pred = NeuronPredictor.load(path)
    except BadInput as e:
        integrity.drop(path, "predictor", str(e))
        return None
    if not _fits(pred, lm):
        return None
    _MEMO[str(path)] = pred
    return pred


def load_or_train(lm, texts: list[str] | None = None, settings: PredictorSettings | None = None, *,
                  newest: bool = False, progress=None) -> tuple[NeuronPredictor, bool]:
    """``(predictor, from_cache)``: the cached predictor for (model, data, ``settings``), trained and
    cached if missing. ``newest``: without ``settings``, take the most recently trained predictor of
    this model and data (any settings: what ``tda train-predictor`` made last), else the defaults."""
    from tda.common.data import load_texts
    from tda.masks.linear_inputs import clean_texts

    texts = clean_texts(texts if texts is not None else load_texts(), MAX_TEXTS)
    dhash = data_hash(texts)
    with _LOCK:
        if newest and settings is None:
            prefix = cache_prefix(lm.model_id, dhash)
            found = sorted(prefix.parent.glob(f"{prefix.name}*.pt"), key=lambda p: p.stat().st_mtime)
            for p in reversed(found):
                pred = _read(p, lm)
                if pred is not None:
                    return pred, True
        settings = (settings or PredictorSettings()).check()
        path = cache_path(lm.model_id, dhash, settings)
        if path.exists():
            pred = _read(path, lm)
            if pred is not None:
                return pred, True
        pred = train_predictor(lm, texts, settings, progress=progress)
        pred.save(path)
        from tda.common import integrity

        integrity.record(path)
        _MEMO[str(path)] = pred
        return pred, False
