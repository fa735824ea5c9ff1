"""Back large CPU weights with transparent huge pages (Linux), so a decode step's weight stream
does not pay a TLB miss every 4 KiB.

A decode step reads every weight once, in long runs: the lm_head of Gemma 3 270M alone is 335 MB
(bf16) or 671 MB (fp32), 82,000–164,000 base pages. With THP in ``madvise`` mode (the usual
default) a model's weights get base pages only. :func:`advise` asks the kernel to back the
2 MiB-aligned interior of each large weight storage with huge pages: ``madvise(MADV_HUGEPAGE)``
(future faults) and ``madvise(MADV_COLLAPSE)`` (Linux >= 6.1: collapse the pages already there,
synchronously; ~0.25 s for 335 MB). Contents never change. Measured on Gemma 3 270M bf16 (2
threads, same process, before/after): 15.05 -> 14.50 ms per decode step with the lm_head
collapsed.

The quantized format's own weights (its blocks at load; its decode tiles and the methods' repacks
when first used; many of them under 1 MB) come from :func:`empty` / :func:`copy`: advised before
the first write and packed one after another into chunks of 32 MiB, 64-byte aligned, so a small
weight does not hold a huge page of its own.

Best effort: on other systems, older kernels, THP disabled (``never``) or a refusal (memory
pressure) nothing happens. ``TDA_HUGEPAGES=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import errno
import functools
import os
import re
import sys
import threading
from collections.abc import Sequence

import torch

MADV_DONTNEED = 4
MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25
HUGE = 2 << 20  # 2 MiB
MIN_BYTES = 2 * HUGE  # smaller storages hold at most one aligned huge page: not worth a syscall


def enabled() -> bool:
    """On Linux unless ``TDA_HUGEPAGES`` is 0/off/false/no."""
    flag = os.environ.get("TDA_HUGEPAGES", "1").strip().lower()
    return sys.platform.startswith("linux") and flag not in ("0", "off", "false", "no")


@functools.cache
def _madvise():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def aligned_span(ptr: int, nbytes: int) -> tuple[int, int] | None:
    """``(start, length)`` of the whole 2 MiB pages inside ``[ptr, ptr + nbytes)``, or None."""
    lo = (ptr + HUGE - 1) // HUGE * HUGE
    hi = (ptr + nbytes) // HUGE * HUGE
    return (lo, hi - lo) if hi > lo else None


def _collapse(fn, t: torch.Tensor) -> int:
    """Bytes collapsed under ``t``'s storage; 0 when too small or refused; -1 when the memory is
    not anonymous (a mapped file: safetensors loaded in place)."""
    st = t.untyped_storage()
    span = aligned_span(st.data_ptr(), st.nbytes()) if st.nbytes() >= MIN_BYTES else None
    if span is None:
        return 0
    fn(span[0], span[1], MADV_HUGEPAGE)
    if fn(span[0], span[1], MADV_COLLAPSE) == 0:
        return span[1]
    return -1 if ctypes.get_errno() == errno.EINVAL else 0


def advised_block(fn, nbytes: int) -> torch.Tensor:
    """``uint8[nbytes]`` of fresh anonymous memory starting on a huge-page boundary, its whole huge
    pages advised before anything is written (the first writes fault them in as huge pages)."""
    raw = torch.empty(nbytes + HUGE, dtype=torch.uint8)
    base = (-raw.data_ptr()) % HUGE
    span = aligned_span(raw.data_ptr() + base, nbytes)
    if span is not None:
        fn(span[0], span[1], MADV_HUGEPAGE)
    return raw[base:base + nbytes]


def _view_of(block: torch.Tensor, off: int, t: torch.Tensor) -> torch.Tensor:
    """``t``'s contents copied into ``block[off:]``, viewed with ``t``'s dtype and shape."""
    out = block[off:off + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
    out.copy_(t)
    return out


def anonymous_copy(fn, t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``t`` in an :func:`advised_block`."""
    return _view_of(advised_block(fn, t.numel() * t.element_size()), 0, t)


