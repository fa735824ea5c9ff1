"""Huge pages under large CPU weights (tda.models.hugepages): best effort, contents unchanged, file
-backed weights copied to anonymous memory first, a switch to turn it off."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from tda.models import hugepages as H

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux madvise")


def test_aligned_span():
    h = H.HUGE
    assert H.aligned_span(h, 3 * h) == (h, 3 * h)
    assert H.aligned_span(h + 1, 3 * h) == (2 * h, 2 * h)  # only whole huge pages inside
    assert H.aligned_span(h + 1, h) is None


@linux
def test_advise_keeps_values_and_can_be_turned_off(monkeypatch):
    big = nn.Linear(1024, 4096, bias=False)  # 16 MiB of fp32
    before = big.weight.detach().clone()
    monkeypatch.setenv("TDA_HUGEPAGES", "0")
    assert H.advise_model(big) == 0
    monkeypatch.setenv("TDA_HUGEPAGES", "1")
    got = H.advise_model(big)
    assert got in (0,) or H.HUGE <= got <= 16 << 20  # 0 where the kernel refuses (old kernel, THP off)
    assert torch.equal(big.weight, before)
    small = nn.Linear(8, 8)
    assert H.advise_model(small) == 0  # nothing under 4 MiB


@linux
def test_file_backed_weights_are_copied_to_anonymous_memory(tmp_path):
    n = 3 * 1024 * 1024  # 12 MiB of fp32
    path = tmp_path / "w.bin"
    ref = torch.randn(n, generator=torch.Generator().manual_seed(0))
    ref.numpy().tofile(path)
    mapped = torch.from_file(str(path), shared=False, size=n, dtype=torch.float32)  # a private file mapping
    lin = nn.Linear(1024, 3 * 1024, bias=False)
    with torch.no_grad():
        lin.weight.data = mapped.view(3 * 1024, 1024)
    ptr = lin.weight.data_ptr()
    H.advise_model(lin)
    assert torch.equal(lin.weight.reshape(-1), ref)
    if H._madvise() is not None:
        st = lin.weight.untyped_storage()
        if H._collapse(H._madvise(), lin.weight) != 0:  # the kernel handles huge pages here
            assert lin.weight.data_ptr() != ptr  # the copy, not the file mapping
            assert st.nbytes() >= n * 4


def test_anonymous_copy_is_exact_for_odd_sizes():
    fn = H._madvise() or (lambda *a: 0)
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        t = torch.randn(1001, 37).to(dt)
        c = H.anonymous_copy(fn, t)
        assert torch.equal(c, t) and c.is_contiguous() and c.data_ptr() % t.element_size() == 0


class _Stack(nn.Module):
    """A model-shaped stack: ``layers.N.*`` with five 1 MiB fp32 weights per layer."""

    def __init__(self, n_layers=2):
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleDict({f"p{i}": nn.Linear(512, 512, bias=False) for i in range(5)})
                                    for _ in range(n_layers))
        self.head = nn.Linear(512, 8)


@linux
def test_pack_layers_puts_each_layers_weights_in_one_block(monkeypatch):
    if H._madvise() is None:
        pytest.skip("no madvise")
    monkeypatch.setenv("TDA_HUGEPAGES", "1")
    model = _Stack()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    H.advise_model(model)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    for layer in model.layers:
        ptrs = {m.weight.untyped_storage().data_ptr() for m in layer.values()}
        assert len(ptrs) == 1  # one block per layer
        assert all(m.weight.is_contiguous() for m in layer.values())
    assert model.layers[0].p0.weight.untyped_storage().data_ptr() != model.layers[1].p0.weight.untyped_storage().data_ptr()
    x = torch.randn(3, 512)
    assert torch.equal(model.layers[1].p3(x), x @ before["layers.1.p3.weight"].T)

    from tda.engine import layouts

    wt = layouts.input_major(model.layers[0].p1)  # a method's layout change still works on a packed weight
    assert torch.equal(wt, before["layers.0.p1.weight"].T)


@linux
def test_no_packing_when_turned_off(monkeypatch):
    monkeypatch.setenv("TDA_HUGEPAGES", "0")
    model = _Stack()
    H.advise_model(model)
    assert len({m.weight.untyped_storage().data_ptr() for m in model.layers[0].values()}) == 5


# ---- the arena: weights made after loading (tda.models.hugepages.empty / copy) ----


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.float16, torch.float32, torch.int64])
def test_arena_copy_keeps_values_shape_and_dtype(dtype):
    t = (torch.randn(37, 11) * 50).to(dtype)
    got = H.copy(t)
    assert got.dtype == dtype and got.shape == t.shape and got.is_contiguous() and torch.equal(got, t)
    assert got.data_ptr() != t.data_ptr() and got.data_ptr() % H.ALIGN == 0
    got[0, 0] = 1  # writable, and not the source
    assert torch.equal(got[1:], t[1:])


@linux
def test_arena_packs_small_tensors_and_gives_large_ones_their_own(monkeypatch):
    monkeypatch.setenv("TDA_HUGEPAGES", "1")
    monkeypatch.setattr(H, "_ARENA", H._Arena())  # a fresh chunk, whatever ran before
    a, b = H.empty((100,), torch.float32), H.empty((3, 5), torch.int8)
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()  # one chunk
    assert b.data_ptr() - a.data_ptr() == H.ALIGN * 7  # 400 bytes rounded up to whole lines
    assert a.data_ptr() % H.HUGE == 0  # the chunk starts on a huge page
    big = H.empty((H.CHUNK,), torch.uint8)
    assert big.untyped_storage().data_ptr() != a.untyped_storage().data_ptr()
    big.fill_(3)
    assert int(big[-1]) == 3


def test_arena_off_switch_and_bad_input(monkeypatch):
    monkeypatch.setenv("TDA_HUGEPAGES", "0")
    t = torch.arange(10.0)
    got = H.copy(t)
    assert torch.equal(got, t) and got.untyped_storage().nbytes() == t.untyped_storage().nbytes()
    assert H.empty((0, 4), torch.float32).shape == (0, 4)
    with pytest.raises(ValueError, match="negative"):
        H.empty((2, -1), torch.float32)
    meta = torch.empty(3, device="meta")
    assert H.copy(meta) is meta


@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_index_select_equals_torch_and_lands_on_a_huge_page_boundary(dim, dtype, monkeypatch):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2048, 2560, generator=g).to(dtype)  # 20 MiB fp32, 10 MiB bf16: half of it over 4 MiB
    idx = torch.randperm(t.shape[dim], generator=g)[: t.shape[dim] // 2 + 3].sort().values
    got = H.index_select(t, dim, idx)
    assert torch.equal(got, t.index_select(dim, idx)) and got.is_contiguous() and got.dtype == dtype
    if sys.platform.startswith("linux"):
        assert got.data_ptr() % H.HUGE == 0  # its own advised block
    small = H.index_select(t[:8], dim, idx[idx < 8] if dim == 0 else idx)  # under 4 MiB: plain
    assert torch.equal(small, t[:8].index_select(dim, idx[idx < 8] if dim == 0 else idx))
    monkeypatch.setenv("TDA_HUGEPAGES", "0")
    off = H.index_select(t, dim, idx)
    assert torch.equal(off, got)
    empty = H.index_select(t, dim, idx[:0])
    assert empty.shape[dim] == 0
