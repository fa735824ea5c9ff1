"""Per-tensor magnitude thresholds on linear *inputs*, calibrated offline to a target density.

Token-wise methods keep, at every decode step, the entries of a linear's input whose magnitude
passes a threshold: TEAL (arXiv 2408.14690) thresholds ``|x_i|`` at the input of every linear of
every block; CATS (arXiv 2404.08763) thresholds ``|act(W_gate x)_j|`` per layer. The thresholds
come from the activation distribution on calibration text: for a target density ``d`` (fraction
of entries kept), the threshold of a site is the ``1 - d`` quantile of its ``|value|`` over all
calibration tokens (BOS and pad positions excluded). The calibration keeps each site's quantiles on
a grid of :data:`GRID` + 1 levels, so any density is answered (by linear interpolation between
grid levels) from one pass.

Sites are named by module: ``"<module name>"`` for the input of that linear (e.g.
``model.layers.3.self_attn.q_proj``; q, k and v share an input and get the same threshold),
``"gate_act.<L>"`` for CATS's ``|act(gate)|`` of layer ``L``, and the lm_head's own module name
for its input (the final hidden state). Values are sampled (seeded, at most
:data:`SAMPLES_PER_SITE` per site) so memory stays bounded; results are cached per (model, data
hash) under ``$TDA_CACHE_DIR/calibration``, like :mod:`tda.masks.calibrate` (and shipped for the
embedded model on the shipped corpus under ``tda/assets/calibration``).
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tda.activations.capture import has_bos
from tda.common import progress as report
from tda.common.atomic import write_text_atomic
from tda.common.errors import BadInput
from tda.common.paths import cache_dir
from tda.masks.calibrate import data_hash, shipped_path

SAMPLES_PER_SITE = 1 << 18
GRID = 400  # quantile levels 0, 1/GRID, ..., 1
MAX_TOKENS_PER_TEXT = 128
MAX_TEXTS = 32
_LOCK = threading.Lock()
# cache file -> (loaded thresholds, the file they came from: the cache file or the shipped one), this process
_MEMO: dict[str, tuple[InputThresholds, Path]] = {}


@dataclass
class InputThresholds:
    """``quantiles[site][i]``: the ``i/GRID`` quantile of ``|value|`` at each site."""

    model_id: str
    data_hash: str
    n_tokens: int
    quantiles: dict[str, list[float]]

    def threshold(self, site: str, density: float) -> float:
        """The magnitude that keeps a fraction ``density`` of ``site``'s entries (0 at density 1)."""
        if density >= 1.0:
            return 0.0
        q = self.quantiles.get(site)
        if q is None:
            raise KeyError(f"no calibrated threshold for '{site}'")
        pos = (1.0 - float(density)) * (len(q) - 1)
        i = min(int(pos), len(q) - 2)
        f = pos - i
        return float(q[i] * (1 - f) + q[i + 1] * f)

    def thresholds(self, density: float) -> dict[str, float]:
        return {site: self.threshold(site, density) for site in self.quantiles}

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> InputThresholds:
        from tda.masks import validate

        try:
            cal = cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise BadInput(f"{path} is not a valid input-threshold file ({type(e).__name__})") from None
        validate.refuse(validate.input_thresholds_problem(cal, GRID), path, "input-threshold file")
        return cal


def module_names(model: torch.nn.Module) -> dict[int, str]:
    """``{id(module): qualified name}`` of every module of ``model``."""
    return {id(m): n for n, m in model.named_modules()}


