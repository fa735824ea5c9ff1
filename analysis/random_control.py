"""The control model: the same architecture as a loaded model, with seeded random weights.

What a trained model shows and this one does not comes from training. Built with
``AutoModelForCausalLM.from_config(config)`` under a fixed seed (transformers' own initialiser),
sharing the original's tokenizer, and wrapped as a :class:`tda.models.load.LoadedModel` whose
``model_id`` is ``<original>+randinit<seed>`` (so its CETT calibration is cached separately).
"""

from __future__ import annotations

import threading

from tda.models.load import LoadedModel

DEFAULT_SEED = 0
_CACHE: dict[tuple[str, int, str], LoadedModel] = {}
_LOCK = threading.Lock()


def control_id(lm: LoadedModel, seed: int = DEFAULT_SEED) -> str:
    return f"{lm.model_id}+randinit{int(seed)}"


def random_weights_like(lm: LoadedModel, seed: int = DEFAULT_SEED) -> LoadedModel:
    """A random-weights twin of ``lm`` (:func:`tda.models.load.random_weights_like`), cached per process."""
    from tda.models import load as models

    key = (lm.model_id, int(seed), str(lm.dtype))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = models.random_weights_like(lm, seed)
        return _CACHE[key]
