"""One object for the settings of a sparse method, like Hugging Face's ``GenerationConfig``.

:func:`tda.engine.generate.generate`, :class:`tda.engine.session.SparseSession`, ``tda bench``,
``tda eval`` and ``tda frontier`` take a :class:`SparsityConfig` (or a method name plus the same
fields as keywords). Validation happens here, once, with one-line messages.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from tda.common.errors import BadInput
from tda.engine.sparse import BATCH_MODES  # noqa: E402  (one definition)


@dataclass(frozen=True)
class SparsityConfig:
    """How to sparsify decoding.

    - ``method``: a registered name (:func:`tda.engine.methods.registry.method_names`), or
      ``"<prompt method>+<token-wise method>"`` (a prompt-fixed slice with token-wise sparsity
      inside it, e.g. ``griffin+tt``).
    - ``density``: target fraction kept, in (0, 1]. Prompt-fixed methods keep that fraction of FFN
      neurons; token-wise methods calibrate thresholds to it. ``None``: the method's natural rule
      (CETT thresholds for ``tda``/``tt``/``cats``); methods that need one say so.
    - ``cett``: the CETT target of the calibrated per-layer thresholds ``t_L``.
    - ``thresholds``: per-layer ``t_L`` given explicitly (skips calibration).
    - ``lm_head_density``: also sparsify the lm_head's input token-wise at this density (TEAL
      rule, calibrated); ``None`` (default) keeps the lm_head dense. A method name may carry it as
      a suffix, ``METHOD+headD`` (e.g. ``tt+head0.7``), so that method lists (``tda bench``,
      ``tda eval``, ``tda frontier``) can compare it side by side with other variants.
    - ``fast``: route fp32 CPU linears through oneDNN when a probe agrees (``None``/``True``).
    - ``batch_mode``: ``union`` or ``rows`` for prompt-fixed slices of a batch.
    - ``mask_seed``: the ``random`` method's seed. ``calibration_texts``: calibration data
      (default: the shipped corpus).
    - ``griffin_reference``: ``griffin`` exactly as GRIFFIN's reference code — BOS counted in the
      prompt statistic and ``k = int(d_ff · density)`` rounded down (default: BOS left out, k
      rounded to nearest; see :func:`tda.masks.build.griffin_mask`).
    """

    method: str = "dense"
    density: float | None = None
    cett: float = 0.2
    thresholds: tuple[float, ...] | None = None
    lm_head_density: float | None = None
    fast: bool | None = True
    batch_mode: str = "union"
    mask_seed: int = 0
    calibration_texts: tuple[str, ...] | None = None
    griffin_reference: bool = False

    def __post_init__(self):
        from tda.engine.methods.registry import get_method

        if not isinstance(self.method, str):
            raise BadInput(f"method must be a name, got {type(self.method).__name__}")
        base, head = split_head(self.method)
        if head is not None:
            if self.lm_head_density is not None and float(self.lm_head_density) != head:
                raise BadInput(f"'{self.method}' and lm-head-density {self.lm_head_density} disagree")
            object.__setattr__(self, "method", base)
            object.__setattr__(self, "lm_head_density", head)
        get_method(self.method)  # raises BadInput naming the known methods
        for name in ("density", "lm_head_density"):
            v = getattr(self, name)
            if v is not None:
                _check_fraction(name.replace("_", "-"), v)
        if self.griffin_reference and self.method.split("+")[0] != "griffin":
            raise BadInput("griffin_reference applies to method 'griffin' only")
        if self.batch_mode not in BATCH_MODES:
            raise BadInput(f"unknown batch mode '{self.batch_mode}'; use one of {', '.join(BATCH_MODES)}")
        if self.thresholds is not None:
            object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        if self.calibration_texts is not None:
            object.__setattr__(self, "calibration_texts", tuple(self.calibration_texts))

    def replace(self, **changes) -> SparsityConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["calibration_texts"] = None if self.calibration_texts is None else len(self.calibration_texts)
        return d


_HEAD = re.compile(r"^(?P<base>.+)\+head(?P<d>[^+]*)$")


def split_head(spec: str) -> tuple[str, float | None]:
    """``"tt+head0.7"`` -> ``("tt", 0.7)``; a spec without the suffix -> ``(spec, None)``."""
    m = _HEAD.match(spec) if isinstance(spec, str) else None
    if m is None:
        return spec, None
    try:
        d = float(m["d"])
    except ValueError:
        raise BadInput(f"'{spec}': write the lm_head density as +headD with D in (0, 1], e.g. tt+head0.7") from None
    return m["base"], _check_fraction("the lm_head density of '" + spec + "'", d)


def _check_fraction(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < float(v) <= 1.0:
        raise BadInput(f"{name} must be in (0, 1], got {v}")
    return float(v)


def as_config(method: str | SparsityConfig = "dense", **fields) -> SparsityConfig:
    """A :class:`SparsityConfig` from a config (``fields`` override it) or a method name."""
    fields = {k: v for k, v in fields.items() if v is not None or k in ("density",)}
    if isinstance(method, SparsityConfig):
        return method.replace(**fields) if fields else method
    return SparsityConfig(method=method, **fields)
