"""tda-workbench engine: model loading, FFN adapters, activation capture, masks, CETT, sparse generation.

Typical use::

    from tda import load_model, capture
    lm = load_model()                       # the embedded Gemma 3 270M
    cap = capture(lm, "Almost one million people visited the city", mode="isolated")
    cap.acts                                # acts[layer, token, neuron]
"""

__version__ = "0.1.0"

from tda.capture import Capture, capture  # noqa: E402
from tda.errors import BadInput, ModelLoadError, TDAError  # noqa: E402
from tda.models import LoadedModel, load_model  # noqa: E402

__all__ = ["Capture", "capture", "load_model", "LoadedModel", "TDAError", "BadInput", "ModelLoadError",
           "__version__"]