def file_mappings() -> list[tuple[int, int]]:
    """``[(start, end)]`` of this process's file-backed mappings (``/proc/self/maps`` lines with an
    inode), or [] where unreadable."""
    out = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[4] != "0":
                    a, b = parts[0].split("-")
                    out.append((int(a, 16), int(b, 16)))
    except OSError:
        pass
    return out


def _drop_file_pages(fn, t: torch.Tensor, files: list[tuple[int, int]]) -> None:
    """Unmap the file pages a copy read from this process (``MADV_DONTNEED`` on a private file
    mapping: they stay in the page cache and read back unchanged if touched again). Without it
    they count in the process's RSS next to the copy for as long as the file stays mapped (the
    small tensors of the same safetensors file keep the whole mapping). Only inside ``files``
    (:func:`file_mappings`): on anonymous memory the same call would zero the pages."""
    page = 4096
    a = t.data_ptr()
    lo, hi = (a + page - 1) // page * page, (a + t.numel() * t.element_size()) // page * page
    if hi > lo and any(s <= lo and hi <= e for s, e in files):
        fn(lo, hi - lo, MADV_DONTNEED)


def advise(tensors) -> int:
    """Ask for huge pages under every CPU tensor's storage of at least 4 MiB (each storage once).
    Returns the bytes the kernel collapsed into huge pages (0 when unsupported or turned off)."""
    fn = _madvise() if enabled() else None
    if fn is None:
        return 0
    done, seen = 0, set()
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
            continue
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            done += max(0, _collapse(fn, t))
    return done


_LAYER = re.compile(r"^((?:.*?\.)?(?:layers|h|blocks)\.\d+)\.")
PACK_MIN = 64 << 10  # smaller weights are not worth a slot of their own


def _packable(p: torch.Tensor) -> bool:
    """A 2-D CPU weight between 64 KiB and 4 MiB that owns its whole storage."""
    n = p.numel() * p.element_size()
    return (p.dim() == 2 and p.device.type == "cpu" and p.is_contiguous() and PACK_MIN <= n < MIN_BYTES
            and p.untyped_storage().nbytes() == n)


def pack_layers(model, fn, files: list[tuple[int, int]]) -> int:
    """Copy each decoder layer's weights of 64 KiB–4 MiB (Gemma 3 270M's projections: 0.3–2.6 MB
    in bf16) into one huge-page-advised block per layer, each parameter a view of it. Alone they
    are too small for a huge page. Returns the bytes packed.

    A method that later converts some of a layer's weights to another layer-out (input-major)
    leaves their old slots unused until every weight of that layer is converted."""
    groups: dict[str, list] = {}
    for name, p in model.named_parameters():
        m = _LAYER.match(name)
        if m and _packable(p):
            groups.setdefault(m.group(1), []).append(p)
    done = 0
    for params in groups.values():
        sizes = [(p.numel() * p.element_size() + 63) // 64 * 64 for p in params]
        total = sum(sizes)
        if total < 2 * HUGE:
            continue
        block, off = advised_block(fn, total), 0
        with torch.no_grad():
            for p, size in zip(params, sizes):
                old = p.data
                p.data = _view_of(block, off, old)
                _drop_file_pages(fn, old, files)
                off += size
        done += total
    return done


def advise_model(model) -> int:
    """:func:`advise` over a model's parameters; a large parameter whose memory is a mapped file
    (an fp32 model read in place from its safetensors cache) is first copied to anonymous memory
    (file pages cannot be collapsed); each decoder layer's smaller weights are packed into one
    huge-page block (:func:`pack_layers`). Returns the bytes now on huge pages (requested)."""
    fn = _madvise() if enabled() else None
    if fn is None:
        return 0
    files = file_mappings()
    done, seen = pack_layers(model, fn, files), set()
    for p in model.parameters():
        if p.device.type != "cpu" or p.untyped_storage().data_ptr() in seen:
            continue
        seen.add(p.untyped_storage().data_ptr())
        got = _collapse(fn, p)
        if got < 0 and p.is_contiguous():
            old = p.data
            with torch.no_grad():
                p.data = anonymous_copy(fn, old)
            _drop_file_pages(fn, old, files)
            got = p.numel() * p.element_size()
        done += max(0, got)
    return done


CHUNK = 32 << 20  # bytes of an arena chunk (a tensor over a quarter of it gets a block of its own)
ALIGN = 64


class _Arena:
    """Advised blocks handed out in 64-byte-aligned slices, one chunk at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.chunk: torch.Tensor | None = None
        self.used = 0

    def take(self, fn, nbytes: int) -> torch.Tensor:
        need = -(-nbytes // ALIGN) * ALIGN
        with self.lock:
            if need > CHUNK // 4:
                return advised_block(fn, need)
            if self.chunk is None or self.used + need > self.chunk.numel():
                self.chunk, self.used = advised_block(fn, CHUNK), 0
            out = self.chunk[self.used:self.used + need]
            self.used += need
            return out


_ARENA = _Arena()


def empty(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor ``shape`` of ``dtype`` from the huge-page arena (``torch.empty``
    where huge pages are turned off or unsupported)."""
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"a tensor cannot have a negative size: {shape}")
    nbytes = torch.Size(shape).numel() * dtype.itemsize
    fn = _madvise() if enabled() else None
    if fn is None or nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    return _ARENA.take(fn, nbytes)[:nbytes].view(dtype).view(shape)


