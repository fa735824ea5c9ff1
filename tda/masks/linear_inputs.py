"""Sampled inputs of chosen linear modules on calibration text (one forward pass per text).

The offline fits of :mod:`tda.masks.lowrank` (R-Sparse's split per linear) and
:mod:`tda.masks.predictor_train` (neuron predictors) need the actual input *vectors* of some
linears, not only the ``|x|`` quantiles :mod:`tda.masks.input_thresholds` keeps. This module runs
the calibration texts (at most :data:`MAX_TEXTS`, :data:`MAX_TOKENS_PER_TEXT` tokens each, BOS
left out, like the input thresholds) and keeps, per text, the same seeded sample of token
positions at every module — so row ``n`` of every returned tensor comes from the same token.
"""

from __future__ import annotations

import torch

from tda.common.errors import BadInput

MAX_TEXTS = 32
MAX_TOKENS_PER_TEXT = 128


def clean_texts(texts: list[str], limit: int = MAX_TEXTS) -> list[str]:
    """The non-empty texts, at most ``limit`` of them (one-line error when none is left)."""
    texts = [t for t in texts if isinstance(t, str) and t.strip()][:limit]
    if not texts:
        raise BadInput("the calibration data is empty")
    return texts


def sample_linear_inputs(lm, texts: list[str], modules: list, *, rows_per_text: int | None = None,
                         seed: int = 0, transform=None, progress=None) -> tuple[list[torch.Tensor], list[int]]:
    """``(inputs, text_of_row)``: ``inputs[j][n, d_in_j]`` is the input of ``modules[j]`` at sampled
    token ``n`` (fp32, on the CPU); ``text_of_row[n]`` the index of the text it came from.

    ``rows_per_text`` caps the tokens kept per text (``None``: all). ``transform(j, x)`` may turn
    a module's rows into something smaller before they are kept (e.g. a label mask).
    """
    from tda.activations.capture import has_bos
    from tda.models.dispatch import linear_overrides, module_weight

    texts = clean_texts(texts, len(texts))
    gen = torch.Generator().manual_seed(int(seed))
    kept: list[list[torch.Tensor]] = [[] for _ in modules]
    where: list[int] = []
    state: dict = {}

    def recorder(j: int, module):
        import torch.nn.functional as F

        w, b = module_weight(module), getattr(module, "bias", None)

        def fn(x):
            rows = x.reshape(-1, x.shape[-1])[state["pos"]].detach().float().cpu()
            kept[j].append(rows if transform is None else transform(j, rows))
            return F.linear(x, w, b)

        return fn

    table = {m: recorder(j, m) for j, m in enumerate(modules)}
    skip_bos = has_bos(lm)
    with torch.inference_mode(), linear_overrides(table):
        for i, text in enumerate(texts):
            ids = lm.tokenizer(text, add_special_tokens=True).input_ids[:MAX_TOKENS_PER_TEXT]
            first = 1 if skip_bos and len(ids) > 1 else 0
            pos = torch.arange(first, len(ids))
            if rows_per_text is not None and pos.numel() > rows_per_text:
                pos = pos[torch.randperm(pos.numel(), generator=gen)[:rows_per_text]].sort().values
            state["pos"] = pos.to(lm.device)
            where += [i] * pos.numel()
            lm.model.base_model(input_ids=torch.tensor([ids], device=lm.device), use_cache=False)
            if progress:
                progress(f"capture: text {i + 1}/{len(texts)}")
    return [torch.cat(parts) for parts in kept], where
