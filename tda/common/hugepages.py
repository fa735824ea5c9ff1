"""Weights that a decode step streams, placed in memory advised for transparent huge pages.

A decode step reads every weight once, each linear's a few hundred KB to a few MB, cold from memory.
With 4 KiB pages each page of that stream is a TLB miss and a fresh start for the hardware
prefetchers; on Linux with transparent huge pages set to ``madvise`` (the common default) memory
becomes 2 MiB pages only where a program asks (``madvise(MADV_HUGEPAGE)``), and PyTorch's allocator
asks only under ``THP_MEM_ALLOC_ENABLE=1`` read at start-up. :func:`empty` and :func:`copy` hand out
tensors from anonymous mappings so advised, packed one after another into 32 MiB chunks (a small
weight does not take a 2 MiB page of its own), 64-byte aligned. Where the platform has no such
advice, or ``TDA_NO_HUGEPAGES=1``, they are plain ``torch.empty`` / ``clone``. The values are the
same either way: only where the bytes live changes.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Sequence

import torch

ALIGN = 64  # bytes: a cache line, and every dtype's alignment
HUGE_PAGE = 2 << 20
CHUNK = 32 << 20  # bytes a mapping holds (a larger tensor gets a mapping of its own)


def enabled() -> bool:
    """Whether :func:`empty` places tensors in huge-page-advised mappings here and now."""
    return (os.environ.get("TDA_NO_HUGEPAGES") != "1" and hasattr(mmap, "MADV_HUGEPAGE")
            and hasattr(mmap, "MAP_ANONYMOUS") and hasattr(mmap.mmap, "madvise"))


def _mapping(nbytes: int) -> torch.Tensor | None:
    """A uint8 tensor over a fresh anonymous mapping of ``nbytes`` (whole huge pages), advised for
    huge pages before any page is touched; None if the kernel refuses the advice."""
    size = -(-nbytes // HUGE_PAGE) * HUGE_PAGE
    mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        mm.madvise(mmap.MADV_HUGEPAGE)
    except OSError:
        mm.close()
        return None
    return torch.frombuffer(mm, dtype=torch.uint8)  # the tensor's storage keeps the mapping alive


class _Arena:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.chunk: torch.Tensor | None = None
        self.used = 0

    def take(self, nbytes: int) -> torch.Tensor | None:
        """``nbytes`` of a chunk (uint8, 64-byte aligned), or None where the advice is refused."""
        need = -(-nbytes // ALIGN) * ALIGN
        with self.lock:
            if need > CHUNK // 4:  # a large tensor: a mapping of its own (no chunk's tail wasted)
                return _mapping(need)
            if self.chunk is None or self.used + need > self.chunk.numel():
                self.chunk, self.used = _mapping(CHUNK), 0
                if self.chunk is None:
                    return None
            out = self.chunk[self.used:self.used + need]
            self.used += need
            return out


_ARENA = _Arena()


def empty(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor ``shape`` of ``dtype`` in huge-page-advised memory (where
    :func:`enabled`; else ``torch.empty``)."""
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"a tensor cannot have a negative size: {shape}")
    n = 1
    for s in shape:
        n *= s
    nbytes = n * torch.empty((), dtype=dtype).element_size()
    raw = _ARENA.take(nbytes) if enabled() and nbytes > 0 else None
    if raw is None:
        return torch.empty(shape, dtype=dtype)
    return raw[:nbytes].view(dtype).view(shape)


def copy(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of CPU tensor ``t`` in huge-page-advised memory (``t`` itself if it is
    not on the CPU)."""
    if t.device.type != "cpu":
        return t
    out = empty(t.shape, t.dtype)
    out.copy_(t)
    return out
