"""CETT calibration of per-layer thresholds ``t_L`` on calibration text, cached on disk.

``calibrate(lm, texts, target)`` captures all layers of the texts (batched), then bisects each
layer's threshold with :func:`tda.masks.cett.find_threshold` over all calibration tokens, and reports
the density that threshold gives (fraction of token×neuron pairs active). Results are cached
under ``$TDA_CACHE_DIR/calibration`` keyed by (model id, data hash, target); a file of the same
name under ``tda/assets/calibration`` (the embedded model on the shipped corpus) is used when the
cache has none, so a fresh machine does not calibrate.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tda.common import progress as report
from tda.common.atomic import write_text_atomic
from tda.common.data import data_hash
from tda.common.errors import BadInput
from tda.common.paths import ASSETS_DIR, cache_dir
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
        from tda.masks import validate

        validate.refuse(validate.calibration_problem(self), path, "threshold file")  # never written
        return write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        from tda.masks import validate

        p = Path(path)
        try:
            cal = cls(**json.loads(p.read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise BadInput(f"{p} is not a valid threshold file ({type(e).__name__})") from None
        validate.refuse(validate.calibration_problem(cal), p, "threshold file")
        return cal

    def check_model(self, lm) -> Calibration:
        """Fail loud if these thresholds were made for another model."""
        if self.model_id != lm.model_id or self.d_ff != lm.ffn.d_ff or self.n_layers != lm.ffn.n_layers:
            raise BadInput(
                f"thresholds are for model '{self.model_id}' (d_ff {self.d_ff}, {self.n_layers} layers), "
                f"not '{lm.model_id}' (d_ff {lm.ffn.d_ff}, {lm.ffn.n_layers} layers)"
            )
        return self


MAX_TOKENS = 4096  # a seeded subsample of calibration tokens per layer bounds the search's cost


def calibrate(lm, texts: list[str], target: float = DEFAULT_CETT, *, batch_size: int = 8,
              progress=None, max_tokens: int = MAX_TOKENS) -> Calibration:
    """Find ``t_L`` for every layer so that mean CETT over the calibration tokens is ``target``.

    Under a distributed launcher each process captures its share of the texts (whole batches,
    so every text is captured in the batch a one-process run would use); the sampled calibration
    tokens are gathered in text order to the main process, which bisects exactly as one process
    would (same tensors, same reductions: bit-identical thresholds) and hands the result to all.
    """
    from tda.common import distributed as dist

    target = check_target(target)
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise BadInput("the calibration data is empty")
    from tda.activations.capture import has_bos, iter_batch_captures, tokenize

    # Each text's calibration tokens (as the capture yields them: BOS left out) are known before
    # capturing, so the seeded subsample is drawn first and every batch keeps only its sampled rows:
    # the corpus's activations are never held whole (1.3 GB for the embedded model on its corpus).
    skip = 1 if has_bos(lm) else 0
    n_text = [max(len(tokenize(lm, t)) - skip, 0) for t in texts]
    total = sum(n_text)
    mine = dist.shard_range(len(texts), unit=batch_size)
    offset, n_mine = sum(n_text[:mine.start]), sum(n_text[mine.start:mine.stop])
    pick = None  # the same seeded subsample of all tokens as one process draws
    if total > max_tokens:
        pick = torch.randperm(total, generator=torch.Generator().manual_seed(0))[:max_tokens].sort().values
    local = None if pick is None else pick[(pick >= offset) & (pick < offset + n_mine)] - offset
    kept: list[torch.Tensor] = []  # this rank's sampled tokens per layer, rows in text order

    def capture_shard() -> int:
        if not len(mine):
            return 0
        it = iter_batch_captures(lm, texts[mine.start:mine.stop], None, batch_size=batch_size)
        if progress is not None and dist.is_main():
            it = progress(it, total=len(mine))
        elif dist.is_main():
            it = report.iterate(it, "CETT calibration: capturing the corpus", total=len(mine), unit="texts")
        n_rows = n_mine if local is None else len(local)
        at = row = 0  # the text's first token among this rank's tokens; the next row of ``kept`` to fill
        for k, cap in enumerate(it):
            n = cap.acts.shape[1]
            if n != n_text[mine.start + k]:  # pragma: no cover - the capture and tokenize() disagree
                raise RuntimeError(f"calibration text {mine.start + k}: captured {n} tokens, expected "
                                   f"{n_text[mine.start + k]}")
            if not kept:
                kept.extend(cap.acts.new_empty((n_rows, cap.acts.shape[2])) for _ in cap.layers)
            rows = None if local is None else local[(local >= at) & (local < at + n)] - at
            m = n if rows is None else len(rows)
            for i in range(len(cap.layers)):
                kept[i][row:row + m] = cap.acts[i] if rows is None else cap.acts[i, rows]
            at, row = at + n, row + m
        return at

    dist.collect(capture_shard)

    def select() -> list[torch.Tensor]:
        """This rank's sampled tokens per layer (rows in text order)."""
        return kept if n_mine else []

    parts = dist.collect(select, to="main")

    def bisect() -> Calibration:
        from tda.masks.build import model_down_norms

        shards = [p for p in parts if p]
        norms = model_down_norms(lm)
        thresholds, densities = [], []
        n_tokens = 0
        for L in report.iterate(range(lm.ffn.n_layers), f"CETT calibration: thresholds for target {target:g}",
                                unit="layers"):
            acts = shards[0][L] if len(shards) == 1 else torch.cat([p[L] for p in shards])
            n_tokens = acts.shape[0]
            w = lm.ffn.down_weight(L).detach().float().cpu()
            t = find_threshold(acts, w, target, iters=24)
            thresholds.append(t)
            densities.append(float(active_by_threshold(acts, norms[L], t).float().mean()))
        return Calibration(
            model_id=lm.model_id, d_ff=lm.ffn.d_ff, n_layers=lm.ffn.n_layers, target=target,
            data_hash=data_hash(texts), n_tokens=n_tokens, thresholds=thresholds, densities=densities,
        )

    return dist.on_main(bisect)


