"""The shape every sparse method has.

A method is a small class, one per file, registered in :mod:`tda.engine.methods.registry`. A
:class:`~tda.engine.session.SparseSession` creates one instance per generation and drives it:

1. ``__init__(session)`` — read ``session.cfg`` (a :class:`~tda.engine.config.SparsityConfig`)
   and fetch what it needs calibrated (cached on disk: CETT thresholds, input thresholds);
2. ``modules()`` — the linear modules whose computation it may change; the session wraps
   each in a phase switch (dense during the prefill, the method's function during decode);
3. ``prefill_hooks()`` — ``{module: fn(x)}`` called with a module's input during the dense
   prefill (prompt-fixed methods accumulate their statistics here);
4. ``build()`` — once, right after the prefill: ``{module: fn(x) -> y}`` used at every decode
   step (slices, thresholds, sparse kernels);
5. ``densities()`` / ``read_fraction()`` — what was kept, for reports and the bytes ceiling.

Class attributes say what the method is: ``kind`` (``dense``, ``prompt`` = one mask per
prompt, ``token`` = a new selection every decode step), ``gated_only`` (needs a gate
projection), ``needs_density``, ``calibrates`` (what is calibrated offline, for ``tda methods``)
and ``summary``.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from tda.common.errors import BadInput


class Method:
    name: ClassVar[str] = ""
    kind: ClassVar[str] = "token"
    summary: ClassVar[str] = ""
    gated_only: ClassVar[bool] = False
    needs_density: ClassVar[bool] = False
    calibrates: ClassVar[str] = "nothing"

    def __init__(self, session, cfg=None):
        self.session = session
        self.lm = session.lm
        self.cfg = cfg if cfg is not None else session.cfg
        self.check(self.lm, self.cfg)

    @classmethod
    def check(cls, lm, cfg) -> None:
        """Fail loud, with one line, on a model or setting the method cannot run with."""
        if cls.gated_only and not lm.ffn.gated:
            raise BadInput(f"method '{cfg.method}' needs a gated FFN (gate and up projections); "
                           f"{lm.model_id} ({lm.ffn.family.name}) has none")
        if cls.needs_density and cfg.density is None:
            raise BadInput(f"method '{cfg.method}' needs a density")

    # ----- the protocol ---------------------------------------------------------------------------
    def modules(self) -> list[nn.Module]:
        return []

    def prefill_hooks(self) -> dict[nn.Module, object]:
        return {}

    def begin(self) -> None:
        """A new prefill starts (``session.B``, ``session.T``, ``session.use`` are set)."""

    def build(self) -> dict[nn.Module, object]:
        return {}

    def densities(self) -> tuple[float, list[list[float]]]:
        n = self.lm.ffn.n_layers
        return 1.0, [[1.0] * n for _ in range(getattr(self.session, "B", 1))]

    def read_fraction(self) -> dict[str, float]:
        """Fraction of each weight group's bytes read per decode step: ``ffn``, ``other``, ``lm_head``."""
        return {"ffn": 1.0, "other": 1.0, "lm_head": 1.0}

    # ----- shared helpers -------------------------------------------------------------------------
    def ffn_modules(self) -> list[nn.Module]:
        ffn = self.lm.ffn
        return [m for L in range(ffn.n_layers) for m in (*ffn.in_modules(L), ffn.out_module(L))]
