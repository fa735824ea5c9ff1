"""bf16 that pays (issue 17, point 2): the fast dense path, the fused RMSNorms and every method's
decode functions run in bf16 (C++ GEMVs with fp32 accumulation), each equal to its masked dense
product up to bf16 rounding; AVX-512 (and BF16) in the kernels' flags and cache key."""

from __future__ import annotations

import functools
import platform

import pytest
import torch
import torch.nn.functional as F

from tda.engine import fastpath, kernels
from tda.engine.config import SparsityConfig
from tda.models.dispatch import (
    linear_modules,
    linear_overrides,
    module_weight,
    norm_modules,
    original_forward,
)
from tests.test_methods import _decode_table, _x

GATED = ("tiny-llama", "tiny-gemma3", "tiny-qwen3", "tiny-mistral")
FAMILIES = (*GATED, "tiny-gpt2", "tiny-opt")
EPS = 2.0 ** -8  # bf16's relative rounding step


@functools.cache
def _bf16(spec: str):
    from tda.models.load import load_model

    return load_model(spec, dtype="bf16")


def _close(got: torch.Tensor, ref: torch.Tensor, rounds: int = 1) -> None:
    """``got`` (bf16) equals the fp32 ``ref`` up to ``rounds`` bf16 roundings per element (plus a
    floor for entries that cancel to near zero)."""
    got, ref = got.float(), ref.float()
    tol = rounds * EPS * ref.abs() + 1e-3 * float(ref.abs().max()) + 1e-6
    bad = (got - ref).abs() > tol
    assert not bad.any(), f"{int(bad.sum())} of {bad.numel()} entries off; max |d| {float((got - ref).abs().max()):.3g}"


def _f(t):
    return None if t is None else t.float()


