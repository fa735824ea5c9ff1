"""A Q8_0 lm_head held in its decode tiles only (``TDA_HEAD_TILES=1``; unset, on AMD CPUs): the
tiles give the blocks' exact values (repack, rows, de-quantised weights bit for bit), the module lets its blocks go when
the engine first builds its product, a decode row on the tiles equals ``F.linear`` on gguf's
de-quantised weights to fp32 rounding, and prefill, non-finite rows and the tied embedding's gather
read the tiles."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tda.engine import quant_kernels
from tda.models import quant

gguf = pytest.importorskip("gguf")
sys.path.insert(0, str(Path(__file__).parent))
from test_quant_blocks import _blocks, _close  # noqa: E402

_ops = quant_kernels.quant_ops()
needs_tiles = pytest.mark.skipif(_ops is None or quant_kernels.decode_kernel(_ops) is None,
                                 reason="no integer-tile decode GEMV on this CPU or build")


@needs_tiles
@pytest.mark.parametrize("d_out", [16, 48, 80])
def test_tiles_hold_the_blocks_exact_values(d_out):
    bw, ref = _blocks("Q8_0", d_out, 6, seed=d_out)  # 192 inputs: three chunks of 64
    tw = quant.TileWeight.from_blocks(bw.blocks, _ops.gemv_tiles_pack)
    whole = quant.TileWeight.from_blocks(bw.blocks, _ops.gemv_tiles_pack, rows_per_chunk=16)  # chunk by chunk
    assert torch.equal(tw.packed, whole.packed) and torch.equal(tw.st, whole.st)
    assert tw.shape == bw.shape and tw.file_bytes == bw.nbytes
    assert tw.nbytes == quant_kernels.tile_nbytes("Q8_0", *bw.shape)
    rq, tq = bw.unpack(), tw.unpack()
    assert torch.equal(tq.q, rq.q) and torch.equal(tq.scale, rq.scale) and tq.min is None
    assert torch.equal(tw.dequantize(), ref) and torch.equal(tw.dequantize(), bw.dequantize())
    for r0, r1 in ((0, 16), (5, d_out - 3), (d_out - 1, d_out)):  # whole tiles and not
        assert torch.equal(tw.dequantize(r0, r1), bw.dequantize(r0, r1))
        assert torch.equal(tw.unpack(r0, r1).q, bw.unpack(r0, r1).q)
    idx = torch.tensor([3, 0, d_out - 1, 17 % d_out, 3])
    assert torch.equal(tw.rows(idx), bw.rows(idx))


def test_head_tiles_by_default_on_amd_cpus(monkeypatch):
    monkeypatch.delenv("TDA_HEAD_TILES", raising=False)
    for vendor, want in (("AuthenticAMD", True), ("GenuineIntel", False), ("", False)):
        monkeypatch.setattr(quant_kernels, "cpu_vendor", lambda v=vendor: v)
        assert quant_kernels.head_tiles() is want and not quant_kernels.head_tiles("Q4_K")
        for env in ("0", "1"):
            monkeypatch.setenv("TDA_HEAD_TILES", env)
            assert quant_kernels.head_tiles() is (env == "1") and quant_kernels.head_tiles("Q6_K") is (env == "1")
        monkeypatch.delenv("TDA_HEAD_TILES")


def test_bad_tiles_are_refused():
    with pytest.raises(ValueError, match="Q8_0"):
        quant.TileWeight(torch.zeros(1024, dtype=torch.uint8), torch.zeros(1, 2, 16), "Q4_K")
    with pytest.raises(ValueError, match="packed"):
        quant.TileWeight(torch.zeros(1000, dtype=torch.uint8), torch.zeros(1, 2, 16))
    with pytest.raises(ValueError, match="st must"):
        quant.TileWeight(torch.zeros(1024, dtype=torch.uint8), torch.zeros(1, 2, 8))
    bw, _ = _blocks("Q8_0", 20, 2, seed=1)  # 20 rows: not whole tiles of 16
    with pytest.raises(ValueError, match="whole tiles"):
        quant.TileWeight.from_blocks(bw.blocks, lambda b, q: None)


@needs_tiles
def test_an_lm_head_lets_its_blocks_go_under_head_tiles(monkeypatch):
    monkeypatch.delenv("TDA_AMX_GEMV", raising=False)
    monkeypatch.delenv("TDA_NO_VNNI_GEMV", raising=False)
    bw, ref = _blocks("Q8_0", 64, 4, seed=9)  # [64, 128]
    monkeypatch.setattr(quant_kernels, "TILE_GEMV_MAX_WEIGHTS", 64 * 128 - 1)  # counts as an lm_head
    blocks_head = quant.QuantLinear(bw)
    bias = None
    monkeypatch.setenv("TDA_HEAD_TILES", "0")
    quant_kernels.linear_fn(blocks_head)
    assert blocks_head.tile_weight is None and blocks_head.block_weight is not None  # 0 keeps the blocks

    head = quant.QuantLinear(quant.BlockWeight(bw.blocks.clone(), "Q8_0", 128), bias)
    emb = quant.QuantEmbedding(head, torch.tensor(2.0))
    monkeypatch.setenv("TDA_HEAD_TILES", "1")
    fn = quant_kernels.linear_fn(head)
    assert head.block_weight is None and "blocks" not in dict(head.named_buffers())
    assert head.tile_weight is not None and head.decode_nbytes == quant_kernels.tile_nbytes("Q8_0", 64, 128)
    assert head.storage is head.tile_weight.packed
    torch.manual_seed(0)
    for rows in (1, 3):  # a decode row on the tiles; more rows de-quantised and multiplied
        x = torch.randn(rows, 128) * torch.logspace(-3, 3, 128)
        _close(fn(x), x, ref, None)
        _close(head(x), x, ref, None)
    x = torch.randn(1, 128)
    x[0, 7] = float("nan")
    assert torch.equal(fn(x).isnan(), F.linear(x, ref).isnan())
    ids = torch.tensor([[5, 63, 0]])
    assert torch.equal(emb(ids), ref[ids] * 2.0)  # the tied embedding gathers from the tiles
    assert torch.equal(head.weight, ref)
    rq = head.qweight  # a sparse method's repack, unpacked from the tiles
    assert torch.equal(rq.q, bw.unpack().q) and torch.equal(rq.scale, bw.unpack().scale)
    with pytest.raises(ValueError, match="own blocks"):
        head.keep_tiles_only(head.tile_weight)


@needs_tiles
def test_a_gguf_head_loads_as_tiles_only(tmp_path, monkeypatch):
    """``TDA_HEAD_TILES=1`` on a GGUF file: its Q8_0 lm_head is made into tiles straight from the
    file's map (no blocks held), the model's logits equal the blocks model's to fp32 rounding and
    its greedy tokens are the same."""
    from tda.engine.generate import generate
    from tda.models.load import load_model
    from tests.gguf_writer import write_tiny_llama_gguf

    monkeypatch.delenv("TDA_AMX_GEMV", raising=False)
    monkeypatch.delenv("TDA_NO_VNNI_GEMV", raising=False)
    monkeypatch.setattr(quant_kernels, "TILE_GEMV_MAX_WEIGHTS", 512 * 64 - 1)  # tiny-llama's head counts as one
    path = write_tiny_llama_gguf(load_model("tiny-llama", dtype="fp32"), tmp_path / "tiny.gguf", "Q8_0")
    monkeypatch.setenv("TDA_HEAD_TILES", "0")
    blocks = load_model(str(path))
    monkeypatch.setenv("TDA_HEAD_TILES", "1")
    tiles = load_model(str(path))
    head = tiles.model.get_output_embeddings()
    assert head.tile_weight is not None and head.block_weight is None
    assert blocks.model.get_output_embeddings().tile_weight is None
    assert torch.equal(head.weight, blocks.model.get_output_embeddings().weight)
    ids = torch.tensor([[1, 17, 42, 8, 99, 300, 5]])
    with torch.inference_mode():
        assert torch.allclose(tiles.model(input_ids=ids).logits, blocks.model(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    assert generate(tiles, "the quick brown fox", max_new_tokens=8).token_ids == \
        generate(blocks, "the quick brown fox", max_new_tokens=8).token_ids
