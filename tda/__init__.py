"""tda-workbench engine: model loading, activation capture, masks, sparse generation, evaluation.

The package follows the pipeline, one folder a stage::

    tda/models/       load a model, FFN adapters, per-context linear overrides
    tda/activations/  capture acts[layer, token, neuron] (prompt and decode)
    tda/masks/        TDA / GRIFFIN / TT / static / random masks, CETT, calibration
    tda/engine/       sparse generation (sliced and token-wise FFNs, fast linears)
    tda/evaluate/     recall, quality, lm-eval wrapper, latency bench, bytes ceiling
    tda/cli/          the ``tda`` command;  tda/common/: errors, atomic writes, paths, data

Typical use::

    from tda import load_model, capture, generate
    lm = load_model()                       # the embedded Gemma 3 270M
    cap = capture(lm, "Almost one million people visited the city", mode="isolated")
    cap.acts                                # acts[layer, token, neuron]
    generate(lm, "The city", method="griffin", density=0.5).texts

The public names are imported lazily (``import tda`` does not import torch).
"""

from __future__ import annotations

import importlib

from tda.common.errors import BadInput, ModelLoadError, TDAError

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_LAZY = {
    "load_model": "tda.models.load",
    "LoadedModel": "tda.models.load",
    "capture": "tda.activations.capture",
    "Capture": "tda.activations.capture",
    "build_mask": "tda.masks.build",
    "NeuronMask": "tda.masks.build",
    "calibrate": "tda.masks.calibrate",
    "load_or_calibrate": "tda.masks.calibrate",
    "generate": "tda.engine.generate",
}

__all__ = [*_LAZY, "TDAError", "BadInput", "ModelLoadError", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # cache: later look-ups skip this hook
        return value
    raise AttributeError(f"module 'tda' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
