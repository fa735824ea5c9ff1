"""``rsparse`` (R-Sparse) and ``predictor`` (Deja Vu-style learned neuron predictor), issue #19.

References written by hand in this file, after the public code:

* R-Sparse (VITA-Group/R-Sparse): ``R_Sparse_Linear.forward`` at a decode step in ``r_sparse``
  mode (``models/modeling_llama.py``) with factors from ``utils/prepare_low_rank_weight.py``
  (``torch.svd`` in fp64; ``scale = ‖V diag(S)‖`` per input) and the budget arithmetic of
  ``set_threshold_r_sparse`` (``utils/setup.py``);
* sparse_transformers (NimbleEdge): ``FastLoRAProjection`` (``up(down(x))``) and
  ``_compute_binary_mask`` in ``topk`` mode (top-k per row, union over rows), applied to the FFN.

Each sparse path is checked against the masked dense computation it stands for; density 1.0 must
give exactly dense's tokens on every tiny family.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tda.common.errors import BadInput
from tda.engine.config import SparsityConfig
from tda.engine.generate import generate
from tda.models.dispatch import linear_overrides, module_weight
from tests.test_methods import _decode_table, _x

FAMILIES = ("tiny-llama", "tiny-gemma3", "tiny-gpt2", "tiny-opt", "tiny-qwen3", "tiny-mistral")
METHODS = ("rsparse", "predictor")
PROMPTS = ["the quick brown fox jumps over", "a house by the river", "one two three four five six seven"]
KW = dict(max_new_tokens=6, min_new_tokens=6)


# ----- registry and exactness at density 1 ------------------------------------------------------------
def test_listed(run_cli):
    from tda.engine.methods.registry import get_method, method_names

    assert set(METHODS) <= set(method_names())
    assert all(get_method(m).needs_density and get_method(m).kind == "token" for m in METHODS)
    code, out, _ = run_cli("methods")
    assert code == 0 and "rsparse" in out and "predictor" in out


@pytest.mark.parametrize("spec", FAMILIES)
def test_density_one_gives_dense_tokens(load_tiny, spec):
    lm = load_tiny(spec)
    dense = generate(lm, PROMPTS[0], "dense", **KW)
    for method in METHODS:
        r = generate(lm, PROMPTS[0], method, density=1.0, **KW)
        assert r.token_ids == dense.token_ids, method
        assert r.params["read_fraction"] == {"ffn": 1.0, "other": 1.0, "lm_head": 1.0}


@pytest.mark.parametrize("method", METHODS)
def test_needs_a_density_one_line(tiny_llama, method):
    with pytest.raises(BadInput) as e:
        generate(tiny_llama, PROMPTS[0], method, **KW)
    assert "needs a density" in str(e.value) and "\n" not in str(e.value)


# ----- R-Sparse ---------------------------------------------------------------------------------------
class ReferenceRSparseLinear:
    """R-Sparse's ``R_Sparse_Linear`` at a decode step, reduced to what a test needs."""

    def __init__(self, weight, bias, rank: int, threshold: float, sparse_ratio: float):
        u, s, v = torch.svd(weight.double())  # their prepare_low_rank_weight.py
        self.scale = (v @ torch.diag(s)).norm(dim=1).float()
        self.U, self.S, self.V = u[:, :rank].float(), s[:rank].float(), v[:, :rank].float()
        self.weight, self.bias, self.rank = weight, bias, rank
        self.threshold, self.sparse_ratio = threshold, sparse_ratio

    def __call__(self, input):
        if self.sparse_ratio == 1:  # their 'sparse' mode
            s_mask = input.abs().gt(self.threshold).to(input.dtype)
            return F.linear(input * s_mask, self.weight, self.bias)
        scale_input = input * self.scale.unsqueeze(0).unsqueeze(0)
        s_mask = scale_input.abs().gt(self.threshold).to(input.dtype)
        sparse_output = F.linear(input * s_mask, self.weight, self.bias)
        low_rank_input = input * (1 - s_mask)
        low_rank_output = low_rank_input @ (self.V[:, :self.rank] @ torch.diag(self.S[:self.rank]))
        return sparse_output + low_rank_output @ self.U[:, :self.rank].T


