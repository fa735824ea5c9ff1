"""The shortcuts that make full-set scoring faster change no bit of what it computes: each is
checked equal (``torch.equal``, not close) to the computation it replaces."""

from __future__ import annotations

import json

import pytest
import torch

from tda.common.errors import BadInput
from tda.common.quantile import quantile
from tda.engine import kernels
from tda.evaluate.scoring import batch_logit_parts, batch_logits, nll_and_top
from tda.models.derived import derived


@pytest.mark.parametrize("n", [1, 2, 3, 10, 1001, 65536, 300_001])
def test_quantile_is_torch_quantile_bit_for_bit(n):
    g = torch.Generator().manual_seed(n)
    for x in (torch.rand(n, generator=g), torch.randint(0, 7, (n,), generator=g).float(),
              torch.randn(n, generator=g).abs().double(), torch.randn(2 * n, generator=g)[::2]):
        for q in (0.0, 0.1, 0.3, 0.5, 1 - 0.3, 1 - 0.5, 1 - 0.7, 0.123456, 1.0):
            assert torch.equal(quantile(x, q), torch.quantile(x, q)), (n, q, x.dtype)


def test_quantile_edges():
    assert torch.isnan(quantile(torch.tensor([1.0, float("nan"), 2.0]), 0.5))
    for bad in (torch.tensor([]), torch.ones(2, 2), torch.arange(3)):
        with pytest.raises(BadInput):
            quantile(bad, 0.5)
    with pytest.raises(BadInput, match="level"):
        quantile(torch.ones(3), 1.5)


def _gathered_in(x2, idx, w_t):  # the general path: gather the kept inputs and weight rows, then GEMM
    return x2.index_select(1, idx) @ w_t.index_select(0, idx)


def test_input_sparse_with_every_input_active_skips_the_gather_with_the_same_bits():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 96, generator=g)  # more rows than embedding_bag takes: the GEMM path
    w_t = torch.randn(96, 200, generator=g)
    b = torch.randn(200, generator=g)
    full = torch.arange(96)
    assert torch.equal(kernels.input_sparse(x, full, w_t, backend="torch"), _gathered_in(x, full, w_t))
    assert torch.equal(kernels.input_sparse(x, full, w_t, b, backend="torch"), _gathered_in(x, full, w_t) + b)
    perm = torch.randperm(96, generator=g)  # every input, another order: no shortcut, the general path
    assert torch.equal(kernels.input_sparse(x, perm, w_t, backend="torch"), _gathered_in(x, perm, w_t))
    t = 0.0  # every |x| >= 0: the threshold path keeps every input
    assert torch.equal(kernels.input_sparse_threshold(x, t, w_t, backend="torch"), _gathered_in(x, full, w_t))


def test_output_sparse_with_every_row_skips_the_gather_with_the_same_bits():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(37, 64, generator=g)
    w = torch.randn(150, 64, generator=g)
    b = torch.randn(150, generator=g)
    full = torch.arange(150)
    assert torch.equal(kernels.output_sparse(x, full, w, b, backend="torch"),
                       (x @ w.index_select(0, full).t()).add_(b.index_select(0, full)))
    rep = torch.cat([full[:75], full[:75]])  # as many indices as rows, repeated: the general path
    assert torch.equal(kernels.output_sparse(x, rep, w, backend="torch"), x @ w.index_select(0, rep).t())


def test_nll_and_top_on_pieces_equals_the_whole():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(9, 5000, generator=g)
    logits[3, 17] = logits[3, 4000] = logits[3].max() + 1  # a tie: the first maximum, as argmax
    targets = torch.randint(0, 5000, (9,), generator=g).tolist()
    whole = nll_and_top(logits, targets)
    assert whole[1] == logits.argmax(-1).tolist() and whole[1][3] == 17
    t = torch.tensor(targets)
    assert whole[0] == float(-torch.log_softmax(logits, -1).gather(1, t[:, None])[:, 0].sum())
    assert nll_and_top([logits[:1], logits[1:]], targets) == whole
    assert nll_and_top([logits[:4], logits[4:5], logits[5:]], targets) == whole
    with pytest.raises(BadInput, match="targets"):
        nll_and_top([logits[:1]], targets)


