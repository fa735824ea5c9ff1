"""The one-pass GGUF header reader and the index built from it equal gguf-py's reader and
transformers' own full parse (config, tokenizer, tensor table), on a tiny Llama GGUF and, slow, on
the embedded Gemma 3 file; damaged headers are refused in one line."""

from __future__ import annotations

import json
import sys

import pytest

from tda.common.errors import ModelLoadError


def _reader_table(path):
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    return [{"name": t.name, "type": t.tensor_type.name, "shape": [int(s) for s in t.shape],
             "offset": int(t.data_offset), "nbytes": int(t.n_bytes)} for t in r.tensors]


def _check_index_equals_transformers(path, tmp_path):
    from transformers import AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from tda.models import gguf_index
    from tda.models.gguf_header import read_header

    _, tensors = read_header(path)
    assert tensors == _reader_table(path)
    info, folder = gguf_index.index(path)
    assert info["config"] == load_gguf_checkpoint(str(path), return_tensors=False)["config"]
    assert info["tensors"] == tensors
    ref = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    got = AutoTokenizer.from_pretrained(str(folder))
    text = "The quick brown fox, 1912: naïve café — ünïcödé <bos>"
    assert got(text).input_ids == ref(text).input_ids
    assert (got.bos_token, got.eos_token, got.pad_token) == (ref.bos_token, ref.eos_token, ref.pad_token)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_index_of_a_llama_gguf_equals_transformers_parse(tmp_path, monkeypatch, qtype):
    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path / "cache"))
    from tda.models.load import load_model
    from tests.gguf_writer import write_tiny_llama_gguf

    path = write_tiny_llama_gguf(load_model("tiny-llama", dtype="fp32"), tmp_path / f"t-{qtype}.gguf", qtype)
    _check_index_equals_transformers(path, tmp_path)


@pytest.mark.slow
def test_index_of_the_embedded_gguf_equals_transformers_parse(tmp_path, monkeypatch):
    from tda.models import embedded_gguf

    path = embedded_gguf.gguf_file(embedded_gguf.ensure_gguf_cache())
    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path / "cache"))  # a fresh index, the shared file
    _check_index_equals_transformers(path, tmp_path)


@pytest.mark.parametrize("damage", ["magic", "truncated-header", "truncated-data"])
def test_damaged_gguf_headers_are_refused_in_one_line(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path / "cache"))
    from tda.models import gguf_index
    from tda.models.load import load_model
    from tests.gguf_writer import write_tiny_llama_gguf

    path = write_tiny_llama_gguf(load_model("tiny-llama", dtype="fp32"), tmp_path / "t.gguf", "Q8_0")
    data = path.read_bytes()
    if damage == "magic":
        data = b"GGUX" + data[4:]
    elif damage == "truncated-header":
        data = data[:200]
    else:
        data = data[:-1000]
    path.write_bytes(data)
    with pytest.raises(ModelLoadError) as e:
        gguf_index.index(path)
    assert "t.gguf" in str(e.value) and "\n" not in str(e.value)
    assert not list((tmp_path / "cache" / "gguf-index").glob("*/index.json"))
    json.dumps(str(e.value))  # printable


def test_indexes_of_gone_or_changed_files_are_swept_when_another_is_built(tmp_path, monkeypatch):
    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path / "cache"))
    from tda.models import gguf_index
    from tda.models.load import load_model
    from tests.gguf_writer import write_tiny_llama_gguf

    lm = load_model("tiny-llama", dtype="fp32")
    gone, changed, kept = (write_tiny_llama_gguf(lm, tmp_path / f"{n}.gguf", "Q8_0") for n in ("gone", "changed", "kept"))
    dirs = {p.stem: gguf_index.index(p)[1] for p in (gone, changed, kept)}
    assert all(d.is_dir() for d in dirs.values())
    gone.unlink()
    changed.write_bytes(changed.read_bytes() + b"\0" * 64)  # another size: another key
    fresh = write_tiny_llama_gguf(lm, tmp_path / "fresh.gguf", "Q4_0")
    gguf_index.index(fresh)  # building an index sweeps the stale ones
    assert not dirs["gone"].exists() and not dirs["changed"].exists() and dirs["kept"].is_dir()
    assert gguf_index.index(kept)[1] == dirs["kept"]


def test_an_index_built_in_a_child_process_is_the_index(tmp_path, monkeypatch):
    """The embedded conversion indexes the tokenizer in a child while it de-quantises: the child's
    index is the one a load reads (hashes checked); a child that cannot start falls back to here;
    the header-only info is what index.json holds."""
    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path / "cache"))
    from tda.models import gguf_index
    from tda.models.load import load_model
    from tests.gguf_writer import write_tiny_llama_gguf

    path = write_tiny_llama_gguf(load_model("tiny-llama", dtype="fp32"), tmp_path / "t.gguf", "Q8_0")
    assert not gguf_index.is_indexed(path)
    with gguf_index.ChildIndex(path) as child:
        info = gguf_index.header_info(path)
        folder = child.result()
    assert gguf_index.is_indexed(path) and folder == gguf_index.index_dir(path)
    assert json.loads((folder / "index.json").read_text()) == json.loads(json.dumps(info))
    other = write_tiny_llama_gguf(load_model("tiny-llama", dtype="fp32"), tmp_path / "u.gguf", "Q4_0")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    assert gguf_index.ChildIndex(other).result() == gguf_index.index_dir(other)  # built here instead
    assert gguf_index.is_indexed(other)