def reference_budget(in_channel: int, out_channel: int, s: float, alpha: float) -> tuple[int, int, float]:
    """``set_threshold_r_sparse`` with a sparse-config file: (channels, rank, target_sparsity)."""
    channels = max(int(in_channel * (1 - s) * alpha), 1)
    overall_budget = in_channel * out_channel * (1 - s)
    sparse_budget = channels * out_channel
    low_rank_budget = overall_budget - sparse_budget
    return channels, max(int(low_rank_budget / (in_channel + out_channel)), 1), 1 - (1 - s) * alpha


@pytest.mark.parametrize("shape", [(64, 128), (128, 64), (2048, 5632), (640, 2048)])
@pytest.mark.parametrize("alpha", [0.15, 0.5, 0.85])
def test_budget_rule_matches_their_setup(shape, alpha):
    from tda.masks.lowrank import split_budget

    d_out, d_in = shape
    channels, rank = split_budget(d_in, d_out, 0.5, alpha)
    ref_channels, ref_rank, target_sparsity = reference_budget(d_in, d_out, 0.5, alpha)
    assert (channels, rank) == (ref_channels, ref_rank)
    assert channels / d_in == pytest.approx(1 - target_sparsity, abs=1 / d_in)
    assert channels * d_out + rank * (d_in + d_out) <= 0.5 * d_in * d_out  # the bytes budget holds


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt2", "tiny-gemma3"])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 0.0])
def test_rsparse_equals_reference_linear(load_tiny, spec, alpha):
    """Every block linear's decode function equals R-Sparse's own forward for the same split."""
    from tda.masks.lowrank import SiteSplit, split_budget

    lm = load_tiny(spec)
    sess, table = _decode_table(lm, SparsityConfig("rsparse", density=0.5, fast=False))
    for i, m in enumerate(table):
        w, b = module_weight(m), getattr(m, "bias", None)
        d_out, d_in = w.shape
        channels, rank = split_budget(d_in, d_out, 0.5, alpha)
        x = _x(3, d_in, i)
        ref = ReferenceRSparseLinear(w.detach(), None if b is None else b.detach(), rank, 0.0, alpha)
        score = x.abs() if alpha == 1 else x.abs() * ref.scale
        # midway between two order statistics: their '>' and the engine's '>=' differ only on ties
        srt = score.flatten().sort().values
        tau = float(srt[-3 * channels - 1:-3 * channels + 1].mean()) if channels else 1e30
        ref.threshold = tau
        fn = sess.impl.split_fn(m, SiteSplit(alpha, tau, channels, rank, 0.0))
        with torch.inference_mode():
            got = fn(x)
            single = torch.cat([fn(x[r:r + 1]) for r in range(3)])
        want = ref(x)
        keep = score > tau
        assert (0 < int(keep.sum()) < keep.numel()) if 0 < alpha else int(keep.sum()) == 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5)
        torch.testing.assert_close(single, want, rtol=1e-4, atol=2e-5)  # batch rows = rows alone
        if 0 < alpha < 1 and rank:  # the low-rank part matters: dropping it differs
            assert (got - F.linear(x * keep, w, b)).abs().max() > 1e-4


def test_choose_split_prefers_low_rank_for_a_low_rank_weight():
    from tda.masks.lowrank import choose_split

    g = torch.Generator().manual_seed(0)
    low = torch.randn(96, 4, generator=g) @ torch.randn(4, 64, generator=g)
    x = torch.randn(256, 64, generator=g)
    pick = choose_split(x, low + 1e-3 * torch.randn(96, 64, generator=g), 0.5)
    assert pick.alpha < 1.0 and pick.rank >= 4 and pick.rel_error < 0.05
    flat = choose_split(x * torch.rand(256, 64, generator=g).pow(4) * 10, torch.randn(96, 64, generator=g), 0.5)
    assert flat.alpha == 1.0 and flat.rank == 0  # noise has no low-rank part: plain thresholds win