def test_batch_logit_parts_are_batch_logits_in_pieces(tiny_llama):
    from tda.engine.generate import SparseSession

    lm = tiny_llama
    seqs = [lm.tokenizer(t).input_ids for t in ("the quick brown fox jumps over", "one two three four five")]
    ks = [len(s) // 2 for s in seqs]
    for keep in (None, 2):
        parts = batch_logit_parts(lm, seqs, ks, {"dense": SparseSession(lm, "dense")}, keep_last=keep)["dense"]
        whole = batch_logits(lm, seqs, ks, {"dense": SparseSession(lm, "dense")}, keep_last=keep)["dense"]
        for p, w in zip(parts, whole):
            assert isinstance(p, list) and torch.equal(torch.cat(p), w)


def test_derived_values_are_computed_once_per_module_and_key():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    calls = []

    def f(tag):
        return lambda: calls.append(tag) or tag

    assert derived(a, "k", f("a")) == "a" and derived(a, "k", f("again")) == "a"
    assert derived(b, "k", f("b")) == "b" and derived(a, ("k", 2), f("a2")) == "a2"
    assert calls == ["a", "b", "a2"]
    assert "_tda_derived" not in a.state_dict() and set(a.state_dict()) == {"weight", "bias"}
    with pytest.raises(TypeError, match="Module"):
        derived(torch.ones(2), "k", f("t"))


def test_static_builds_once_and_gives_every_prompt_the_same_weights(tiny_llama):
    from tda.engine.generate import SparseSession
    from tda.engine.methods.prompt import PromptMask

    lm = tiny_llama
    ids = torch.tensor([lm.tokenizer("the quick brown fox jumps over the lazy dog").input_ids])

    def built(density):
        s = SparseSession(lm, "static", density=density)
        s.begin(ids)
        with torch.inference_mode(), s.active():
            lm.model(input_ids=ids, use_cache=True, **lm.cache_kw(lm.new_cache()), logits_to_keep=1)
        s.finish_prefill()
        return s

    one, two, other = built(0.5), built(0.5), built(0.25)
    assert one.impl.slices is two.impl.slices and one.impl.masks == two.impl.masks
    assert other.impl.slices is not one.impl.slices
    PromptMask.build(one.impl)  # an uncached build: the same slices as the kept ones
    assert one.impl.slices is not two.impl.slices
    for a, b in zip(one.impl.slices, two.impl.slices):
        assert torch.equal(a.down_w, b.down_w) and all(torch.equal(x, y) for x, y in zip(a.in_w, b.in_w))


def test_shipped_input_thresholds_are_read_once_per_process(tiny_llama, tmp_path, monkeypatch):
    from tda.common.data import load_texts
    from tda.masks import calibrate as C
    from tda.masks import input_thresholds as it

    texts = load_texts(limit=4)
    real = it.calibrate_inputs(tiny_llama, texts)
    ship = tmp_path / "ship"
    ship.mkdir()
    name = it.cache_path(tiny_llama.model_id, C.data_hash(texts)).name
    (ship / name).write_text(json.dumps(json.loads(real.to_json())))
    monkeypatch.setattr(C, "SHIPPED_DIR", ship)
    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(it, "_MEMO", {})
    reads = []
    orig = it.InputThresholds.load
    monkeypatch.setattr(it.InputThresholds, "load", classmethod(lambda cls, p: reads.append(p) or orig(p)))
    first = it.load_or_calibrate_inputs(tiny_llama, texts)
    assert it.load_or_calibrate_inputs(tiny_llama, texts) is first and len(reads) == 1
    (ship / name).unlink()  # the file it came from is gone: looked up again (and calibrated)
    assert it.load_or_calibrate_inputs(tiny_llama, texts) is not first
