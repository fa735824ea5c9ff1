"""One sparse forward/generation: a method instance, its overrides, and the prefill → decode switch.

Every linear the method touches (plus the lm_head when ``cfg.lm_head_density`` is set) gets a
*phase-switching* override (:func:`tda.models.dispatch.linear_overrides`, context-local, so
concurrent callers sharing a model are independent): during the ``prefill`` phase it calls the
method's prefill hook (statistics) and computes densely; :meth:`SparseSession.finish_prefill`
then asks the method for its decode functions (masks, slices, thresholds — built once) and
switches to the ``decode`` phase, where the override calls them. Linears no method touches take
the dense (fast) path throughout. Nothing is registered on or changed in the model, except the
one-time weight layout of :mod:`tda.engine.layouts` (same values, one copy).
"""

from __future__ import annotations

import contextlib
import time

import torch

from tda.common.errors import BadInput
from tda.engine import fastpath
from tda.engine.attention import decode_attention
from tda.engine.config import SparsityConfig, as_config
from tda.engine.decoder import decode_stack
from tda.engine.methods.registry import get_method
from tda.models.dispatch import attention_override, decoder_override, linear_overrides

# Methods that run on the quantized format (tda.models.quant): their kernels read the blocks.
QUANT_METHODS = ("dense", "tt", "cats", "chess", "scap", "rsparse", "predictor", "teal", "wina", "griffin", "tda", "static",
                 "random")


def runs_on_quant(method: str) -> bool:
    """Does ``method`` (a name, a ``PROMPT+tt`` combination, with or without ``+headD``) run on the
    quantized format: every part of it in :data:`QUANT_METHODS`."""
    from tda.engine.config import split_head

    return all(m in QUANT_METHODS for m in split_head(method)[0].split("+"))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SparseSession:
    """State of one sparse forward/generation.

    ``SparseSession(lm, "griffin", density=0.5)`` or ``SparseSession(lm, SparsityConfig(...))``.
    Use ``with session.active(): session.begin(input_ids, attention_mask); <prefill forward>;
    session.finish_prefill(); <decode forwards>``.
    """

    def __init__(self, lm, method: str | SparsityConfig = "dense", **fields):
        self.cfg = as_config(method, **fields)
        if getattr(lm, "weight_format", None) == "gguf" and not runs_on_quant(self.cfg.method):
            raise BadInput(f"method '{self.cfg.method}' does not run on the gguf format yet (these do: "
                           f"{', '.join(QUANT_METHODS)}); use --dtype fp32 or bf16 for the others")
        self.lm = lm
        self.method = self.cfg.method
        self.fast = fastpath.use_fast(lm, self.cfg.fast)
        self.impl = get_method(self.method)(self)
        self.head = None
        if self.cfg.lm_head_density is not None:
            from tda.engine.methods.lm_head import LMHead

            self.head = LMHead(self)
        self.phase = "prefill"
        self.lean = False  # set by begin() for an unpadded batch
        self.mask_s = 0.0
        self.B, self.T = 1, 0
        self._decode: dict[int, object] = {}

    # ----- what the method exposes ----------------------------------------------------------------
    @property
    def thresholds(self):
        return getattr(self.impl, "thresholds", None)

    @property
    def masks(self):
        return getattr(self.impl, "masks", [])

    @property
    def density(self):
        return self.cfg.density

    def _parts(self):
        return [p for p in (self.impl, self.head) if p is not None]

    # ----- overrides --------------------------------------------------------------------------------
    def table(self) -> dict:
        table = dict(fastpath.dense_table(self.lm.model, fast=self.fast))
        hooks: dict = {}
        touched: list = []
        for part in self._parts():
            hooks.update(part.prefill_hooks())
            touched += part.modules()
        for m in touched:
            dense = table.get(m) or fastpath.module_fn(m)
            table[m] = self._switch(m, dense, hooks.get(m))
        return table

    def _switch(self, module, dense, hook):
        key = id(module)

        def fn(x):
            if self.phase == "decode":
                f = self._decode.get(key)
                if f is not None:
                    return f(x)
            elif hook is not None:
                hook(x)
            return dense(x)

        return fn

    def _attention(self, mod, *args, **kwargs):
        """The lean decode-step attention (:mod:`tda.engine.attention`) for unpadded batches on the
        fast path; None (HF's own attention) otherwise."""
        if not self.lean:
            return None
        return decode_attention(mod, *args, **kwargs)

    def _decoder(self, mod, *args, **kwargs):
        """The lean decode-step decoder stack (:mod:`tda.engine.decoder`) for unpadded batches on the
        fast path; None (HF's own forward) otherwise."""
        if not self.lean:
            return None
        return decode_stack(mod, *args, **kwargs)

    @contextlib.contextmanager
    def active(self):
        with linear_overrides(self.table()), attention_override(self._attention if self.fast else None), \
                decoder_override(self._decoder if self.fast else None):
            yield self

    # ----- phases ----------------------------------------------------------------------------------
    def begin(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
        """Declare the prefill's ``input_ids[B, T]`` (left padding allowed) before running it.

        ``use[B, T]`` marks the positions whose statistics count: real tokens, not the BOS
        (which counts too with ``griffin_reference``, as in GRIFFIN's code)."""
        B, T = input_ids.shape
        am = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        use = am.clone()
        bos = self.lm.tokenizer.bos_token_id
        if bos is not None and not self.cfg.griffin_reference:
            first = am.float().argmax(dim=1)  # first real position of each row
            rows = torch.arange(B, device=input_ids.device)
            is_bos = (input_ids[rows, first] == bos) & (am.sum(dim=1) > 1)
            use[rows[is_bos], first[is_bos]] = False
        self.B, self.T = B, T
        self.lean = bool(am.all())  # left padding needs HF's masked attention
        self._use_all = self.use = use.float()
        self.n_used = self.use.sum(dim=1).clamp_min(1.0)  # [B], over the whole prompt
        self.phase = "prefill"
        self._decode = {}
        for part in self._parts():
            part.begin()

    def prefill_window(self, start: int, end: int) -> None:
        """The next prefill forward runs prompt positions ``[start, end)`` only (chunked prefill):
        ``T`` and ``use`` describe that window, ``n_used`` still counts the whole prompt, and the
        methods' prefill hooks add each window's share to their statistics."""
        self.T = end - start
        self.use = self._use_all[:, start:end]

    def finish_prefill(self) -> None:
        """Build the method's decode functions from the prefill (once); switch to decode."""
        t0 = time.perf_counter()
        decode = {}
        for part in self._parts():
            decode.update({id(m): fn for m, fn in part.build().items()})
        self._decode = decode
        sync(self.lm.device)
        self.mask_s = time.perf_counter() - t0
        self.phase = "decode"

    # ----- reporting ---------------------------------------------------------------------------------
    def densities(self) -> tuple[float, list[list[float]]]:
        """(mean density, ``[row][layer]`` densities); token-wise methods: measured over decode."""
        return self.impl.densities()

    def read_fraction(self) -> dict[str, float]:
        """Fraction of each weight group's bytes read per decode step (``ffn``, ``other``, ``lm_head``)."""
        rf = dict(self.impl.read_fraction())
        if self.head is not None:
            rf["lm_head"] = self.head.read_fraction()["lm_head"]
        return rf