def test_randomized_svd_for_large_weights_is_near_the_best(monkeypatch):
    """Above EXACT_SVD_MAX the factors come from a seeded torch.svd_lowrank: near the optimal error."""
    from tda.masks import lowrank

    g = torch.Generator().manual_seed(2)
    u, _ = torch.linalg.qr(torch.randn(120, 80, generator=g))
    v, _ = torch.linalg.qr(torch.randn(90, 80, generator=g))
    w = (u * torch.logspace(0, -3, 80)) @ v.T  # [120, 90], decaying spectrum
    exact_vs, exact_u = lowrank.svd_factors(w, 10)
    monkeypatch.setattr(lowrank, "EXACT_SVD_MAX", 16)
    vs, uu = lowrank.svd_factors(w, 10)
    assert vs.shape == (90, 10) and uu.shape == (120, 10)
    best = float((w - exact_u @ exact_vs.T).norm())
    assert float((w - uu @ vs.T).norm()) < 1.1 * best
    assert torch.equal(lowrank.svd_factors(w, 10)[0], vs)  # seeded: the same factors every time


def test_rsparse_reads_about_the_density(tiny_llama):
    r = generate(tiny_llama, PROMPTS[2], "rsparse", density=0.5, **KW)
    rf = r.params["read_fraction"]
    assert 0.3 < rf["ffn"] < 0.7 and 0.3 < rf["other"] < 0.7 and rf["lm_head"] == 1.0
    assert 0.3 < r.density < 0.7


def test_fixed_alpha_runs_the_low_rank_path(tiny_llama, monkeypatch):
    """Random weights calibrate to alpha 1 (no low-rank part); $TDA_RSPARSE_ALPHA forces a split."""
    from tda.masks.input_thresholds import module_names

    monkeypatch.setenv("TDA_RSPARSE_ALPHA", "0.5")
    r = generate(tiny_llama, PROMPTS[2], "rsparse", density=0.5, **KW)
    sess, _ = _decode_table(tiny_llama, SparsityConfig("rsparse", density=0.5))
    cal, names = sess.impl.calibration(), module_names(tiny_llama.model)
    splits = [cal.split(names[id(m)]) for m in sess.impl.modules()]
    assert all(s.alpha == 0.5 and s.rank > 0 for s in splits)
    rf = r.params["read_fraction"]
    assert 0.35 < rf["ffn"] < 0.65 and 0.35 < rf["other"] < 0.65  # sparse rows + factors ≈ density
    monkeypatch.setenv("TDA_RSPARSE_ALPHA", "2")
    with pytest.raises(BadInput) as e:
        generate(tiny_llama, PROMPTS[2], "rsparse", density=0.5, **KW)
    assert "TDA_RSPARSE_ALPHA" in str(e.value) and "\n" not in str(e.value)


# ----- the predictor ----------------------------------------------------------------------------------
def reference_mask(x2, down_w, up_w, k):
    """sparse_transformers' ``_compute_binary_mask`` (topk mode) with ``FastLoRAProjection``:
    per-row top-k of ``up(down(x))`` and their union over the rows."""
    lora_proj_scores = F.linear(F.linear(x2, down_w), up_w)
    active_inds = lora_proj_scores.topk(k, sorted=False)[1]
    binary_mask = torch.zeros_like(lora_proj_scores, dtype=torch.bool)
    binary_mask.scatter_(-1, active_inds, True)
    return binary_mask, binary_mask.any(dim=0)


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gemma3", "tiny-opt", "tiny-gpt2", "tiny-qwen3"])
def test_predictor_equals_masked_dense_ffn(load_tiny, spec):
    from tda.engine.sparse import ffn_apply

    lm = load_tiny(spec)
    ffn = lm.ffn
    sess, table = _decode_table(lm, SparsityConfig("predictor", density=0.5, fast=False))
    pred = sess.impl.pred
    k = round(0.5 * ffn.d_ff)
    for L in range(ffn.n_layers):
        x = _x(3, ffn.d_model, L)
        with torch.inference_mode():
            with linear_overrides({m: table[m] for m in (*ffn.in_modules(L), ffn.out_module(L))}):
                got = ffn_apply(ffn, L, x)
                single = torch.cat([ffn_apply(ffn, L, x[r:r + 1]) for r in range(3)])
            keep, union = reference_mask(x.reshape(3, -1), pred.A[L].T, pred.B[L].T, k)
            a = ffn.activations(L, x) * keep.view(3, 1, -1)
            ref = F.linear(a, ffn.down_weight(L), ffn.down_bias(L))
        assert int(keep[0].sum()) == k and k < int(union.sum()) < ffn.d_ff
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(single, ref, rtol=1e-4, atol=1e-5)


