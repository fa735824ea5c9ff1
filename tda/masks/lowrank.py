"""R-Sparse's split of a linear into an input-sparse part and a low-rank part, calibrated offline.

R-Sparse (Zhang et al., ICLR 2025; code: VITA-Group/R-Sparse) computes ``y = W x`` at decode as

    y = W[:, S] x_S  +  U_r (S_r V_r^T x_{not S})          (W = U S V^T, the weight's SVD)

where ``S`` holds the inputs with a large score. Their code (``models/modeling_llama.py``,
``utils/setup.py``) fixes, per linear and for a target density ``d`` (their ``1 - s``):

* a *sparse ratio* ``alpha`` in [0, 1] (from an evolutionary search whose recipe is not
  published — their issue #2 — shipped as ``config/*_evolutionary_search.npy``);
* ``channels = int(d_in · d · alpha)`` inputs in ``S``; ``tau`` is the calibration quantile that
  keeps that fraction: the score is ``|x_i|`` when ``alpha = 1`` and ``|x_i|·‖W[:, i]‖₂`` otherwise
  (``‖W[:, i]‖ = ‖S V^T[:, i]‖``, their ``scale``); an input is in ``S`` when its score is ``> tau``;
* ``rank = int((d·d_in·d_out − channels·d_out) / (d_in + d_out))``: the bytes left for the two
  low-rank factors once the sparse rows are paid for, so sparse + low-rank bytes = ``d`` × dense
  (their ``max(·, 1)`` floors are left out, so ``alpha = 0`` is a pure low-rank product and
  ``alpha = 1`` a pure sparse one).

The rank follows from ``alpha``; this module makes ``alpha`` a calibrated, documented choice: per
linear, the value on :data:`ALPHAS` whose split has the smallest output error
``‖X Wᵀ − (sparse + low-rank)‖_F`` on calibration inputs ``X`` (sampled tokens of the calibration
corpus), with ``tau`` from the same sample. ``alpha = 0`` is their ``low_rank`` mode, ``alpha = 1``
their ``sparse`` mode (plain magnitude thresholds, TEAL). Results are cached per (model, data
hash, density) under ``$TDA_CACHE_DIR/calibration``.
"""

from __future__ import annotations

import json
import threading
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tda.masks.calibrate import data_hash

ALPHAS = tuple(i / 10 for i in range(11))  # candidate sparse ratios 0, 0.1, ..., 1
ROWS_PER_TEXT = 8  # calibration tokens per text (x 32 texts: 256 rows per linear)
EXACT_SVD_MAX = 1536  # min(d_in, d_out) above this: seeded randomized SVD of the needed rank
_LOCK = threading.Lock()  # calibrations
_FACTOR_LOCK = threading.Lock()  # the per-module SVD cache
_MEMO: dict[str, RSparseCalibration] = {}
_FACTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> (rank, VS, U)


def split_budget(d_in: int, d_out: int, density: float, alpha: float) -> tuple[int, int]:
    """``(channels, rank)`` of R-Sparse's budget rule (their ``utils/setup.py``): ``channels`` sparse
    inputs and a rank that fills the rest of ``density × d_in × d_out`` weight entries."""
    channels = int(d_in * density * alpha)
    rank = int((d_in * d_out * density - channels * d_out) / (d_in + d_out))
    return channels, max(rank, 0)


