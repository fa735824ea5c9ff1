"""Load a GGUF file into a Hugging Face model, keeping its quantized blocks (``--dtype gguf``).

transformers reads a GGUF by de-quantising every tensor to fp32 (``from_pretrained(...,
gguf_file=...)``). :func:`load_gguf` uses transformers' own pieces for everything but the weight
values — the config parsed from the file's metadata, the architecture's model class, the GGUF →
Hugging Face tensor-name map and the architecture's tensor processor — and builds the model with
empty weights (accelerate's ``init_empty_weights``): then each quantized tensor of a block type
in :data:`tda.models.quant.BLOCKS` becomes a :class:`~tda.models.quant.QuantLinear` holding the
file's own blocks (:class:`~tda.models.quant.BlockWeight`: the bytes of the file, no fp32 copy) and everything else (norms, biases, other block types) is de-quantised as
transformers does it. A processor that re-orders rows (Llama's q/k rotary permutation) is applied
to the repacked rows — it is run on the row indices, so any processor that only permutes rows is
honoured, and one that changes values makes that tensor fall back to de-quantisation (with a line).
A quantized tied embedding (Gemma's ``token_embd``) becomes the lm_head's :class:`QuantLinear`
and a :class:`~tda.models.quant.QuantEmbedding` gathering from the same blocks.

``keep_blocks=False`` de-quantises everything (the fp32 model transformers would build).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tda.common.errors import ModelLoadError
from tda.models import hugepages, quant, quant_types

Progress = Callable[[str], None]


def _processor(arch: str, config: dict):
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    return TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=config)


def _row_order(proc, name: str, rows: int) -> np.ndarray | None:
    """How the processor re-orders a tensor's rows (identity -> None), or raises ValueError when it
    does more than re-order them."""
    idx = np.arange(rows, dtype=np.float64).reshape(rows, 1)
    out = proc.process(weights=idx, name=name, tensor_key_mapping={}, parsed_parameters={}).weights
    out = np.asarray(out).reshape(-1)
    if out.shape != (rows,) or not np.array_equal(np.sort(out), np.arange(rows)):
        raise ValueError("the processor changes values")
    return None if np.array_equal(out, np.arange(rows)) else out.astype(np.int64)


def _unpack_chunked(path: Path, t: dict, qtype: str, shape: tuple[int, int], chunk_bytes: int = 16 << 20):
    """:func:`tda.models.quant.unpack` of a tensor, read ~16 MB of rows at a time into
    preallocated tensors: the file's pages and the temporaries of one chunk at a time are all the
    load holds beside the result (token_embd alone is 178 MB)."""
    from tda.models import gguf_index

    d_out, d_in = shape
    row_bytes = t["nbytes"] // d_out
    step = max(1, chunk_bytes // row_bytes)
    if step >= d_out:  # a decode step streams it: kept in huge-page-advised memory (tda.models.hugepages)
        return hugepages.copy_fields(quant.unpack(gguf_index.tensor_bytes(path, t), qtype, shape))
    parts = None
    for r0 in range(0, d_out, step):
        r1 = min(d_out, r0 + step)
        sub = dict(t, offset=t["offset"] + r0 * row_bytes, nbytes=(r1 - r0) * row_bytes, shape=[d_in, r1 - r0])
        qw = quant.unpack(gguf_index.tensor_bytes(path, sub), qtype, (r1 - r0, d_in))
        if parts is None:
            parts = [hugepages.empty((d_out, *x.shape[1:]), x.dtype) if x is not None else None
                     for x in (qw.q, qw.scale, qw.min)]
        for dst, src in zip(parts, (qw.q, qw.scale, qw.min)):
            if dst is not None:
                dst[r0:r1] = src
    return quant.QuantWeight(parts[0], parts[1], parts[2], qtype)


def _map_blocks(raw: np.ndarray, qtype: str, shape: tuple[int, int]) -> np.ndarray:
    """A tensor's blocks in the file's map (no copy): uint8 ``[d_out, row_bytes]``."""
    d_out, d_in = shape
    per, size, _ = quant.BLOCKS[qtype]
    if d_in % per:
        raise ModelLoadError(f"{qtype}: rows of {d_in} values are not whole blocks of {per}")
    flat = np.asarray(raw).view(np.uint8).reshape(-1)
    if flat.size != d_out * (d_in // per) * size:
        raise ModelLoadError(f"{qtype}: {flat.size} bytes for a [{d_out}, {d_in}] weight")
    return flat.reshape(d_out, d_in // per * size)


def _file_blocks(raw: np.ndarray, qtype: str, shape: tuple[int, int]) -> quant.BlockWeight:
    """A tensor's blocks as the file stores them, copied out of the file's map: ``[d_out, row_bytes]``."""
    mapped = _map_blocks(raw, qtype, shape)
    blocks = hugepages.empty(mapped.shape, torch.uint8)  # streamed by prefill and decode
    blocks.numpy()[:] = mapped
    return quant.BlockWeight(blocks, qtype, shape[1])


def _head_tiles(raw: np.ndarray, qtype: str, shape: tuple[int, int]) -> quant.TileWeight | None:
    """The decode tiles an lm_head keeps instead of its blocks, made straight from the file's map
    (:func:`tda.models.quant.head_tiles_of`: the engine's choice), else None."""
    import warnings

    mapped = _map_blocks(raw, qtype, shape)
    with warnings.catch_warnings():  # the map is read-only; the tiles are written elsewhere
        warnings.simplefilter("ignore", UserWarning)
        return quant.head_tiles_of(torch.from_numpy(mapped), qtype)


def _name_map(model: nn.Module, arch: str, proc) -> dict[str, str] | None:
    """GGUF tensor name -> HF parameter name from one tensor-name map (transformers'
    ``get_gguf_hf_weights_map`` builds one per submodule, ~4 s for Gemma 3); None when a parameter
    has no GGUF name (then transformers' recursive mapping is used)."""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    key = next((k for k, v in MODEL_ARCH_NAMES.items() if v == arch), None)
    if key is None:
        return None
    names = get_tensor_name_map(key, model.config.num_hidden_layers)
    out = {}
    for hf in model.state_dict():
        base, _, suffix = proc.preprocess_name(hf).rpartition(".")
        g = names.get_name(base)
        if g is None:
            if suffix in ("weight", "bias") and not hf.endswith("rotary_emb.inv_freq"):
                return None
            continue
        out[f"{g}.{suffix}"] = hf
    return out


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    mod_name, _, attr = name.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    old = getattr(mod, attr, None)
    if isinstance(old, torch.Tensor) and tuple(old.shape) != tuple(value.shape):
        raise ModelLoadError(f"GGUF tensor for {name} has shape {tuple(value.shape)}, the model expects {tuple(old.shape)}")
    if attr in mod._parameters:
        mod._parameters[attr] = nn.Parameter(value, requires_grad=False)
    else:
        mod._buffers[attr] = value


def load_gguf(path: str | Path, *, keep_blocks: bool = True, progress: Progress | None = None,
              info: dict | None = None):
    """``(model, notes)``: the causal LM of the GGUF file at ``path`` (fp32 activations; quantized
    linears as :class:`~tda.models.quant.QuantLinear` when ``keep_blocks``), and one line per
    tensor that was de-quantised although quantized (a block type without kernels). ``info``: the
    file's :func:`~tda.models.gguf_index.header_info` (then the cached index is not needed)."""
    from accelerate import init_empty_weights
    from gguf import GGMLQuantizationType, dequantize
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import get_gguf_hf_weights_map

    from tda.models import gguf_index

    path = Path(path)
    say = progress or (lambda _m: None)
    if info is None:
        info, folder = gguf_index.index(path)
        config = AutoConfig.from_pretrained(str(folder))
    else:  # the config the index would save and read back
        config = AutoConfig.for_model(**info["config"])
    proc = _processor(info["arch"], info["config"])
    from tda.models.ffn import family_for

    family_for(config.model_type)  # UnsupportedArchitecture for what the workbench cannot analyse
    config._attn_implementation = "eager"
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    key_map = _name_map(model, info["arch"], proc) or get_gguf_hf_weights_map(model, proc)
    emb, out_emb = model.get_input_embeddings(), model.get_output_embeddings()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    notes: list[str] = []
    quant_weights: dict[str, quant.BlockWeight | quant.QuantWeight | quant.TileWeight] = {}
    for t in info["tensors"]:
        hf = key_map.get(t["name"])
        if hf is None:
            continue
        qtype, name = t["type"], t["name"]
        raw = gguf_index.tensor_bytes(path, t)
        mod_name, _, attr = hf.rpartition(".")
        mod = model.get_submodule(mod_name)
        linear_like = attr == "weight" and (type(mod) is nn.Linear or mod is emb)
        if keep_blocks and qtype in quant.BLOCKS and linear_like:
            shape = tuple(int(s) for s in reversed(t["shape"]))  # GGUF lists dims innermost first
            try:
                order = _row_order(proc, name, shape[0])
            except ValueError:
                order = False
            if order is not False:
                if qtype in quant_types.REPACKED:  # kept in the int8 repack (see quant_types.REPACKED)
                    w = _unpack_chunked(path, t, qtype, shape)
                else:  # an lm_head (tied: the input embedding) may keep its decode tiles only (TDA_HEAD_TILES)
                    is_head = (mod is emb and tied) or (mod is out_emb and not tied)
                    w = _head_tiles(raw, qtype, shape) if is_head and order is None else None
                    w = w if w is not None else _file_blocks(raw, qtype, shape)
                quant_weights[hf] = w if order is None else w.permute_rows(torch.from_numpy(order))
                continue
        if keep_blocks and linear_like and qtype not in ("F32", "F16", "BF16"):
            notes.append(f"{name} ({qtype}): no kernel for this block type, de-quantised to fp32")
        shape = tuple(int(s) for s in reversed(t["shape"]))
        if qtype in quant.BLOCKS and len(shape) == 2:  # the repack's exact values (bit-equal), vectorised
            w = _unpack_chunked(path, t, qtype, shape).dequantize().numpy()
        else:
            w = dequantize(raw, GGMLQuantizationType[qtype]).reshape(shape)
        w = proc.process(weights=w, name=name,
                         tensor_key_mapping=key_map, parsed_parameters={}).weights
        _set_tensor(model, hf, torch.from_numpy(np.array(w, dtype=np.float32)))  # a copy: the map is read-only
    head = model.get_output_embeddings()
    for hf, qw in quant_weights.items():
        mod_name = hf.rpartition(".")[0]
        mod = model.get_submodule(mod_name)
        if mod is emb:
            if tied:
                new_head = quant.QuantLinear(qw)
                model.set_output_embeddings(new_head)
                quant.set_input_embedding(model, emb, new_head)
            else:
                store = quant.QuantLinear(qw)
                new = quant.QuantEmbedding(store, getattr(emb, "embed_scale", None), getattr(emb, "padding_idx", None))
                new.store = store  # untied: the embedding owns its blocks
                model.set_input_embeddings(new)
        else:
            bias = getattr(mod, "bias", None)
            quant.replace_linear(model, mod_name, qw, None if bias is None or bias.is_meta else bias)
    if tied and head is not None and emb.weight.is_meta is False and type(head) is nn.Linear:
        head.weight = emb.weight  # a de-quantised tied embedding: tie as transformers does
    missing = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if missing:
        raise ModelLoadError(f"GGUF '{path.name}' lacks tensors for {', '.join(missing[:5])}"
                             + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    for line in notes:
        say(line)
    return model.eval(), notes


def load_gguf_tokenizer(path: str | Path):
    """The tokenizer stored in a GGUF file (converted by transformers once, then read from the
    file's index folder, :mod:`tda.models.gguf_index`)."""
    from transformers import AutoTokenizer

    from tda.models import gguf_index

    _, folder = gguf_index.index(Path(path))
    return AutoTokenizer.from_pretrained(str(folder))
