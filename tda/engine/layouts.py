"""Weight layouts: one copy per linear, in the orientation the method reads it.

A linear ``y = W x`` stores ``W[d_out, d_in]`` row-major: reading the rows of the *outputs* a
method keeps is cheap (CATS's up projection), reading the columns of the *inputs* it keeps is
not (each column element sits in another cache line). Input-sparse methods (TT's and CATS's down
projection, TEAL and WINA everywhere) therefore need ``W_t[d_in, d_out]`` contiguous, where an
active input ``i`` reads one contiguous row.

:func:`input_major` converts a module's weight **in place, once**: it makes ``W_t`` and rebinds
``module.weight`` to ``W_t.T`` — the same values as a transposed view, so the model computes
the same function (``F.linear`` takes the view; the fast dense path multiplies by ``W_t``) and
memory holds one copy. Tied weights (Gemma's lm_head and embedding) share the parameter and
follow together. GPT-2's ``Conv1D`` already stores ``[d_in, d_out]``.

:func:`row_major` converts back. A module that flips back and forth (methods of both kinds in one
process: a frontier scores CATS and CHESS, which read rows, between TEAL, WINA and SCAP, which read
inputs, batch after batch) keeps the layout it leaves once it has flipped before, so the next flip
is a rebinding instead of a transposed copy — within a budget of kept bytes (``TDA_LAYOUT_KEEP_MB``,
default the smaller of 2 GiB and an eighth of the machine's memory; 0 keeps nothing; the budget
spent: :func:`kept_bytes`). The copies re-laid out 5,600 times in a full-set frontier took 14% of
its scoring time (py-spy, Gemma 3 270M, fp32). A process that uses one layout per module never
keeps a second copy. A kept copy is dropped when the weight was changed in place through its
parameter since (its version counter moved).
"""

from __future__ import annotations

import dataclasses
import threading
import weakref

import torch
from torch import nn

from tda.models import hugepages, quant

_LOCK = threading.Lock()


def _is_conv1d(module: nn.Module) -> bool:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        return False
    return isinstance(module, Conv1D)


def is_input_major(module: nn.Module) -> bool:
    w = module.weight
    return _is_conv1d(module) or (w.dim() == 2 and w.t().is_contiguous() and not w.is_contiguous())


def input_major(module: nn.Module) -> torch.Tensor:
    """``W_t[d_in, d_out]`` (contiguous) of a linear module, converting the module once in place."""
    from tda.models import placement

    if placement.is_offloaded(module):
        from tda.common.errors import BadInput

        raise BadInput("token-wise methods read weights in place; this model has offloaded layers "
                       "(--device-map with CPU/disk offload): use a prompt-fixed method or more memory")
    if _is_conv1d(module):
        return module.weight.detach()
    with _LOCK:
        w = module.weight
        if not is_input_major(module):
            wt = _flip(module, w.detach(), (w.shape[1], w.shape[0]))
            w.data = wt.t()
            _flipped(module)
        return module.weight.detach().t()


def quant_input_major(module):
    """The input-major repack (:meth:`tda.models.quant.QuantWeight.input_major`) of a quantized
    linear, made once and kept on the module beside its row-major blocks (both layouts are held: the
    dense path reads rows, input-sparse methods read inputs; :func:`quant_layout_bytes` counts it)."""
    with _LOCK:
        qwt = getattr(module, "_tda_input_major", None)
        if qwt is None:
            from tda.engine import quant_kernels

            qw = module.qweight
            qwt = qw.input_major()
            if quant_kernels.vnni_columns_wanted(qwt):  # a decode row's input-sparse kernel reads these
                qwt = dataclasses.replace(qwt, vq=quant.vnni_columns(qw))
            qwt = hugepages.copy_fields(qwt)  # read by every sparse step: huge pages
            module._tda_input_major = qwt
        return qwt


def quant_layout_bytes(model: nn.Module) -> int:
    """Bytes held by the input-major copies of quantized linears (on top of their row-major blocks)."""
    return sum(m._tda_input_major.nbytes for m in model.modules() if getattr(m, "_tda_input_major", None) is not None)


def row_major(module) -> torch.Tensor | None:
    """``W[d_out, d_in]`` contiguous, converting an input-major module back in place once (the
    inverse of :func:`input_major`; same values, one copy); ``None`` for
    GPT-2's Conv1D, whose storage is input-major by design."""
    if _is_conv1d(module):
        return None
    with _LOCK:
        w = module.weight
        if not w.is_contiguous():
            w.data = _flip(module, w.detach().t(), tuple(w.shape))
            _flipped(module)
        return module.weight.detach()


_KEPT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> bytes of its kept layout (under _LOCK)


def kept_bytes() -> int:
    """Bytes held by the layouts kept for live modules that flip back and forth (on top of one copy each)."""
    return sum(_KEPT.values())


def keep_limit() -> int:
    """The budget of :func:`kept_bytes`: ``TDA_LAYOUT_KEEP_MB`` (MB; 0 keeps nothing), else the
    smaller of 2 GiB and an eighth of physical memory."""
    import os

    raw = os.environ.get("TDA_LAYOUT_KEEP_MB", "").strip()
    if raw:
        try:
            return max(0, int(float(raw) * 1e6))
        except ValueError:
            from tda.common.errors import BadInput

            raise BadInput(f"TDA_LAYOUT_KEEP_MB must be a number of megabytes, got {raw!r}") from None
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - no sysconf
        ram = 16 << 30
    return min(2 << 30, ram // 8)


def _drop_kept(module: nn.Module) -> None:
    module.__dict__.pop("_tda_kept_layout", None)
    _KEPT.pop(module, None)


def _flip(module: nn.Module, cur: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The contiguous ``[*shape]`` tensor of the other layout (``cur.t()``'s values; ``cur`` is the
    weight in the layout it leaves, contiguous): the kept one when it is still valid, else a fresh
    copy on huge pages. Keeps ``cur`` for the way back when the module flipped before and the
    budget allows."""
    kept = module.__dict__.get("_tda_kept_layout")
    if kept is not None and (module.__dict__.get("_tda_layout_version") != module.weight._version
                             or tuple(kept.shape) != shape or kept.dtype != cur.dtype or kept.device != cur.device):
        _drop_kept(module)  # the weight changed in place (or moved) since: the kept values are stale
        kept = None
    out = kept if kept is not None else hugepages.contiguous(cur.t())  # read by every step: on huge pages
    nbytes = cur.numel() * cur.element_size()
    if module.__dict__.get("_tda_flips", 0) >= 1 and cur.is_contiguous() and (
            kept is not None or kept_bytes() + nbytes <= keep_limit()):
        _KEPT[module] = nbytes
        module.__dict__["_tda_kept_layout"] = cur
    elif kept is not None:
        _drop_kept(module)
    return out


def _flipped(module: nn.Module) -> None:
    module.__dict__["_tda_flips"] = module.__dict__.get("_tda_flips", 0) + 1
    module.__dict__["_tda_layout_version"] = module.weight._version
    _forget_dense_paths(module)


def _forget_dense_paths(module: nn.Module) -> None:
    """Cached dense linear functions still hold the old layout: rebuild the ones for ``module``."""
    from tda.engine import fastpath

    fastpath.refresh_module(module)
