"""Token-wise methods (tt, cats, teal, wina), combinations, the lm_head option and the registry.

Each sparse path is checked against the masked dense computation it stands for; density 1.0
must give exactly dense's tokens; batches equal per-prompt runs; threads stay independent.
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from tda.common.errors import BadInput
from tda.engine.config import SparsityConfig
from tda.engine.generate import generate
from tda.engine.session import SparseSession
from tda.models.dispatch import linear_overrides, module_weight

FAMILIES = ("tiny-llama", "tiny-gemma3", "tiny-gpt2", "tiny-opt")
TOKEN_METHODS = ("tt", "cats", "teal", "wina", "griffin+tt")
PROMPTS = ["the quick brown fox jumps over", "a house by the river", "one two three four five six seven"]
KW = dict(max_new_tokens=6, min_new_tokens=6)


def _gated(lm) -> bool:
    return lm.ffn.gated


@pytest.mark.parametrize("spec", FAMILIES)
def test_density_one_gives_dense_tokens(load_tiny, spec):
    lm = load_tiny(spec)
    dense = generate(lm, PROMPTS[0], "dense", **KW)
    for method in TOKEN_METHODS:
        if method == "cats" and not _gated(lm):
            continue
        # combinations: density 1.0 keeps the whole slice, threshold 0 every neuron inside it
        extra = {"thresholds": [0.0] * lm.ffn.n_layers} if "+" in method else {}
        r = generate(lm, PROMPTS[0], method, density=1.0, **extra, **KW)
        assert r.token_ids == dense.token_ids, method
    r = generate(lm, PROMPTS[0], "teal", density=1.0, lm_head_density=1.0, **KW)
    assert r.token_ids == dense.token_ids


@pytest.mark.parametrize("spec", ["tiny-gpt2", "tiny-opt"])
def test_cats_needs_a_gated_ffn(load_tiny, spec):
    with pytest.raises(BadInput) as e:
        generate(load_tiny(spec), PROMPTS[0], "cats", density=0.5, **KW)
    assert "gated" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs,words", [
    (dict(method="nope"), "unknown method"),
    (dict(method="teal"), "needs a density"),
    (dict(method="wina", density=1.5), "density"),
    (dict(method="teal", density=0.0), "density"),
    (dict(method="tt", lm_head_density=2.0), "lm-head-density"),
    (dict(method="tt+head1.5"), "lm_head density"),
    (dict(method="tt+headx"), "+headD"),
    (dict(method="tt+head0.5", lm_head_density=0.7), "disagree"),
    (dict(method="nope+head0.5"), "unknown method"),
    (dict(method="griffin+teal", density=0.5), "combination"),
    (dict(method="griffin+tt", density=0.5, batch_mode="rows"), "union"),
])
def test_bad_settings_one_line(tiny_llama, kwargs, words):
    with pytest.raises(BadInput) as e:
        generate(tiny_llama, PROMPTS[0], **kwargs, **KW)
    assert words in str(e.value) and "\n" not in str(e.value)


# ----- the sparse paths equal the masked dense computation -------------------------------------------
def _decode_table(lm, cfg: SparsityConfig, prompt: str = PROMPTS[2]):
    """A session after its prefill: ``(session, {module: decode fn})``."""
    sess = SparseSession(lm, cfg)
    ids = torch.tensor([lm.tokenizer(prompt).input_ids])
    with sess.active(), torch.inference_mode():
        sess.begin(ids)
        lm.model(input_ids=ids, use_cache=False)
        sess.finish_prefill()
    mods = {id(m): m for m in lm.model.modules()}
    return sess, {mods[k]: fn for k, fn in sess._decode.items()}


def _x(n, d, seed):
    return torch.randn(n, 1, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("spec", FAMILIES)
@pytest.mark.parametrize("method", ["teal", "wina"])
def test_teal_wina_equal_masked_dense(load_tiny, spec, method):
    from tda.engine.methods.wina import column_norms
    from tda.masks.input_thresholds import load_or_calibrate_inputs, module_names

    lm = load_tiny(spec)
    sess, table = _decode_table(lm, SparsityConfig(method, density=0.5, fast=False))
    cal, names = load_or_calibrate_inputs(lm), module_names(lm.model)
    assert len(table) == sum(1 for layer in lm.ffn.layers for m in layer.modules() if hasattr(m, "_tda_instrumented"))
    for i, (m, fn) in enumerate(table.items()):
        w, b = module_weight(m), getattr(m, "bias", None)
        x = _x(3, w.shape[1], i)
        if method == "teal":
            t = cal.threshold(names[id(m)], 0.5)
            # about half of N(0, 1) lies beyond 0.674: around the threshold; a threshold of 0 (half
            # the inputs of a ReLU are exact zeros) keeps only the non-zero entries
            x = x * t / 0.674 if t > 0 else x.clamp_min(0)
            keep = x.abs() >= max(t, torch.finfo(x.dtype).tiny)
        else:
            k = round(0.5 * w.shape[1])
            top = torch.topk(x.abs() * column_norms(m, w.t()), k, dim=-1).indices
            keep = torch.zeros_like(x, dtype=torch.bool).scatter_(-1, top, True)
        with torch.inference_mode():
            got = fn(x)
            ref = F.linear(x * keep, w, b)
            single = torch.cat([fn(x[r:r + 1]) for r in range(3)])
        assert 0 < int(keep.sum()) < keep.numel()
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(single, ref, rtol=1e-4, atol=1e-5)  # batch rows = rows alone


@pytest.mark.parametrize("spec", FAMILIES)
def test_tt_equals_masked_dense(load_tiny, spec):
    lm = load_tiny(spec)
    sess, table = _decode_table(lm, SparsityConfig("tt", fast=False))
    cuts = sess.impl.cutoffs()
    for L in range(lm.ffn.n_layers):
        m = lm.ffn.out_module(L)
        a = _x(3, lm.ffn.d_ff, L) * cuts[L].mean() * 2
        keep = a.abs() >= cuts[L]
        with torch.inference_mode():
            got = table[m](a)
        ref = F.linear(a * keep, lm.ffn.down_weight(L), lm.ffn.down_bias(L))
        assert 0 < int(keep.sum()) < keep.numel()
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec,up_layout", [("tiny-llama", "row"), ("tiny-gemma3", "row"), ("tiny-qwen3", "row"),
                                            ("tiny-mistral", "row"), ("tiny-llama", "input-major")])
def test_cats_equals_masked_dense_ffn(load_tiny, spec, up_layout):
    """Also when TEAL/WINA made ``W_up`` input-major first: CATS takes its row-major layout back
    (its own layout, whatever ran before) and reads only the kept rows, counted as such."""
    from tda.engine.layouts import input_major
    from tda.engine.sparse import ffn_apply
    from tda.masks.input_thresholds import load_or_calibrate_inputs
    from tda.models.load import load_model

    lm = load_tiny(spec) if up_layout == "row" else load_model(spec)  # fresh: its layout changes
    ffn = lm.ffn
    if up_layout == "input-major":
        for L in range(ffn.n_layers):
            input_major(ffn.in_modules(L)[1])
    sess, table = _decode_table(lm, SparsityConfig("cats", density=0.4, fast=False))
    from tda.engine.layouts import is_input_major

    assert not any(is_input_major(ffn.in_modules(L)[1]) for L in range(ffn.n_layers))  # row-major again
    assert ffn.in_modules(0)[1] in {m for m, _ in sess.impl.counters.values()}  # counted as sparse rows
    cal = load_or_calibrate_inputs(lm)
    for L in range(ffn.n_layers):
        x = _x(3, ffn.d_model, L)
        tau = cal.threshold(f"gate_act.{L}", 0.4)
        with torch.inference_mode():
            with linear_overrides({m: table[m] for m in (*ffn.in_modules(L), ffn.out_module(L))}):
                got = ffn_apply(ffn, L, x)
            g = F.linear(x, ffn.in_weights(L)[0])
            keep = ffn.act_fn(L)(g).abs() >= tau
            a = ffn.activations(L, x) * keep
            ref = F.linear(a, ffn.down_weight(L), ffn.down_bias(L))
        assert 0 < int(keep.sum()) < keep.numel()
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


# ----- generation-level behaviour ----------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-opt"])
@pytest.mark.parametrize("method", TOKEN_METHODS)
def test_batch_equals_per_prompt(load_tiny, spec, method):
    lm = load_tiny(spec)
    if method == "cats" and not _gated(lm):
        pytest.skip("cats needs a gated FFN")
    batch = generate(lm, PROMPTS, method, density=0.5, **KW)
    for i, p in enumerate(PROMPTS):
        assert batch.token_ids[i] == generate(lm, p, method, density=0.5, **KW).token_ids[0], (method, i)


def test_two_threads_stay_independent(tiny_llama):
    jobs = [("teal", 0.4), ("wina", 0.5), ("tt", 0.5), ("cats", 0.3), ("dense", None)]
    expected = {j: generate(tiny_llama, PROMPTS[1], j[0], density=j[1], **KW).token_ids for j in jobs}
    got, errors = {}, []

    def work(job):
        try:
            for _ in range(3):
                got.setdefault(job, []).append(generate(tiny_llama, PROMPTS[1], job[0], density=job[1], **KW).token_ids)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({str(v) for v in expected.values()}) > 1
    for j in jobs:
        assert got[j] == [expected[j]] * 3, j


def test_read_fraction_and_densities(tiny_llama):
    r = generate(tiny_llama, PROMPTS[2], "teal", density=0.5, **KW)
    rf = r.params["read_fraction"]
    assert 0.2 < rf["ffn"] < 0.8 and 0.2 < rf["other"] < 0.8 and rf["lm_head"] == 1.0
    assert 0.2 < r.density < 0.8 and len(r.density_per_layer[0]) == tiny_llama.ffn.n_layers
    h = generate(tiny_llama, PROMPTS[2], "teal", density=0.5, lm_head_density=0.3, **KW)
    assert h.params["read_fraction"]["lm_head"] < 0.7
    s = generate(tiny_llama, PROMPTS[2], "teal+head0.3", density=0.5, **KW)  # the same, as a method spec
    assert s.token_ids == h.token_ids and s.params["read_fraction"] == h.params["read_fraction"]
    assert s.params["lm_head_density"] == 0.3 and s.method == "teal"
    g = generate(tiny_llama, PROMPTS[2], "griffin", density=0.25, **KW)
    assert g.params["read_fraction"]["ffn"] == pytest.approx(0.25, abs=0.01)
    c = generate(tiny_llama, PROMPTS[2], "griffin+tt", density=0.5, **KW)
    assert c.params["read_fraction"]["ffn"] < 0.5 + 1e-6 and c.density <= 0.5 + 1e-6


def test_config_object_and_keywords_agree(tiny_llama):
    a = generate(tiny_llama, PROMPTS[0], SparsityConfig("wina", density=0.4), **KW)
    b = generate(tiny_llama, PROMPTS[0], "wina", density=0.4, **KW)
    assert a.token_ids == b.token_ids and a.params["method"] == "wina"


def test_a_registered_method_runs(tiny_llama):
    """The README's example: a new method is one class plus one registry call."""
    from tda.engine.layouts import input_major
    from tda.engine.methods.registry import _EXTRA, method_names, register
    from tda.engine.methods.token import TokenWise
    from tda.engine.tokenwise import threshold_linear

    class DownOnlyHalf(TokenWise):  # keep |a_i| above the median magnitude 0.1 at every down projection
        name = "down-demo"

        def modules(self):
            return [self.lm.ffn.out_module(L) for L in range(self.lm.ffn.n_layers)]

        def build(self):
            return {m: threshold_linear(input_major(m), m.bias, 0.1, self.dense_fn(m), self.counter(m))
                    for m in self.modules()}

    register(DownOnlyHalf)
    try:
        assert "down-demo" in method_names()
        r = generate(tiny_llama, PROMPTS[0], "down-demo", **KW)
        assert len(r.token_ids[0]) == 6 and 0.0 < r.params["read_fraction"]["ffn"] < 1.0
    finally:
        _EXTRA.pop("down-demo", None)