def test_predictor_counts_its_own_weights(tiny_llama):
    r = generate(tiny_llama, PROMPTS[2], "predictor", density=0.5, **KW)
    sess, _ = _decode_table(tiny_llama, SparsityConfig("predictor", density=0.5))
    ffn = tiny_llama.ffn
    ffn_size = 3 * ffn.d_ff * ffn.d_model * ffn.n_layers
    extra = sess.impl.pred.n_params() / ffn_size
    assert r.params["read_fraction"]["ffn"] == pytest.approx(0.5 + extra, abs=1e-6)
    assert r.params["read_fraction"]["other"] == 1.0 and r.density == pytest.approx(0.5)


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-opt"])
@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_per_prompt(load_tiny, spec, method):
    lm = load_tiny(spec)
    batch = generate(lm, PROMPTS, method, density=0.5, **KW)
    for i, p in enumerate(PROMPTS):
        assert batch.token_ids[i] == generate(lm, p, method, density=0.5, **KW).token_ids[0], (method, i)


def test_predictor_after_an_input_major_method():
    """TEAL makes W_gate/W_up input-major; the predictor turns them back (same values) and still reads rows."""
    from tda.models.load import load_model

    lm = load_model("tiny-llama")  # fresh: its layout changes
    gate = lm.ffn.in_modules(0)[0]
    before = gate.weight.detach().clone()
    generate(lm, PROMPTS[1], "teal", density=0.5, **KW)
    assert not gate.weight.is_contiguous()
    r = generate(lm, PROMPTS[1], "predictor", density=0.5, **KW)
    assert gate.weight.is_contiguous() and torch.equal(gate.weight, before)
    assert len(r.token_ids[0]) == 6 and r.params["read_fraction"]["ffn"] < 0.7


def test_training_learns_a_learnable_rule():
    """Labels that a rank-4 linear map decides: the trained predictor finds them (chance: 0.25)."""
    from tda.masks.predictor_train import topk_labels, topk_recall, train_layer

    g = torch.Generator().manual_seed(1)
    m = torch.randn(32, 4, generator=g) @ torch.randn(4, 64, generator=g)
    x = torch.randn(1200, 32, generator=g)
    y = topk_labels((x @ m).clamp_min(0), 0.25)
    a, b = train_layer(x[:1000], y[:1000], 8, epochs=30, lr=1e-2, batch=128, seed=0)
    assert topk_recall((x[1000:] @ a) @ b, y[1000:]) > 0.8
    assert topk_recall(torch.randn(200, 64, generator=g), y[1000:]) < 0.4


def test_train_cache_and_cli(run_cli, tiny_llama, monkeypatch, tmp_path):
    from tda.masks.predictor_train import NeuronPredictor, PredictorSettings, load_or_train

    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path / "cache"))
    code, out, err = run_cli("train-predictor", "--model", "tiny-llama", "--rank", "4", "--epochs", "1")
    assert code == 0 and "held-out recall" in err and "layer 3/3" in err
    path = out.strip().splitlines()[-1]
    pred = NeuronPredictor.load(path)
    assert pred.rank == 4 and len(pred.A) == tiny_llama.ffn.n_layers and pred.n_heldout > 0
    assert all(0.0 <= r <= 1.0 for r in pred.recall)
    code, _, err = run_cli("train-predictor", "--model", "tiny-llama", "--rank", "4", "--epochs", "1")
    assert code == 0 and "from cache" in err
    newest, cached = load_or_train(tiny_llama, newest=True)  # what the method uses: the CLI's predictor
    assert cached and newest.rank == 4
    again, cached = load_or_train(tiny_llama, settings=PredictorSettings(rank=4, epochs=1))
    assert cached and torch.equal(again.A[0], pred.A[0])
    code, _, err = run_cli("train-predictor", "--model", "tiny-llama", "--label-density", "1.5")
    assert code == 2 and "label density" in err and err.count("\n") == 1


def test_bench_cli_runs_both(run_cli, tmp_out):
    import json

    path = tmp_out / "b.json"
    code, out, err = run_cli("bench", "--model", "tiny-llama", "--methods", "dense,rsparse,predictor",
                             "--prompt-tokens", "8", "--new-tokens", "2", "--rounds", "1", "--bandwidth-mb", "0",
                             "--out", path)
    assert code == 0, err
    data = json.loads(path.read_text())
    assert {"rsparse", "predictor"} <= set(data["results"])
    assert "| rsparse |" in out and "| predictor |" in out
