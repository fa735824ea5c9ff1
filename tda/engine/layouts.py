"""Weight layouts: one copy per linear, in the orientation the method reads it.

A linear ``y = W x`` stores ``W[d_out, d_in]`` row-major: reading the rows of the *outputs* a
method keeps is cheap (CATS's up projection), reading the columns of the *inputs* it keeps is
not (each column element sits in another cache line). Input-sparse methods (TT's and CATS's down
projection, TEAL and WINA everywhere) therefore need ``W_t[d_in, d_out]`` contiguous, where an
active input ``i`` reads one contiguous row.

:func:`input_major` converts a module's weight **in place, once**: it makes ``W_t`` and rebinds
``module.weight`` to ``W_t.T`` — the same values as a transposed view, so the model computes
the same function (``F.linear`` takes the view; the fast dense path multiplies by ``W_t``) and
memory holds one copy, never two. Tied weights (Gemma's lm_head and embedding) share the
parameter and follow together. GPT-2's ``Conv1D`` already stores ``[d_in, d_out]``.
"""

from __future__ import annotations

import dataclasses
import threading

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
            wt = hugepages.contiguous(w.detach().t())  # read by every step: on huge pages
            w.data = wt.t()
            _forget_dense_paths(module)
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
            w.data = hugepages.contiguous(w.detach())
            _forget_dense_paths(module)
        return module.weight.detach()


def _forget_dense_paths(module: nn.Module) -> None:
    """Cached dense linear functions still hold the old layout: rebuild the ones for ``module``."""
    from tda.engine import fastpath

    fastpath.refresh_module(module)
