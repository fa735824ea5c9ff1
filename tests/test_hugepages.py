"""Weights in huge-page-advised memory (``tda.common.hugepages``): same values, shapes and dtypes as
``torch.empty``/``clone`` would give, 64-byte aligned, small tensors packed into one mapping, large
ones in their own, and the plain path under ``TDA_NO_HUGEPAGES=1``."""

from __future__ import annotations

import pytest
import torch

from tda.common import hugepages

needs = pytest.mark.skipif(not hugepages.enabled(), reason="no madvise(MADV_HUGEPAGE) here")


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.float16, torch.float32, torch.int64])
def test_copy_keeps_values_shape_and_dtype(dtype):
    t = (torch.randn(37, 11) * 50).to(dtype)
    got = hugepages.copy(t)
    assert got.dtype == dtype and got.shape == t.shape and got.is_contiguous() and torch.equal(got, t)
    assert got.data_ptr() != t.data_ptr() and got.data_ptr() % hugepages.ALIGN == 0
    got[0, 0] = 1  # writable, and not the source
    assert torch.equal(got[1:], t[1:])


@needs
def test_small_tensors_share_a_mapping_and_large_ones_get_their_own(monkeypatch):
    monkeypatch.delenv("TDA_NO_HUGEPAGES", raising=False)
    monkeypatch.setattr(hugepages, "_ARENA", hugepages._Arena())  # a fresh chunk, whatever ran before
    a, b = hugepages.empty((100,), torch.float32), hugepages.empty((3, 5), torch.int8)
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()  # one chunk
    assert b.data_ptr() - a.data_ptr() == hugepages.ALIGN * 7  # 400 bytes rounded up to whole lines
    big = hugepages.empty((hugepages.CHUNK,), torch.uint8)
    assert big.untyped_storage().data_ptr() != a.untyped_storage().data_ptr()
    assert big.untyped_storage().nbytes() % hugepages.HUGE_PAGE == 0
    del a, b
    big.fill_(3)
    assert int(big[-1]) == 3


def test_off_switch_and_bad_input(monkeypatch):
    monkeypatch.setenv("TDA_NO_HUGEPAGES", "1")
    assert not hugepages.enabled()
    t = torch.arange(10.0)
    got = hugepages.copy(t)
    assert torch.equal(got, t) and got.untyped_storage().nbytes() == t.untyped_storage().nbytes()
    assert hugepages.empty((0, 4), torch.float32).shape == (0, 4)
    with pytest.raises(ValueError, match="negative"):
        hugepages.empty((2, -1), torch.float32)
    meta = torch.empty(3, device="meta")
    assert hugepages.copy(meta) is meta