def copy(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of CPU tensor ``t`` from the huge-page arena (``t`` itself off the CPU)."""
    if t.device.type != "cpu":
        return t
    out = empty(t.shape, t.dtype)
    out.copy_(t)
    return out


def copy_fields(obj):
    """The dataclass ``obj`` (a :class:`~tda.models.quant.QuantWeight`, an input-major repack, ...)
    with every tensor field a :func:`copy` of its own."""
    return dataclasses.replace(obj, **{f.name: copy(v) for f in dataclasses.fields(obj)
                                       if isinstance(v := getattr(obj, f.name), torch.Tensor)})


def contiguous(t: torch.Tensor) -> torch.Tensor:
    """``t.contiguous()`` as a fresh copy, a CPU storage of at least 4 MiB in its own block advised
    before the copy writes it (:func:`advised_block`: faulted in as huge pages, with no synchronous
    ``MADV_COLLAPSE`` afterwards — ~10 ms per 5 MB weight, paid on every layout change)."""
    fn = _madvise() if enabled() else None
    nbytes = t.numel() * t.element_size()
    if fn is None or t.device.type != "cpu" or nbytes < MIN_BYTES:
        return t.contiguous() if not t.is_contiguous() else t.clone()
    return anonymous_copy(fn, t)


def index_select(t: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``t.index_select(dim, index)`` (contiguous), written straight into an :func:`advised_block`
    where the result is a CPU tensor of at least 4 MiB: the slices that a decode step streams
    instead of the whole weight (a sliced FFN's kept rows and columns) get huge pages too, and are
    freed with the slice. Measured (random:llama-1b's gate/up/down sliced to half, 22 layers, fp32,
    the C++ GEMVs on 2 threads, one process, alternating): 36.5 ms on base pages, 32.3 on these."""
    nbytes = index.numel() * (t.numel() // max(t.shape[dim], 1)) * t.element_size()
    fn = _madvise() if enabled() else None
    if fn is None or t.device.type != "cpu" or nbytes < MIN_BYTES:
        return t.index_select(dim, index).contiguous()
    shape = list(t.shape)
    shape[dim] = index.numel()
    out = advised_block(fn, nbytes).view(t.dtype).view(shape)
    torch.index_select(t, dim, index, out=out)
    return out

