"""SCAP's calibration (arXiv 2412.07174; code: github.com/IntelLabs/SCAP, ``calibrate.py``).

For every FFN linear input (site ``"scap.in.<L>"``: the FFN input, shared by gate and up or the one
input projection; ``"scap.down.<L>"``: the down projection's input ``a``), a mode ``c`` (one
number per tensor, the median of its entries: the code's ``median`` option) and a threshold ``τ``
(the ``1 - density`` quantile of ``|x - c|``).

As in the code, the calibration is **one forward over a batch of all calibration texts, already
sparsified as it goes**: each linear calibrates on the first input it sees and then computes
``W·[(x - c)·(|x - c| > τ)] + b + W·c`` — so a layer's statistics come from a model whose earlier
layers (and, for down, whose gate/up) are already sparse, and the result depends on the density
(cached per density). Texts are right-padded (pads and BOS excluded from the statistics; the
code's equal-length C4 batch needs no padding and keeps BOS); the mode and the quantile come from a
seeded sample of at most :data:`~tda.masks.input_thresholds.SAMPLES_PER_SITE` entries per site
(exact on small models).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from tda.common.errors import BadInput
from tda.masks import input_thresholds as it
from tda.masks.channel_thresholds import cached, clean_texts, sample_indices


@dataclass
class ScapCalibration:
    """``modes[site]`` (``c``) and ``thresholds[site]`` (``τ``) at one ``density``."""

    model_id: str
    data_hash: str
    density: float
    n_tokens: int
    modes: dict[str, float]
    thresholds: dict[str, float]

    def site(self, name: str) -> tuple[float, float]:
        """``(c, τ)`` of a site."""
        if name not in self.modes:
            raise KeyError(f"no SCAP calibration for '{name}'")
        return self.modes[name], self.thresholds[name]

    def to_json(self) -> str:
        import json

        return json.dumps(asdict(self))


def calibrate_scap(lm, texts: list[str], density: float, *, seed: int = 0) -> ScapCalibration:
    """Modes and thresholds of every FFN linear input at ``density`` (one sparsified batch forward)."""
    from tda.activations.capture import has_bos
    from tda.masks.calibrate import data_hash
    from tda.models.dispatch import linear_overrides, module_weight

    texts = clean_texts(texts)
    if not 0.0 < float(density) <= 1.0:
        raise BadInput(f"density must be in (0, 1], got {density}")
    model, ffn, tok = lm.model, lm.ffn, lm.tokenizer
    rows = [tok(t, add_special_tokens=True).input_ids[:it.MAX_TOKENS_PER_TEXT] for t in texts]
    T = max(len(r) for r in rows)
    pad = next((v for v in (tok.pad_token_id, tok.eos_token_id) if v is not None), 0)
    ids = torch.tensor([r + [pad] * (T - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
    valid = mask.bool()
    if has_bos(lm):
        valid[:, 0] &= torch.tensor([len(r) <= 1 for r in rows])
    valid = valid.flatten().to(lm.device)
    gen = torch.Generator().manual_seed(int(seed))
    found: dict[str, tuple[float, float]] = {}

    def calibrate(site: str, x: torch.Tensor) -> tuple[float, float]:
        if site not in found:
            v = x.detach().reshape(-1, x.shape[-1])[valid].flatten().double().cpu()
            v = v[sample_indices(v.numel(), it.SAMPLES_PER_SITE, gen)]
            c = float(v.median())
            found[site] = (c, float(torch.quantile((v - c).abs(), 1.0 - float(density))))
        return found[site]

    def sparsified(module, site: str):
        w, b = module_weight(module), getattr(module, "bias", None)

        def fn(x):
            c, t = calibrate(site, x)
            keep = (x - c).abs() > t
            return torch.nn.functional.linear(torch.where(keep, x, torch.full_like(x, c)), w, b)

        return fn

    table = {}
    for L in range(ffn.n_layers):
        table.update({m: sparsified(m, f"scap.in.{L}") for m in ffn.in_modules(L)})
        table[ffn.out_module(L)] = sparsified(ffn.out_module(L), f"scap.down.{L}")
    with torch.inference_mode(), linear_overrides(table):
        model.base_model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), use_cache=False)
    return ScapCalibration(lm.model_id, data_hash(texts), float(density), int(valid.sum()),
                           {s: c for s, (c, _) in found.items()}, {s: t for s, (_, t) in found.items()})


def load_or_calibrate_scap(lm, density: float, texts: list[str] | None = None) -> ScapCalibration:
    """Cached :func:`calibrate_scap` (per model, data hash and density); ``texts``: the shipped corpus."""
    from tda.common.data import load_texts
    from tda.masks import validate

    texts = clean_texts(texts if texts is not None else load_texts())
    return cached(lm, texts, f"scap{float(density):.4f}", ScapCalibration,
                  lambda: calibrate_scap(lm, texts, density), "SCAP calibration", validate.scap_problem)
