"""The GGUF block types the quantized format repacks (torch-free: the CLI's checks and ``tda models``
read it without importing torch; :mod:`tda.models.quant` holds the repacks themselves)."""

from __future__ import annotations

# name -> (values per block, bytes per block, group length G of the repack)
BLOCKS = {
    "Q8_0": (32, 34, 32),
    "Q5_0": (32, 22, 32),
    "Q4_0": (32, 18, 32),
    "Q4_K": (256, 144, 32),
    "Q6_K": (256, 210, 16),
}
QUANTIZABLE = ("Q8_0", "Q4_0", "Q4_K")  # what tda.models.quant.quantize makes from fp32 weights
WITH_MINS = ("Q4_K",)  # types whose repack also stores per-group minimums

# Block types a GGUF load keeps in the int8 group repack rather than in the file's blocks: none.
# Q8_0 was kept there while its GEMV (Gemma's lm_head) ran a few percent faster on the repack; with
# every weight in huge-page-advised memory (tda.models.hugepages) the blocks' GEMV reads the lm_head
# faster than the repack's (same process, alternating calls), and the smaller Q8_0 weights decode on
# the integer tiles. benchmarks/quant_layers.py times the layouts side by side.
REPACKED: tuple[str, ...] = ()


def repack_bytes(qtype: str, n: int) -> int:
    """Bytes of ``n`` values of ``qtype`` in the repack: one int8 each, an fp32 scale per group
    (and an fp32 minimum per group for the types that have them)."""
    group = BLOCKS[qtype][2]
    return n + 4 * (n // group) * (2 if qtype in WITH_MINS else 1)


def format_bytes(qtype: str, n: int) -> int:
    """Bytes of ``n`` values of ``qtype`` as the gguf format holds them: the file's blocks, or the
    repack for the types in :data:`REPACKED`."""
    return repack_bytes(qtype, n) if qtype in REPACKED else file_bytes(qtype, n)


def file_bytes(qtype: str, n: int) -> int:
    """Bytes of ``n`` values of ``qtype`` in the GGUF file's blocks."""
    per, size, _ = BLOCKS[qtype]
    return n // per * size