def calibrate_inputs(lm, texts: list[str], *, seed: int = 0, progress=None) -> InputThresholds:
    """Quantiles of ``|x|`` at every linear input of every block, CATS's gate sites and the lm_head
    input — one pass over ``texts`` (at most :data:`MAX_TEXTS`, :data:`MAX_TOKENS_PER_TEXT` each)."""
    from tda.models.dispatch import linear_modules, linear_overrides

    texts = [t for t in texts if isinstance(t, str) and t.strip()][:MAX_TEXTS]
    if not texts:
        raise BadInput("the calibration data is empty")
    model, ffn = lm.model, lm.ffn
    names = module_names(model)
    head = model.get_output_embeddings()
    block_ids = {id(m) for layer in ffn.layers for m in layer.modules()}
    mods = [m for m in linear_modules(model) if id(m) in block_ids and m is not head]
    gates = {id(ffn.in_modules(L)[0]): L for L in range(ffn.n_layers)} if ffn.gated else {}
    gen = torch.Generator().manual_seed(int(seed))
    samples: dict[str, list[torch.Tensor]] = {}
    state = {"valid": None}
    budget = max(1, SAMPLES_PER_SITE // len(texts))

    def take(site: str, v: torch.Tensor) -> None:
        v = v.reshape(-1, v.shape[-1])
        valid = state["valid"]
        if valid is not None and valid.numel() == v.shape[0]:
            v = v[valid]
        flat = v.detach().abs().float().flatten().cpu()
        if flat.numel() > budget:
            flat = flat[torch.randperm(flat.numel(), generator=gen)[:budget]]
        samples.setdefault(site, []).append(flat)

    table = {m: _recorder(m, names[id(m)], take, gates.get(id(m)), ffn) for m in mods}
    n_tokens = 0
    skip_bos = has_bos(lm)
    job = report.task("calibrating input thresholds (one time per model and corpus)", total=len(texts),
                      sink=progress, unit="texts")
    with job, torch.inference_mode(), linear_overrides(table):
        for i, text in enumerate(texts):
            ids = lm.tokenizer(text, add_special_tokens=True).input_ids[:MAX_TOKENS_PER_TEXT]
            x = torch.tensor([ids], device=lm.device)
            valid = torch.ones(len(ids), dtype=torch.bool)
            if skip_bos and len(ids) > 1:
                valid[0] = False
            state["valid"] = valid.to(lm.device)
            n_tokens += int(valid.sum())
            out = model.base_model(input_ids=x, use_cache=False)
            if head is not None:
                take(names[id(head)], out.last_hidden_state)
            job.update(i + 1)
    levels = torch.linspace(0, 1, GRID + 1, dtype=torch.float64)
    quantiles = {}
    for site, parts in samples.items():
        vals = torch.cat(parts).double()
        quantiles[site] = [float(v) for v in torch.quantile(vals, levels)]
    return InputThresholds(lm.model_id, data_hash(texts), n_tokens, quantiles)


def _recorder(module, name: str, take, gate_layer: int | None, ffn):
    """An override that records the input (and, for a gate, ``|act(gate)|``) and computes densely."""
    import torch.nn.functional as F

    from tda.models.dispatch import module_weight

    w, b = module_weight(module), getattr(module, "bias", None)

    def fn(x):
        take(name, x)
        y = F.linear(x, w, b)
        if gate_layer is not None:
            take(f"gate_act.{gate_layer}", ffn.act_fn(gate_layer)(y))
        return y

    return fn


def cache_path(model_id: str, dhash: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)
    d = cache_dir() / "calibration"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{safe}-{dhash}-inputs.json"


def load_shipped_inputs(name: str, lm, progress=None) -> InputThresholds | None:
    """The shipped quantiles the cache would hold under ``name`` (same model id and data hash:
    :func:`tda.masks.calibrate.shipped_path`), or None."""
    p = shipped_path(name)
    if p is None:
        return None
    try:
        cal = InputThresholds.load(p)
    except BadInput:
        return None
    if cal.model_id != lm.model_id or any(len(q) != GRID + 1 for q in cal.quantiles.values()):
        return None
    report.note(f"input thresholds: using the shipped calibration {p.name} (no calibration needed)", sink=progress)
    return cal


def load_or_calibrate_inputs(lm, texts: list[str] | None = None, *, progress=None) -> InputThresholds:
    """Cached :func:`calibrate_inputs`; ``texts`` defaults to the shipped corpus."""
    from tda.common.data import load_texts

    texts = texts if texts is not None else load_texts()
    texts = [t for t in texts if isinstance(t, str) and t.strip()][:MAX_TEXTS]
    if not texts:
        raise BadInput("the calibration data is empty")
    path = cache_path(lm.model_id, data_hash(texts))
    with _LOCK:
        hit = _MEMO.get(str(path))
        if hit is not None and hit[1].exists():  # a deleted cache file is calibrated anew
            return hit[0]
        from tda.masks import validate

        if path.exists() and validate.cached_ok(path, "input thresholds", sink=progress):
            try:
                cal = InputThresholds.load(path)
                if cal.model_id == lm.model_id:
                    _MEMO[str(path)] = (cal, path)
                    return cal
            except BadInput as e:
                validate.drop(path, "input thresholds", str(e), sink=progress)
            path.unlink(missing_ok=True)
        cal = load_shipped_inputs(path.name, lm, progress)
        if cal is not None:
            _MEMO[str(path)] = (cal, shipped_path(path.name))
            return cal
        cal = calibrate_inputs(lm, texts, progress=progress)
        validate.refuse(validate.input_thresholds_problem(cal, GRID), path, "input-threshold file")
        write_text_atomic(path, cal.to_json())
        validate.record(path)
        _MEMO[str(path)] = (cal, path)
        return cal
