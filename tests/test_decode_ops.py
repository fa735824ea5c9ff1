"""The C++ decode-step attention ops (tda/engine/csrc/decode_attention.h): ``rope_qk`` is
bit-identical to Hugging Face's ``apply_rotary_pos_emb`` (fp32 and bf16), ``decode_attention``
matches an fp64 softmax attention over the (strided, windowed, grouped) cache, and the engine's
decode step uses them where they apply."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tda.engine import attention
from tda.engine import kernels as K

pytestmark = pytest.mark.skipif("not K.build()", reason="C++ kernels unavailable")


def _counting_ops(counted: str):
    """``(ops, n)``: ``torch.ops.tda_kernels`` with calls of op ``counted`` counted in ``n[0]``."""
    ops, n = K.cpp_ops(), [0]

    class Spy:
        def __getattr__(self, name):
            fn = getattr(ops, name)
            if name != counted:
                return fn

            def wrapped(*a):
                n[0] += 1
                return fn(*a)
            return wrapped

    return Spy(), n


def _hf_rope():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    return apply_rotary_pos_emb


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,Hq,Hk,D", [(1, 4, 1, 256), (2, 8, 2, 64), (3, 2, 2, 6)])
def test_rope_qk_is_bit_identical_to_hf(dtype, B, Hq, Hk, D):
    g = torch.Generator().manual_seed(B * 100 + D)
    q, k = torch.randn(B, 1, Hq, D, generator=g).to(dtype), torch.randn(B, 1, Hk, D, generator=g).to(dtype)
    ang = (torch.rand(B, 1, D // 2, generator=g) * 500).repeat(1, 1, 2)
    cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)
    want_q, want_k = _hf_rope()(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    got_q, got_k = K.cpp_ops().rope_qk(q, k, cos, sin)
    assert got_q.shape == (B, Hq, 1, D) and got_k.shape == (B, Hk, 1, D)
    assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,Hq,Hk,D,T,window", [(1, 4, 1, 256, 70, 0), (2, 8, 2, 64, 33, 8), (2, 3, 3, 20, 5, 0),
                                                (1, 2, 1, 16, 1, 4), (1, 4, 2, 32, 900, 512)])
def test_decode_attention_matches_fp64_reference(dtype, B, Hq, Hk, D, T, window):
    g = torch.Generator().manual_seed(T + D)
    q = torch.randn(B, Hq, 1, D, generator=g).to(dtype)
    cap = T + 7  # a cache buffer longer than its filled prefix: k and v are strided views
    k = torch.randn(B, Hk, cap, D, generator=g).to(dtype)[:, :, :T]
    v = torch.randn(B, Hk, cap, D, generator=g).to(dtype)[:, :, :T]
    scale = D ** -0.5
    kk, vv = (k[:, :, -window:], v[:, :, -window:]) if window else (k, v)
    ref = F.scaled_dot_product_attention(q.double(), kk.double(), vv.double(), scale=scale, enable_gqa=Hq != Hk)
    ref = ref.transpose(1, 2).reshape(B, 1, Hq * D)
    got = K.cpp_ops().decode_attention(q, k, v, scale, window)
    assert got.dtype == dtype and got.shape == (B, 1, Hq * D)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert torch.allclose(got.double(), ref, rtol=tol, atol=tol)


def test_decode_ops_fail_loud_on_bad_shapes():
    ops = K.cpp_ops()
    q = torch.randn(1, 3, 1, 8)
    with pytest.raises(ValueError, match="shapes do not fit"):
        ops.decode_attention(q, torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), 1.0, 0)  # 3 heads on 2
    with pytest.raises(TypeError, match="fp32 or bf16"):
        ops.decode_attention(q.double(), torch.randn(1, 3, 4, 8).double(), torch.randn(1, 3, 4, 8).double(), 1.0, 0)
    with pytest.raises(ValueError, match="rope_qk"):
        ops.rope_qk(torch.randn(1, 2, 4, 8), torch.randn(1, 1, 4, 8), torch.randn(1, 1, 8), torch.randn(1, 1, 8))


def test_cpp_attention_checks_the_rotary_it_replaces():
    assert attention.cpp_attention(_hf_rope()) is K.cpp_ops()

    def interleaved(q, k, cos, sin):  # another rotary form: the C++ op must not stand in for it
        def rot(x):
            x1, x2 = x[..., ::2], x[..., 1::2]
            return torch.stack((-x2, x1), -1).flatten(-2)
        return q * cos + rot(q) * sin, k * cos + rot(k) * sin

    assert attention.cpp_attention(interleaved) is None


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gemma3"])
def test_decode_steps_use_the_cpp_attention(load_tiny, spec, monkeypatch):
    from tda.engine.generate import generate

    lm = load_tiny(spec)
    ref = generate(lm, "the quick brown fox", max_new_tokens=8, min_new_tokens=8, stock=True)
    spy, n = _counting_ops("decode_attention")
    monkeypatch.setattr(attention, "cpp_attention", lambda rope: spy)
    from tda.engine import decoder
    monkeypatch.setattr(decoder, "_PLAN", type(decoder._PLAN)())  # rebuild the per-model plans
    got = generate(lm, "the quick brown fox", max_new_tokens=8, min_new_tokens=8)
    assert got.token_ids == ref.token_ids
    assert n[0] == 7 * lm.model.config.num_hidden_layers  # every decode step, every layer


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("round_normed", [False, True])
@pytest.mark.parametrize("with_branch_norm", [False, True])
def test_residual_norm_equals_the_separate_calls(dtype, round_normed, with_branch_norm):
    ops, g = K.cpp_ops(), torch.Generator().manual_seed(3)
    d = 70  # not a multiple of the 16 lanes
    h, a = torch.randn(2, 1, d, generator=g).to(dtype) * 3, torch.randn(2, 1, d, generator=g).to(dtype)
    wa, w = torch.rand(d, generator=g) + 0.5, torch.rand(d, generator=g) + 0.5

    def norm(x, scale, eps):
        return ops.rms_norm(x, scale, eps) if dtype == torch.float32 else ops.rms_norm_bf16(x, scale, eps, round_normed)

    branch = norm(a, wa, 1e-5) if with_branch_norm else a
    want_h = h + branch
    want_y = norm(want_h, w, 1e-6)
    got_h, got_y = ops.residual_norm(h, a, wa if with_branch_norm else None, 1e-5, w, 1e-6, round_normed)
    assert torch.equal(got_h, want_h) and torch.equal(got_y, want_y)


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gemma3"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_decode_steps_fuse_residual_adds_with_norms(load_tiny, spec, dtype, monkeypatch):
    from tda.engine.generate import generate
    from tda.models.load import load_model

    lm = load_tiny(spec) if dtype == "fp32" else load_model(spec, dtype=dtype)
    ref = generate(lm, "one two three four", max_new_tokens=6, min_new_tokens=6, fast=False)
    spy, n = _counting_ops("residual_norm")
    monkeypatch.setattr(K, "cpp_ops", lambda: spy)
    got = generate(lm, "one two three four", max_new_tokens=6, min_new_tokens=6)
    assert n[0] == 5 * 2 * lm.model.config.num_hidden_layers  # two per layer, every decode step
    if dtype == "fp32":
        assert got.token_ids == ref.token_ids


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_kv_write_equals_a_slice_copy(dtype):
    g = torch.Generator().manual_seed(3)
    kb, vb = torch.randn(2, 3, 7, 8, generator=g).to(dtype), torch.randn(2, 3, 7, 8, generator=g).to(dtype)
    k = torch.randn(2, 1, 3, 8, generator=g).to(dtype).transpose(1, 2)  # a strided [B, H, 1, D] view
    v = torch.randn(2, 3, 16, generator=g).to(dtype)[..., ::2].unsqueeze(2)  # a strided last dimension
    want_k, want_v = kb.clone(), vb.clone()
    want_k[:, :, 4:5].copy_(k)
    want_v[:, :, 4:5].copy_(v)
    K.cpp_ops().kv_write(kb, vb, k, v, 4)
    assert torch.equal(kb, want_k) and torch.equal(vb, want_v)
    with pytest.raises(ValueError, match="position 7 outside"):
        K.cpp_ops().kv_write(kb, vb, k, v, 7)
    with pytest.raises(ValueError, match="like its buffer"):
        K.cpp_ops().kv_write(kb, vb, k.float() if dtype != torch.float32 else k.double(), v, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dense_and_threshold_ops_take_rows_of_any_rank(dtype):
    """A decode step passes x[B, 1, d] straight to the GEMVs: the same numbers as x[B, d]."""
    g = torch.Generator().manual_seed(4)
    w = torch.randn(24, 40, generator=g).to(dtype)
    wt = w.t().contiguous()
    x = torch.randn(2, 1, 40, generator=g).to(dtype)
    ops, x2 = K.cpp_ops(), x.view(2, 40)
    cases = [(ops.row_dense(x, w, None), ops.row_dense(x2, w, None)),
             (ops.input_dense(x, wt, None), ops.input_dense(x2, wt, None)),
             (ops.input_sparse_threshold(x, wt, None, 0.7, None, None),
              ops.input_sparse_threshold(x2, wt, None, 0.7, None, None))]
    for got, want in cases:
        assert got.shape == (2, 1, 24) and torch.equal(got.view(2, 24), want)
    with pytest.raises(ValueError, match="features"):
        ops.row_dense(torch.zeros(1, 1, 39, dtype=dtype), w, None)


@pytest.mark.parametrize("dtype,round_normed", [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True)])
def test_rope_qk_with_qk_norms_equals_norms_then_rope(dtype, round_normed):
    """Gemma 3's q_norm / k_norm folded into rope_qk: the numbers of the separate calls."""
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(2, 1, 4, 64, generator=g).to(dtype), torch.randn(2, 1, 2, 64, generator=g).to(dtype)
    ang = (torch.rand(2, 1, 32, generator=g) * 300).repeat(1, 1, 2)
    cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)
    wq, wk = torch.rand(64, generator=g) + 0.5, torch.rand(64, generator=g) + 0.5
    ops = K.cpp_ops()
    if dtype == torch.float32:
        nq, nk = ops.rms_norm(q, wq, 1e-6), ops.rms_norm(k, wk, 1e-5)
    else:
        nq, nk = ops.rms_norm_bf16(q, wq, 1e-6, round_normed), ops.rms_norm_bf16(k, wk, 1e-5, round_normed)
    want = ops.rope_qk(nq, nk, cos, sin)
    got = ops.rope_qk(q, k, cos, sin, wq, 1e-6, wk, 1e-5, round_normed)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with pytest.raises(ValueError, match="wq must be"):
        ops.rope_qk(q, k, cos, sin, wq[:32], 1e-6, wk, 1e-5, round_normed)


@pytest.mark.parametrize("spec", ["tiny-gemma3", "tiny-qwen3"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_decode_steps_fold_qk_norms_into_the_rotary(spec, dtype, monkeypatch):
    from tda.engine import decoder
    from tda.engine.generate import generate
    from tda.models.load import load_model

    lm = load_model(spec, dtype=dtype)
    folded = [0]
    orig = attention.qk_norm_args

    def spy(*a):
        out = orig(*a)
        folded[0] += out is not None
        return out

    monkeypatch.setattr(decoder, "qk_norm_args", spy)
    got = generate(lm, "one two three four five six", max_new_tokens=6, min_new_tokens=6)
    layers = lm.model.config.num_hidden_layers
    assert folded[0] == 5 * layers  # every layer of every decode step
    monkeypatch.setattr(decoder, "qk_norm_args", lambda *a: None)  # the separate norm calls
    ref = generate(lm, "one two three four five six", max_new_tokens=6, min_new_tokens=6)
    assert got.token_ids == ref.token_ids
