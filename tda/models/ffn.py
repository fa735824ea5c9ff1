"""FFN adapters: one description per architecture family, one adapter class for all.

Every supported FFN is ``out(act(in(x)) [⊙ up(x)])``: one or two *input* projections (rows =
neurons), an element-wise activation, and one *output* projection (columns = neurons). The
neuron activation ``a`` of the paper is the input of the output projection — TransformerLens'
``blocks.{L}.mlp.hook_post``.

Weights are always returned in one orientation, whatever the storage (GPT-2's Conv1D stores
them transposed): ``W_gate[d_ff, d_model]``, ``W_up[d_ff, d_model]`` (``W_in`` for non-gated),
``W_down[d_model, d_ff]``.

Replacing a layer's FFN computation goes through :mod:`tda.models.dispatch`: a per-context override of
the projections (sliced weights, thresholded inputs), so a shared model is never mutated.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from tda.common.errors import BadInput, UnsupportedArchitecture
from tda.models import placement


@dataclass(frozen=True)
class FFNFamily:
    """How one architecture family lays out its FFN (attribute paths relative to a layer)."""

    name: str
    model_types: tuple[str, ...]
    layers_path: str  # from the *CausalLM* model to the list of decoder layers
    in_projs: tuple[str, ...]  # gated: (gate, up); plain: (in,)
    out_proj: str
    act: str  # the activation module, or "" when the layer calls a function
    conv1d: bool = False  # GPT-2 Conv1D: weight stored as [in, out]
    final_norm: str = ""  # from the *CausalLM* model to the norm before the unembedding

    @property
    def gated(self) -> bool:
        return len(self.in_projs) == 2


FAMILIES: tuple[FFNFamily, ...] = (
    FFNFamily(
        "llama-like",
        ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text"),
        "model.layers",
        ("mlp.gate_proj", "mlp.up_proj"),
        "mlp.down_proj",
        "mlp.act_fn",
        final_norm="model.norm",
    ),
    FFNFamily("gpt2", ("gpt2",), "transformer.h", ("mlp.c_fc",), "mlp.c_proj", "mlp.act", conv1d=True,
              final_norm="transformer.ln_f"),
    FFNFamily("opt", ("opt",), "model.decoder.layers", ("fc1",), "fc2", "activation_fn",
              final_norm="model.decoder.final_layer_norm"),
)

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for f in FAMILIES for t in f.model_types)


def family_for(model_type: str) -> FFNFamily:
    """The FFN family of an HF ``config.model_type``; raises with the supported list."""
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    raise UnsupportedArchitecture(
        f"unsupported architecture '{model_type}'; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


def _get(obj: object, path: str) -> object:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


class FFNAdapter:
    """Uniform access to a causal LM's FFN layers.

    Attributes: ``n_layers``, ``d_model``, ``d_ff``, ``gated``, ``act_name``, ``family``.
    """

    def __init__(self, model: nn.Module):
        cfg = _text_config(model.config)
        self.family = family_for(cfg.model_type)
        self.model = model
        self.layers: list[nn.Module] = list(_get(model, self.family.layers_path))
        self.n_layers = len(self.layers)
        first_out = self.out_module(0)
        w = first_out.weight
        self.d_model, self.d_ff = (w.shape[1], w.shape[0]) if self.family.conv1d else tuple(w.shape)
        self.gated = self.family.gated
        self.act_name = str(
            getattr(cfg, "hidden_activation", None)
            or getattr(cfg, "hidden_act", None)
            or getattr(cfg, "activation_function", None)
            or "unknown"
        )

    # ----- modules -------------------------------------------------------------------------
    def check_layer(self, layer: int) -> int:
        if not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise BadInput(f"layer {layer} out of range: the model has layers 0..{self.n_layers - 1}")
        return layer

    def in_modules(self, layer: int) -> list[nn.Module]:
        """The input projections of ``layer``: [gate, up] for gated FFNs, [in] otherwise."""
        lay = self.layers[self.check_layer(layer)]
        return [_get(lay, p) for p in self.family.in_projs]

    def out_module(self, layer: int) -> nn.Module:
        """The output (down) projection; its input is the neuron activation ``a``."""
        return _get(self.layers[layer], self.family.out_proj)

    def act_fn(self, layer: int):
        return _get(self.layers[self.check_layer(layer)], self.family.act)

    # ----- weights in one orientation --------------------------------------------------------
    # Weights are read through tda.models.placement: with a device map an offloaded module's
    # parameters are meta tensors, and the real ones come from accelerate's hook, on the layer's
    # execution device. On one device these are the parameters themselves (views, no copy).
    def _rows(self, mod: nn.Module) -> torch.Tensor:
        w = placement.layer_weight(mod)
        return w.T if self.family.conv1d else w

    def in_weights(self, layer: int) -> list[torch.Tensor]:
        """``[W_gate, W_up]`` or ``[W_in]``, each ``[d_ff, d_model]`` (views, not copies)."""
        return [self._rows(m) for m in self.in_modules(layer)]

    def in_biases(self, layer: int) -> list[torch.Tensor | None]:
        return [placement.layer_weight(m, "bias") for m in self.in_modules(layer)]

    def down_weight(self, layer: int) -> torch.Tensor:
        """``W_down[d_model, d_ff]`` (a view)."""
        return self._rows(self.out_module(self.check_layer(layer)))

    def down_bias(self, layer: int) -> torch.Tensor | None:
        return placement.layer_weight(self.out_module(self.check_layer(layer)), "bias")

    def device(self, layer: int) -> torch.device:
        """The device ``layer``'s FFN computes on (with a device map, layers differ)."""
        return placement.execution_device(self.out_module(self.check_layer(layer)))

    def down_norms(self, layer: int) -> torch.Tensor:
        """``‖W_down[:, i]‖`` per neuron, ``[d_ff]`` float32 on the weight's device."""
        return self.down_weight(layer).float().norm(dim=0)

    def static_scores(self, layer: int) -> torch.Tensor:
        """Weight-only neuron importance: ``‖W_gate[j]‖·‖W_up[j]‖`` or ``‖W_in[j]‖``, ``[d_ff]``."""
        score = torch.ones(self.d_ff, device=self.device(layer))
        for w in self.in_weights(layer):
            score = score * w.float().norm(dim=1)
        return score

    def final_norm_scale(self) -> tuple[torch.Tensor, bool]:
        """The final norm's per-dimension scale ``γ[d_model]`` (float32, CPU) as the model applies
        it, and whether the norm also centres its input (LayerNorm).

        Gemma's RMSNorm multiplies by ``1 + w`` (its weight is stored as an offset from 1); the
        other RMSNorms and LayerNorms by ``w``. A model without a final norm (or one without a
        learned scale) gives ones.
        """
        norm = None
        with contextlib.suppress(AttributeError):
            norm = _get(self.model, self.family.final_norm) if self.family.final_norm else None
        w = placement.layer_weight(norm) if norm is not None else None
        if w is None:
            return torch.ones(self.d_model), isinstance(norm, nn.LayerNorm)
        w = w.detach().float().cpu()
        return (1.0 + w if type(norm).__name__.startswith("Gemma") else w), isinstance(norm, nn.LayerNorm)

    # ----- a reference FFN, optionally restricted to some neurons ---------------------------
    def activations(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """``a(x)`` for ``x[..., d_model]`` -> ``[..., d_ff]`` (computed from the weights)."""
        parts = [m(x) for m in self.in_modules(layer)]
        act = self.act_fn(layer)
        return act(parts[0]) * parts[1] if self.gated else act(parts[0])

    def describe(self) -> dict:
        return {
            "family": self.family.name,
            "n_layers": self.n_layers,
            "d_model": int(self.d_model),
            "d_ff": int(self.d_ff),
            "gated": self.gated,
            "activation": self.act_name,
        }