def cache_path(model_id: str, dhash: str, target: float) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)
    d = cache_dir() / "calibration"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{safe}-{dhash}-cett{target:g}.json"


SHIPPED_DIR = ASSETS_DIR / "calibration"  # default calibrations shipped with the package


def shipped_path(name: str) -> Path | None:
    """The shipped calibration with cache file name ``name`` (same model id, data hash and target)."""
    p = SHIPPED_DIR / name
    return p if p.is_file() else None


def load_shipped(name: str, lm) -> Calibration | None:
    """The shipped CETT calibration that the cache would hold under ``name``, or None.

    The cache file name carries the model id, the calibration data's hash and the target, so a
    shipped file is used only when all three match exactly (and d_ff and the layer count agree).
    """
    p = shipped_path(name)
    if p is None:
        return None
    try:
        cal = Calibration.load(p).check_model(lm)
    except BadInput:
        return None
    report.note(f"CETT thresholds: using the shipped calibration {p.name} (no calibration needed)")
    return cal


def load_or_calibrate(lm, texts: list[str] | None = None, target: float = DEFAULT_CETT, *,
                      progress=None) -> Calibration:
    """Cached :func:`calibrate`; ``texts`` defaults to the shipped corpus."""
    from tda.common import distributed as dist
    from tda.common.data import load_texts

    target = check_target(target)
    texts = texts if texts is not None else load_texts()
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise BadInput("the calibration data is empty")
    path = cache_path(lm.model_id, data_hash(texts), target)

    from tda.masks import validate

    def cached() -> Calibration | None:  # the main process decides, so every rank agrees
        if path.exists() and validate.cached_ok(path, "calibration"):
            try:
                return Calibration.load(path).check_model(lm)
            except BadInput as e:
                validate.drop(path, "calibration", str(e))
        return load_shipped(path.name, lm)

    def save() -> None:
        cal.save(path)
        validate.record(path)

    cal = dist.on_main(cached)
    if cal is None:
        cal = calibrate(lm, texts, target, progress=progress)
        dist.on_main(save)
    return cal
