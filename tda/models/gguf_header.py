"""A GGUF file's header in one pass: its metadata and tensor table, without numpy views per field.

``gguf.GGUFReader`` builds numpy views for every part of every metadata field — the 262,144
strings of Gemma 3's vocabulary take it 8–16 s here — although reading a model needs the scalars,
the tensor table and, for its tokenizer only, two string arrays. :func:`read_header` walks the
layout of the GGUF specification (v2/v3, little-endian) with ``struct``: string arrays are skipped
unless asked for, numeric arrays become lists. It reads nothing of the tensor data.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Container
from math import prod
from pathlib import Path

# value type -> struct format (the GGUF specification's numbering)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_VERSIONS = (2, 3)


class _Cursor:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str):
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return out[0] if len(out) == 1 else out

    def string(self) -> str:
        n = self.unpack("<Q")
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def value(self, vtype: int, keep_strings: bool):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            raise ValueError(f"unknown metadata value type {vtype}")
        etype, count = self.unpack("<IQ")
        if etype in _SCALARS:
            fmt = _SCALARS[etype]
            out = list(struct.unpack_from(f"<{count}{fmt[1]}", self.buf, self.pos))
            self.pos += count * struct.calcsize(fmt)
            return out
        if etype != _STRING:
            raise ValueError(f"metadata array of type {etype} is not supported")
        if keep_strings:
            return [self.string() for _ in range(count)]
        for _ in range(count):  # variable length: walk it
            self.pos += 8 + self.unpack("<Q")
        return count


def read_header(path: str | Path, string_arrays: Container[str] = ()) -> tuple[dict, list[dict]]:
    """``(metadata, tensors)`` of the GGUF at ``path``.

    metadata: key -> scalar, str, list of numbers, list of str (keys in ``string_arrays``) or, for
    other string arrays, their length. tensors: per tensor ``{"name", "type" (e.g. "Q5_0"), "shape"
    (innermost dim first, as the file and ``gguf.GGUFReader`` list them), "offset" (absolute, in
    bytes), "nbytes"}``. Raises ValueError for a file that is not a GGUF v2/v3."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        c = _Cursor(buf)
        try:
            if bytes(buf[:4]) != b"GGUF":
                raise ValueError("no GGUF magic bytes")
            c.pos = 4
            version, n_tensors, n_kv = c.unpack("<IQQ")
            if version not in _VERSIONS:
                raise ValueError(f"GGUF version {version} (this reader takes 2 and 3)")
            meta: dict = {}
            for _ in range(n_kv):
                key = c.string()
                meta[key] = c.value(c.unpack("<I"), key in string_arrays)
            table = []
            for _ in range(n_tensors):
                name = c.string()
                dims = c.unpack(f"<{c.unpack('<I')}Q")
                dims = [dims] if isinstance(dims, int) else list(dims)
                ttype, offset = c.unpack("<IQ")
                table.append((name, dims, ttype, offset))
        except struct.error:
            raise ValueError("the header is cut short") from None
        align = int(meta.get("general.alignment", 32))
        data_start = (c.pos + align - 1) // align * align
        size = len(buf)
    tensors = []
    for name, dims, ttype, offset in table:
        try:
            qt = GGMLQuantizationType(ttype)
        except ValueError:
            raise ValueError(f"tensor {name} has an unknown block type {ttype}") from None
        per, nbytes = GGML_QUANT_SIZES[qt]
        n = prod(dims)
        t = {"name": name, "type": qt.name, "shape": [int(d) for d in dims], "offset": data_start + int(offset),
             "nbytes": n // per * nbytes}
        if t["offset"] + t["nbytes"] > size:
            raise ValueError(f"tensor {name} runs past the end of the file (truncated?)")
        tensors.append(t)
    return meta, tensors