def svd_factors(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(VS[d_in, r], U[d_out, r])`` with ``W[d_out, d_in] ≈ U VSᵀ`` the best rank-``r`` approximation
    (fp32, contiguous). Exact SVD up to :data:`EXACT_SVD_MAX`; above, ``torch.svd_lowrank``
    (seeded, 2 power iterations) — on CPU a full SVD of a 2048×5632 weight takes seconds."""
    w = w.detach().float()
    rank = max(0, min(int(rank), *w.shape))
    if rank == 0:
        return w.new_zeros(w.shape[1], 0), w.new_zeros(w.shape[0], 0)
    if min(w.shape) <= EXACT_SVD_MAX:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        u, s, v = u[:, :rank], s[:rank], vh[:rank].T
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            u, s, v = torch.svd_lowrank(w, q=min(rank + 16, *w.shape), niter=2)
        u, s, v = u[:, :rank], s[:rank], v[:, :rank]
    return (v * s).contiguous(), u.contiguous()


def column_scale(w: torch.Tensor) -> torch.Tensor:
    """``‖W[:, i]‖₂`` per input (R-Sparse's ``scale``): ``[d_in]`` fp32."""
    return w.detach().float().norm(dim=0)


def split_product(x: torch.Tensor, w: torch.Tensor, keep: torch.Tensor, vs: torch.Tensor, u: torch.Tensor,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference (dense maths): ``W (x·keep) + U (VSᵀ (x·¬keep)) (+ bias)`` for ``x[..., d_in]``."""
    y = (x * keep) @ w.T + ((x * ~keep) @ vs) @ u.T
    return y if bias is None else y + bias


def quantile_cut(score: torch.Tensor, keep_fraction: float) -> float:
    """The value whose ``>`` keeps ``keep_fraction`` of ``score``'s entries (their top-k rule)."""
    flat = score.flatten()
    drop = int(flat.numel() * (1.0 - keep_fraction))
    if drop <= 0:
        return -1.0  # keep everything (scores are >= 0)
    return float(torch.kthvalue(flat, drop).values)


@dataclass
class SiteSplit:
    """One linear's calibrated split at the cached density."""

    alpha: float
    tau: float
    channels: int
    rank: int
    rel_error: float


def max_rank(w: torch.Tensor, density: float, alphas: tuple[float, ...] = ALPHAS) -> int:
    """The largest rank any ``alpha`` on ``alphas`` asks of ``w[d_out, d_in]`` at ``density``."""
    return split_budget(w.shape[1], w.shape[0], density, min(alphas))[1]


def choose_split(x: torch.Tensor, w: torch.Tensor, density: float,
                 alphas: tuple[float, ...] = ALPHAS, factors=None) -> SiteSplit:
    """The ``alpha`` on ``alphas`` with the smallest relative output error on ``x[n, d_in]``, for
    ``w[d_out, d_in]`` at ``density`` (ties: the larger alpha, i.e. fewer low-rank bytes).
    ``factors``: :func:`svd_factors` of ``w`` at :func:`max_rank` when already computed."""
    d_out, d_in = w.shape
    w = w.detach().float()
    x = x.float()
    ref = x @ w.T
    norm = float(ref.norm()) or 1.0
    scale = column_scale(w)
    best = None
    vs_all, u_all = factors if factors is not None else svd_factors(w, max_rank(w, density, alphas))
    for alpha in sorted(alphas, reverse=True):
        channels, rank = split_budget(d_in, d_out, density, alpha)
        score = x.abs() if alpha >= 1.0 else x.abs() * scale
        tau = quantile_cut(score, channels / d_in)
        keep = score > tau
        err = float((ref - split_product(x, w, keep, vs_all[:, :rank], u_all[:, :rank])).norm()) / norm
        if best is None or err < best.rel_error - 1e-9:
            best = SiteSplit(float(alpha), tau, channels, rank, err)
    return best


@dataclass
class RSparseCalibration:
    """``sites[module name]``: the split of every block linear at ``density``."""

    model_id: str
    data_hash: str
    density: float
    n_tokens: int
    sites: dict[str, dict]

    def split(self, site: str) -> SiteSplit:
        if site not in self.sites:
            raise KeyError(f"no R-Sparse split for '{site}'")
        return SiteSplit(**self.sites[site])

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def calibrate_rsparse(lm, texts: list[str], density: float, modules: list, names: list[str], *,
                      alphas: tuple[float, ...] = ALPHAS, progress=None) -> RSparseCalibration:
    """One pass over ``texts`` sampling every module's input, then :func:`choose_split` per module."""
    from tda.masks.linear_inputs import clean_texts, sample_linear_inputs
    from tda.models.dispatch import module_weight

    texts = clean_texts(texts)
    xs, where = sample_linear_inputs(lm, texts, modules, rows_per_text=ROWS_PER_TEXT, progress=progress)
    sites = {}
    for j, (m, name) in enumerate(zip(modules, names)):
        w = module_weight(m)
        top = max_rank(w, density, alphas)
        split = choose_split(xs[j], w, density, alphas, factors=module_factors(m, w, top))
        if split.rank == 0 or (split.rank < top and min(w.shape) > EXACT_SVD_MAX):
            with _FACTOR_LOCK:
                _FACTORS.pop(m, None)  # the decode build will not use these factors: free them
        sites[name] = asdict(split)
        xs[j] = None
        if progress:
            progress(f"r-sparse split: linear {j + 1}/{len(modules)}")
    return RSparseCalibration(lm.model_id, data_hash(texts), float(density), len(where), sites)


def cache_path(model_id: str, dhash: str, density: float, alphas: tuple[float, ...] = ALPHAS) -> Path:
    """Next to the input thresholds of the same model and data."""
    from tda.masks.input_thresholds import cache_path as inputs_path

    grid = "" if tuple(alphas) == ALPHAS else "-a" + "_".join(f"{a:g}" for a in alphas)
    p = inputs_path(model_id, dhash)
    return p.with_name(p.name.removesuffix("-inputs.json") + f"-rsparse-d{density:g}{grid}.json")


def load_or_calibrate_rsparse(lm, density: float, modules: list, names: list[str], texts: list[str] | None = None,
                              *, alphas: tuple[float, ...] = ALPHAS, progress=None) -> RSparseCalibration:
    """Cached :func:`calibrate_rsparse`; ``texts`` defaults to the shipped corpus."""
    from tda.common.data import load_texts
    from tda.masks import validate
    from tda.masks.linear_inputs import clean_texts

    texts = clean_texts(texts if texts is not None else load_texts())
    path = cache_path(lm.model_id, data_hash(texts), density, alphas)
    what = "R-Sparse calibration"
    with _LOCK:
        cal = _MEMO.get(str(path))
        if cal is None:  # hashed, parsed and checked (a damaged file is dropped with one line)
            cal = validate.load_cached_json(path, RSparseCalibration, what, validate.rsparse_problem, lm.model_id)
        if cal is None or cal.model_id != lm.model_id or any(n not in cal.sites for n in names):
            cal = calibrate_rsparse(lm, texts, density, modules, names, alphas=alphas, progress=progress)
            validate.save_cached_json(path, cal, what, validate.rsparse_problem)
        _MEMO[str(path)] = cal
        return cal


def module_factors(module, w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`svd_factors` of a module's weight, cached per module in this process (largest rank
    asked so far; a smaller rank is a slice of it when the SVD is exact)."""
    with _FACTOR_LOCK:
        hit = _FACTORS.get(module)
        if hit is not None and hit[0] >= rank and (hit[0] == rank or min(w.shape) <= EXACT_SVD_MAX):
            return hit[1][:, :rank].contiguous(), hit[2][:, :rank].contiguous()
        vs, u = svd_factors(w, rank)
        _FACTORS[module] = (rank, vs, u)
        return vs, u