# ----- build flags ------------------------------------------------------------------------------
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 flags")
def test_avx512_flags_follow_the_cpu_and_the_cache_key(monkeypatch):
    monkeypatch.delenv("TDA_KERNELS_ISA", raising=False)
    monkeypatch.delenv("TDA_KERNELS_CFLAGS", raising=False)
    base = {"avx2", "fma", "f16c"}
    plain = kernels._compile_flags(base)
    wide = kernels._compile_flags(base | {"avx512f", "avx512bw", "avx512vl"})
    bf16 = kernels._compile_flags(base | {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"})
    assert "-mavx2" in plain and not any("avx512" in f for f in plain)
    assert "-mavx512f" in wide and "-mavx512bf16" not in wide and "-mavx512bf16" in bf16
    assert len({kernels._cache_key(f) for f in (plain, wide, bf16)}) == 3
    assert kernels._compile_flags(set()) == ["-O3", "-fopenmp"]
    monkeypatch.setenv("TDA_KERNELS_ISA", "avx2")  # capped for side-by-side comparisons
    assert kernels._compile_flags(base | {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"}) == plain
    monkeypatch.delenv("TDA_KERNELS_ISA")
    monkeypatch.setenv("TDA_KERNELS_CFLAGS", "-DTDA_TILE_PF=4096  -DX=1")  # a kernel's tuning macros: another library
    tuned = kernels._compile_flags(base)
    assert tuned == [*plain, "-DTDA_TILE_PF=4096", "-DX=1"] and kernels._cache_key(tuned) != kernels._cache_key(plain)
    monkeypatch.delenv("TDA_KERNELS_CFLAGS")
    here = kernels._cpu_flags()
    if {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl"} <= here:
        assert "-mavx512f" in kernels._compile_flags()


# ----- the fast dense path -----------------------------------------------------------------------
@pytest.mark.parametrize("spec", FAMILIES)
def test_fast_path_is_used_and_exact_in_bf16(spec):
    lm = _bf16(spec)
    assert fastpath.use_fast(lm)
    table = fastpath.dense_table(lm.model, fast=True)
    for i, m in enumerate(linear_modules(lm.model)):
        w, b = module_weight(m), getattr(m, "bias", None)
        for rows in (1, 3, 9):  # decode steps (C++ GEMV) and a prefill-sized batch
            x = torch.randn(rows, w.shape[1], generator=torch.Generator().manual_seed(i)).bfloat16()
            with torch.inference_mode():
                got = table[m](x)
            assert got.dtype == torch.bfloat16
            _close(got, F.linear(x.float(), w.float(), _f(b)))


@pytest.mark.parametrize("spec", GATED)
def test_fused_rms_norms_are_bit_identical_in_bf16(spec):
    lm = _bf16(spec)
    norms = list(norm_modules(lm.model))
    table = fastpath.dense_table(lm.model, fast=True)
    if kernels.cpp_ops() is not None:
        assert norms and all(m in table for m in norms)
    for i, m in enumerate(norms):
        if m not in table:
            continue
        x = (3 * torch.randn(5, m.weight.shape[0], generator=torch.Generator().manual_seed(i))).bfloat16()
        with torch.inference_mode():
            assert torch.equal(table[m](x), original_forward(m)(x))


# ----- every method's decode functions ------------------------------------------------------------
@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gemma3", "tiny-opt"])
@pytest.mark.parametrize("method", ["teal", "wina"])
def test_teal_wina_bf16_equal_masked_dense(spec, method):
    from tda.engine.methods.wina import column_norms
    from tda.masks.input_thresholds import load_or_calibrate_inputs, module_names

    lm = _bf16(spec)
    sess, table = _decode_table(lm, SparsityConfig(method, density=0.5))
    assert sess.fast
    cal, names = load_or_calibrate_inputs(lm), module_names(lm.model)
    for i, (m, fn) in enumerate(table.items()):
        w, b = module_weight(m), getattr(m, "bias", None)
        x = _x(3, w.shape[1], i)
        if method == "teal":
            t = cal.threshold(names[id(m)], 0.5)
            x = (x * t / 0.674 if t > 0 else x.clamp_min(0)).bfloat16()
            keep = x.float().abs() >= max(t, torch.finfo(torch.float32).tiny)
        else:
            x = x.bfloat16()
            score = x.float().abs() * column_norms(m, w.t()).float()
            top = torch.topk(score, round(0.5 * w.shape[1]), dim=-1).indices
            keep = torch.zeros_like(x, dtype=torch.bool).scatter_(-1, top, True)
        with torch.inference_mode():
            got = fn(x)
        assert got.dtype == torch.bfloat16 and 0 < int(keep.sum()) < keep.numel()
        _close(got, F.linear(x.float() * keep, w.float(), _f(b)))


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gemma3", "tiny-gpt2"])
def test_tt_bf16_equals_masked_dense(spec):
    lm = _bf16(spec)
    sess, table = _decode_table(lm, SparsityConfig("tt"))
    cuts = sess.impl.cutoffs()
    for L in range(lm.ffn.n_layers):
        m = lm.ffn.out_module(L)
        a = (_x(3, lm.ffn.d_ff, L) * cuts[L].float().mean() * 2).bfloat16()
        keep = a.float().abs() >= cuts[L].float()
        with torch.inference_mode():
            got = table[m](a)
        assert 0 < int(keep.sum()) < keep.numel()
        _close(got, F.linear(a.float() * keep, lm.ffn.down_weight(L).float(), _f(lm.ffn.down_bias(L))))


def _ffn_close(got: torch.Tensor, ref: torch.Tensor) -> None:
    """FFN outputs: two bf16 roundings in the chain (activations, output), so compare by norm."""
    err = float((got.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12))
    assert err < 4 * EPS, err


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gemma3", "tiny-gpt2", "tiny-opt"])
@pytest.mark.parametrize("method", ["griffin", "tda", "static", "random"])
def test_prompt_methods_bf16_equal_masked_dense(spec, method):
    from tda.engine.sparse import ffn_apply, masked_dense_ffn

    lm = _bf16(spec)
    if method == "griffin" and not lm.ffn.gated:
        pytest.skip("griffin needs a gated FFN")
    sess, table = _decode_table(lm, SparsityConfig(method, density=0.5))
    keep = sess.masks[0].keep
    ffn = lm.ffn
    for L in range(ffn.n_layers):
        x = _x(1, ffn.d_model, L).bfloat16()
        with torch.inference_mode():
            with linear_overrides({m: table[m] for m in (*ffn.in_modules(L), ffn.out_module(L))}):
                got = ffn_apply(ffn, L, x)
            ref = masked_dense_ffn(ffn, L, x.float().bfloat16(), keep[L])
        assert got.dtype == torch.bfloat16 and 0 < int(keep[L].sum()) < keep[L].numel()
        _ffn_close(got, ref)
        full = masked_dense_ffn(ffn, L, x, torch.ones_like(keep[L]))
        assert not torch.allclose(got.float(), full.float(), atol=1e-3)  # the mask removed something


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gemma3"])
def test_cats_bf16_equals_masked_dense_ffn(spec):
    from tda.engine.sparse import ffn_apply
    from tda.masks.input_thresholds import load_or_calibrate_inputs

    lm = _bf16(spec)
    ffn = lm.ffn
    sess, table = _decode_table(lm, SparsityConfig("cats", density=0.4))
    cal = load_or_calibrate_inputs(lm)
    for L in range(ffn.n_layers):
        x = _x(3, ffn.d_model, L).bfloat16()
        tau = cal.threshold(f"gate_act.{L}", 0.4)
        gate, up = ffn.in_modules(L)
        with torch.inference_mode():
            with linear_overrides({m: table[m] for m in (gate, up, ffn.out_module(L))}):
                got = ffn_apply(ffn, L, x)
            g = table[gate](x)  # the gate the kernel thresholds (dense, bf16)
            act = ffn.act_fn(L)(g)
            keep = act.float().abs() >= tau
            a = act.float() * F.linear(x.float(), module_weight(up).float()) * keep
            ref = F.linear(a, ffn.down_weight(L).float(), _f(ffn.down_bias(L)))
        assert 0 < int(keep.sum()) < keep.numel()
        _ffn_close(got, ref)


@pytest.mark.parametrize("method", ["dense", "griffin", "teal", "tt", "cats", "wina", "griffin+tt"])
def test_bf16_generation_runs_fast(method):
    from tda.engine.generate import generate

    lm = _bf16("tiny-llama")
    r = generate(lm, ["the quick brown fox", "a house by the river"], method, density=0.5,
                 max_new_tokens=5, min_new_tokens=5)
    assert [len(t) for t in r.token_ids] == [5, 5]
    assert r.params["fast"] is True and r.params["dtype"] == "bfloat16"
