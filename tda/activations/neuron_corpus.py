"""Every neuron's activation statistics over a corpus, computed once and cached on disk.

One pass of :func:`tda.activations.capture.iter_batch_captures` over the texts (the shipped
corpus by default) records, per layer and neuron,

- the distribution of ``a`` (TransformerLens ``hook_post``, the down projection's input) as
  quantiles at the probability :data:`LEVELS` (a 1/256 grid refined in both tails) — enough to
  redraw its histogram and to read the fraction of corpus tokens beyond any cut-off, in a few MB;
- the same for ``act(gate)`` of gated FFNs (CATS thresholds ``|act(gate)|``, a different
  quantity), recorded in the same forward through a per-context override of the gate projection;
- the :data:`TOP_K` largest and smallest ``a`` with their corpus token positions (for the
  top-activating contexts).

Results are cached per (model id, data hash) under ``$TDA_CACHE_DIR/neurons`` (safetensors,
written atomically) and kept in memory for the process, like the calibrations of
:mod:`tda.masks`.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tda.common.atomic import atomic_path
from tda.common.errors import BadInput
from tda.common.paths import cache_dir

FORMAT_VERSION = 2
TAILS = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3)  # extra levels near 0 and 1: rare large activations keep their shape
LEVELS = tuple(sorted({k / 256 for k in range(257)} | set(TAILS) | {1 - t for t in TAILS}))
TOP_K = 16  # largest and smallest activations kept per neuron
_LOCK = threading.Lock()
_MEMO: dict[str, CorpusStats] = {}  # cache file -> loaded statistics (this process)


@dataclass
class CorpusStats:
    """Per-neuron activation statistics over a corpus (all tensors CPU).

    ``token_ids[n]`` are the corpus tokens text after text (BOS excluded), text ``j`` being
    ``token_ids[offsets[j]:offsets[j + 1]]``. ``quantiles[layer, level, neuron]`` (float16) are
    the quantiles of ``a`` at the probabilities ``levels[level]`` (:data:`LEVELS`);
    ``gate_quantiles`` the same for ``act(gate)``
    (None for non-gated FFNs). ``top_values[layer, k, neuron]`` / ``top_index`` (indices into
    ``token_ids``) hold the largest ``a``, ``bottom_*`` the smallest.
    """

    model_id: str
    data_hash: str
    token_ids: torch.Tensor
    offsets: torch.Tensor
    quantiles: torch.Tensor
    gate_quantiles: torch.Tensor | None
    top_values: torch.Tensor
    top_index: torch.Tensor
    bottom_values: torch.Tensor
    bottom_index: torch.Tensor
    levels: torch.Tensor = field(default_factory=lambda: torch.tensor(LEVELS, dtype=torch.float64))

    @property
    def n_tokens(self) -> int:
        return int(self.token_ids.numel())

    @property
    def n_texts(self) -> int:
        return int(self.offsets.numel()) - 1

    def locate(self, index: int) -> tuple[int, int]:
        """``(text, position)`` of corpus token ``index``."""
        text = int(torch.searchsorted(self.offsets, torch.tensor([int(index)]), right=True)[0]) - 1
        return text, int(index) - int(self.offsets[text])

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        tensors = {k: getattr(self, k).contiguous() for k in
                   ("token_ids", "offsets", "quantiles", "top_values", "top_index", "bottom_values", "bottom_index",
                  "levels")}
        if self.gate_quantiles is not None:
            tensors["gate_quantiles"] = self.gate_quantiles.contiguous()
        meta = {"format": FORMAT_VERSION, "model_id": self.model_id, "data_hash": self.data_hash}
        bad = self.problem()
        if bad:  # never written
            raise BadInput(f"corpus statistics for {path} cannot be right: {bad}")
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"tda": json.dumps(meta)})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> CorpusStats:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["tda"])
                if meta.get("format") != FORMAT_VERSION:
                    raise ValueError("format")
                t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
            stats = cls(model_id=meta["model_id"], data_hash=meta["data_hash"], token_ids=t["token_ids"],
                       offsets=t["offsets"], quantiles=t["quantiles"], gate_quantiles=t.get("gate_quantiles"),
                       top_values=t["top_values"], top_index=t["top_index"], bottom_values=t["bottom_values"],
                       bottom_index=t["bottom_index"], levels=t["levels"])
        except Exception as e:  # safetensors raises several types for a damaged file
            raise BadInput(f"{path} is not a valid corpus statistics file ({type(e).__name__})") from None
        bad = stats.problem()
        if bad:
            raise BadInput(f"corpus statistics file {path} cannot be right: {bad}")
        return stats

    def problem(self) -> str | None:
        """Why these statistics cannot be right (NaN/inf values, unordered quantiles, indices
        outside the corpus), or None."""
        for name in ("quantiles", "gate_quantiles", "top_values", "bottom_values"):
            t = getattr(self, name)
            if t is not None and not bool(torch.isfinite(t).all()):
                return f"{name} hold NaN or inf"
        if self.quantiles.ndim == 3 and bool((self.quantiles.float().diff(dim=1) < 0).any()):
            return "quantiles are not increasing"
        n = self.n_tokens
        for name in ("top_index", "bottom_index"):
            t = getattr(self, name)
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= max(n, 1)):
                return f"{name} point outside the corpus"
        if self.offsets.numel() < 1 or int(self.offsets[0]) != 0 or int(self.offsets[-1]) != n \
                or bool((self.offsets.diff() < 0).any()):
            return "text offsets do not match the tokens"
        return None


def quantile_rows(values: torch.Tensor, levels=LEVELS) -> torch.Tensor:
    """``q[level, neuron]``: nearest-rank quantiles at the probabilities ``levels`` of ``values[token, neuron]``."""
    import numpy as np

    n = values.shape[0]
    ranks = np.round(np.asarray(levels, dtype=np.float64) * (n - 1)).astype(np.int64)
    rows = values.T.contiguous().numpy()  # [neuron, token]: numpy sorts rows ~10x faster than torch here
    rows.sort(axis=1)
    return torch.from_numpy(np.ascontiguousarray(rows[:, ranks].T))


def _gate_recorder(module, layer: int, store: dict, ffn):
    """An override of the gate projection of ``layer`` that records ``act(gate)`` and computes densely."""
    import torch.nn.functional as F

    from tda.models.dispatch import module_weight

    w, b, act = module_weight(module), getattr(module, "bias", None), ffn.act_fn(layer)

    def fn(x):
        y = F.linear(x, w, b)
        store.setdefault(layer, []).append(act(y).detach().reshape(-1, y.shape[-1]))
        return y

    return fn


def gate_overrides(lm, layers, store: dict) -> dict:
    """``{gate module: override}`` appending each forward's ``act(gate)[position, d_ff]`` (batch and
    positions flattened) to ``store[layer]`` (gated FFNs; else ``{}``)."""
    if not lm.ffn.gated:
        return {}
    return {lm.ffn.in_modules(L)[0]: _gate_recorder(lm.ffn.in_modules(L)[0], L, store, lm.ffn) for L in layers}


def corpus_stats(lm, texts: list[str], *, progress=None, top_k: int = TOP_K) -> CorpusStats:
    """One pass over ``texts`` (one text a forward, so no padding): see the module docstring.

    ``progress(done, total)`` is called after each text and then after each layer's statistics
    (``total`` = texts + layers). Memory: every layer's ``a`` (and
    ``act(gate)``) of the whole corpus in float16 while the statistics are computed.
    """
    from tda.activations.capture import iter_batch_captures
    from tda.common.data import data_hash
    from tda.models.dispatch import linear_overrides

    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise BadInput("the corpus is empty")
    ffn = lm.ffn
    layers = list(range(ffn.n_layers))
    gates: dict[int, list[torch.Tensor]] = {}
    a_parts: list[list[torch.Tensor]] = [[] for _ in layers]
    g_parts: list[list[torch.Tensor]] = [[] for _ in layers]
    ids: list[int] = []
    offsets = [0]
    with linear_overrides(gate_overrides(lm, layers, gates)):
        it = iter_batch_captures(lm, texts, layers, batch_size=1, max_tokens=lm.n_ctx)
        for j, cap in enumerate(it):
            n = cap.n_tokens
            start = 1 if cap.meta.get("bos_excluded") else 0
            for L in layers:
                a_parts[L].append(cap.acts[L].half())
                if ffn.gated:
                    g_parts[L].append(torch.cat(gates.pop(L))[start:start + n].float().cpu().half())
            ids += cap.token_ids
            offsets.append(len(ids))
            if progress is not None:
                progress(j + 1, len(texts) + len(layers))
    k = min(top_k, len(ids))
    q, gq, top_v, top_i, bot_v, bot_i = [], [], [], [], [], []
    for L in layers:
        a = torch.cat(a_parts[L]).float()
        a_parts[L] = []
        q.append(quantile_rows(a).half())
        top = a.topk(k, dim=0)
        bot = a.topk(k, dim=0, largest=False)
        top_v.append(top.values)
        top_i.append(top.indices.int())
        bot_v.append(bot.values)
        bot_i.append(bot.indices.int())
        if ffn.gated:
            gq.append(quantile_rows(torch.cat(g_parts[L]).float()).half())
            g_parts[L] = []
        if progress is not None:
            progress(len(texts) + L + 1, len(texts) + len(layers))
    return CorpusStats(
        model_id=lm.model_id, data_hash=data_hash(texts), token_ids=torch.tensor(ids, dtype=torch.int32),
        offsets=torch.tensor(offsets, dtype=torch.int64), quantiles=torch.stack(q),
        gate_quantiles=torch.stack(gq) if ffn.gated else None, top_values=torch.stack(top_v),
        top_index=torch.stack(top_i), bottom_values=torch.stack(bot_v), bottom_index=torch.stack(bot_i),
    )


def cache_path(model_id: str, dhash: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)
    d = cache_dir() / "neurons"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{safe}-{dhash}-corpus.safetensors"


def _texts(texts: list[str] | None) -> list[str]:
    from tda.common.data import load_texts

    texts = texts if texts is not None else load_texts()
    return [t for t in texts if isinstance(t, str) and t.strip()]


def cached_corpus_stats(lm, texts: list[str] | None = None) -> CorpusStats | None:
    """The statistics when already computed (memory or disk), else None — never computes."""
    from tda.common.data import data_hash

    path = cache_path(lm.model_id, data_hash(_texts(texts)))
    with _LOCK:
        return _cached(lm, path)


def _cached(lm, path: Path) -> CorpusStats | None:
    if str(path) in _MEMO and path.exists():
        return _MEMO[str(path)]
    from tda.common import integrity

    if path.exists() and integrity.cached_ok(path, "neuron statistics"):
        try:
            stats = CorpusStats.load(path)
            if stats.model_id == lm.model_id and stats.quantiles.shape[1:] == (len(LEVELS), lm.ffn.d_ff):
                _MEMO[str(path)] = stats
                return stats
        except BadInput as e:
            integrity.drop(path, "neuron statistics", str(e))
        path.unlink(missing_ok=True)
    return None


def load_or_compute_corpus_stats(lm, texts: list[str] | None = None, *, progress=None) -> CorpusStats:
    """Cached :func:`corpus_stats`; ``texts`` defaults to the shipped corpus (``data/corpus.jsonl``)."""
    from tda.common.data import data_hash

    texts = _texts(texts)
    if not texts:
        raise BadInput("the corpus is empty")
    path = cache_path(lm.model_id, data_hash(texts))
    with _LOCK:  # one computation at a time; a second caller then finds it cached
        stats = _cached(lm, path)
        if stats is None:
            stats = corpus_stats(lm, texts, progress=progress)
            stats.save(path)
            from tda.common import integrity

            integrity.record(path)
            _MEMO[str(path)] = stats
        return stats