def test_input_major_layout_is_one_copy(load_tiny):
    from tda.engine.layouts import input_major, is_input_major
    from tda.models.load import load_model

    lm = load_model("tiny-llama")  # a private copy: this test changes layouts on purpose
    m = lm.ffn.out_module(0)
    x = torch.randn(2, lm.ffn.d_ff)
    before = m(x).detach()
    wt = input_major(m)
    assert is_input_major(m) and wt.is_contiguous() and wt.data_ptr() == m.weight.data_ptr()
    torch.testing.assert_close(m(x).detach(), before, rtol=1e-5, atol=1e-6)
    assert input_major(m).data_ptr() == wt.data_ptr()  # idempotent


def test_a_module_flipping_back_and_forth_keeps_its_other_layout(monkeypatch):
    """One flip keeps one copy; a module that flips back keeps the layout it leaves (within the
    budget), so later flips rebind instead of copying; an in-place change of the weight drops the
    kept copy; TDA_LAYOUT_KEEP_MB=0 keeps nothing."""
    import gc

    from tda.engine import layouts

    torch.manual_seed(0)
    m = torch.nn.Linear(48, 80, bias=False)
    w0 = m.weight.detach().clone()
    x = torch.randn(3, 48)
    base = layouts.kept_bytes()
    wt = layouts.input_major(m)  # the first flip: one copy, nothing kept
    assert layouts.is_input_major(m) and layouts.kept_bytes() == base
    w = layouts.row_major(m)  # flips back: the input-major copy is kept
    assert w.is_contiguous() and torch.equal(w, w0) and layouts.kept_bytes() == base + wt.numel() * 4
    assert layouts.input_major(m).data_ptr() == wt.data_ptr()  # a rebinding, not a copy
    assert layouts.row_major(m).data_ptr() == w.data_ptr()
    torch.testing.assert_close(m(x), x @ w0.T)
    with torch.no_grad():
        m.weight.mul_(2.0)  # changed in place: the kept input-major copy is stale
    wt2 = layouts.input_major(m)
    assert wt2.data_ptr() != wt.data_ptr() and torch.equal(wt2, 2.0 * w0.T)
    torch.testing.assert_close(m(x), x @ (2.0 * w0).T)
    assert torch.equal(layouts.row_major(m), 2.0 * w0)
    del m, wt, w, wt2
    gc.collect()
    assert layouts.kept_bytes() == base  # freed with the module
    monkeypatch.setenv("TDA_LAYOUT_KEEP_MB", "0")
    m = torch.nn.Linear(48, 80, bias=False)
    for _ in range(2):
        layouts.input_major(m)
        layouts.row_major(m)
    assert layouts.kept_bytes() == base and "_tda_kept_layout" not in m.__dict__
    monkeypatch.setenv("TDA_LAYOUT_KEEP_MB", "lots")
    with pytest.raises(Exception, match="TDA_LAYOUT_KEEP_MB"):
        layouts.keep_limit()


