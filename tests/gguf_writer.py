"""A tiny Llama-architecture GGUF written from a seeded test model (gguf-py's writer), the way
llama.cpp's converter lays it out: q/k rows permuted for its rotary layout, linears in Q8_0 blocks,
norms in F32, a ByteLevel-BPE tokenizer ("gpt2" model, with merges). For testing the GGUF loader
against transformers' own de-quantising GGUF load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _permute(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """llama.cpp's q/k row permutation (its converter's ``permute``), which transformers undoes."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_llama_gguf(lm, path: Path, qtype: str = "Q8_0") -> Path:
    import gguf

    cfg = lm.model.config
    sd = {k: v.detach().float().numpy() for k, v in lm.model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta") or getattr(cfg, "rope_theta", 10000.0)
    w.add_rope_freq_base(float(rope))
    w.add_vocab_size(cfg.vocab_size)
    tok = json.loads(Path(lm.tokenizer_dir, "tokenizer.json").read_text())
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([1] * len(vocab))
    merges = tok["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    w.add_pad_token_id(cfg.pad_token_id)
    q = gguf.GGMLQuantizationType[qtype]

    def lin(name, arr):
        w.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(arr, dtype=np.float32), q), raw_dtype=q)

    lin("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        lin(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], cfg.num_attention_heads))
        lin(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], cfg.num_attention_heads,
                                               cfg.num_key_value_heads))
        lin(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        lin(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        lin(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        lin(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        lin(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    lin("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
