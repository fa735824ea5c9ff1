"""The control model: the same architecture as a loaded model, with seeded random weights.

What a trained model shows and this one does not comes from training. Built with
``AutoModelForCausalLM.from_config(config)`` under a fixed seed (transformers' own initialiser),
sharing the original's tokenizer, and wrapped as a :class:`tda.models.LoadedModel` whose
``model_id`` is ``<original>+randinit<seed>`` (so its CETT calibration is cached separately).
"""

from __future__ import annotations

import copy
import threading

import torch

from tda.models import LoadedModel

DEFAULT_SEED = 0
_CACHE: dict[tuple[str, int, str], LoadedModel] = {}
_LOCK = threading.Lock()


def control_id(lm: LoadedModel, seed: int = DEFAULT_SEED) -> str:
    return f"{lm.model_id}+randinit{int(seed)}"


def random_weights_like(lm: LoadedModel, seed: int = DEFAULT_SEED) -> LoadedModel:
    """A random-weights twin of ``lm`` (same config, dtype, device, tokenizer); cached per process."""
    from transformers import AutoModelForCausalLM

    from tda.models import _finish

    key = (lm.model_id, int(seed), str(lm.dtype))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        config = copy.deepcopy(lm.model.config)
        config._attn_implementation = "eager"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        out = _finish(
            model, lm.tokenizer, spec=f"{lm.spec}+randinit{int(seed)}", kind="random",
            model_id=control_id(lm, seed), tokenizer_dir=lm.tokenizer_dir, hf_name=lm.hf_name,
            description=f"{lm.model_id} architecture with seeded random weights (seed {seed}): control",
            dtype=lm.dtype, device=lm.device,
        )
        _CACHE[key] = out
        return out