@pytest.mark.skipif(not __import__("tda.engine.fastpath", fromlist=["x"]).mkldnn_available(), reason="no oneDNN")
def test_fast_fp32_head_rows_give_the_same_bits_on_either_layout():
    from tda.engine import fastpath, kernels
    from tda.engine.layouts import input_major

    torch.manual_seed(0)
    head = torch.nn.Linear(64, 32768, bias=False)  # vocabulary-shaped
    assert kernels.vocab_shaped(head.weight) and not kernels.vocab_shaped(torch.empty(2048, 640))
    rows = torch.randn(kernels.CPP_DENSE_MAX_ROWS + 23, 64)  # more rows than the decode GEMVs take
    before = fastpath.linear_fn(head.weight, None, fast=True)(rows)  # oneDNN on the row-major weight
    input_major(head)
    after = fastpath.linear_fn(head.weight, None, fast=True)(rows)  # oneDNN on the transposed view
    assert torch.equal(before, after)
    torch.testing.assert_close(after, rows @ head.weight.detach().T, rtol=1e-5, atol=1e-5)


def test_input_thresholds_hit_their_density(tiny_llama):
    from tda.masks.input_thresholds import calibrate_inputs

    texts = ["the cat sat on the mat and looked at the door " * 3, "a house by the river in the evening " * 3]
    cal = calibrate_inputs(tiny_llama, texts)
    site = next(s for s in cal.quantiles if s.endswith("q_proj"))
    q = torch.tensor(cal.quantiles[site])
    assert torch.all(q[1:] >= q[:-1])  # quantiles are monotone
    assert cal.threshold(site, 1.0) == 0.0
    assert cal.threshold(site, 0.2) > cal.threshold(site, 0.8) > 0
    assert any(s.startswith("gate_act.") for s in cal.quantiles)
