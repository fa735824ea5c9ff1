"""``chess`` and ``scap`` (issue 19): registry and CLI, density 1 = dense's tokens, each sparse path =
its masked dense product, batches = prompts alone, and hand ports of the reference codes' core rules.

The ports are written by hand after the public code (never copied):

- CHESS, junhuihe-hjh/CHESS: ``CHESS/notebooks/thresholds.py`` (calibration: per-sample
  ``kthvalue`` quantiles and per-sample ``E|up_j|``, averaged over samples; a second pass for the
  importance ``|act(gate)_j|·E|up_j|``; channel threshold ``τ_L / E|up_j|``) and
  ``CHESS/models/llama.py`` method ``CHESS+`` (``act(gate)`` zeroed where ``|.| <`` the channel
  threshold; the q projection's input and the o projection's input zeroed where ``|x| < t_L``; k and
  v from the unmasked input).
- SCAP, IntelLabs/SCAP: ``calibrate.py`` (a hook per linear calibrates on the first input it sees
  — ``median`` mode, threshold = quantile of ``|x - mode|`` at the target sparsity — and from then
  on feeds ``x - mode`` zeroed where ``|x - mode| ≤ threshold`` and adds ``W·(mode·1)`` to the
  output; calibration is one forward over the batch of calibration texts, sparsified as it goes).

Deviations, the engine's (documented in the methods): decode steps only are sparse (the codes mask
every position), BOS positions are left out of the statistics.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tda.common.errors import BadInput
from tda.engine.config import SparsityConfig
from tda.engine.generate import generate
from tda.models.dispatch import linear_overrides, module_weight
from tests.test_methods import _decode_table, _x

FAMILIES = ("tiny-llama", "tiny-gemma3", "tiny-gpt2", "tiny-opt", "tiny-qwen3", "tiny-mistral")
GATED = ("tiny-llama", "tiny-gemma3", "tiny-qwen3", "tiny-mistral")
PROMPTS = ["the quick brown fox jumps over", "a house by the river", "one two three four five six seven"]
KW = dict(max_new_tokens=6, min_new_tokens=6)
DENSITY = 0.5


def _methods(lm) -> list[str]:
    return ["chess", "scap"] if lm.ffn.gated else ["scap"]


def _long_texts(lm, n: int = 4) -> list[str]:
    """``n`` calibration texts of at least 128 tokens: one equal-length batch (no padding), as the
    SCAP code's, and within the sampling budget (the statistics are exact)."""
    from tda.common.data import load_texts

    texts = [t for t in load_texts() if len(lm.tokenizer(t).input_ids) >= 128][:n]
    assert len(texts) == n
    return texts


# ----- registry, CLI, errors ---------------------------------------------------------------------------
def test_listed_by_tda_methods(run_cli):
    from tda.engine.methods.registry import get_method, method_names

    assert {"chess", "scap"} <= set(method_names())
    assert get_method("chess").gated_only and not get_method("scap").gated_only
    code, out, _ = run_cli("methods")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert "CHESS" in rows["chess"] and "SCAP" in rows["scap"]


@pytest.mark.parametrize("spec", ["tiny-gpt2", "tiny-opt"])
def test_chess_needs_a_gated_ffn(load_tiny, spec):
    with pytest.raises(BadInput) as e:
        generate(load_tiny(spec), PROMPTS[0], "chess", density=0.5, **KW)
    assert "gated" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("method", ["chess", "scap"])
def test_needs_a_density(tiny_llama, method):
    with pytest.raises(BadInput) as e:
        generate(tiny_llama, PROMPTS[0], method, **KW)
    assert "needs a density" in str(e.value) and "\n" not in str(e.value)


# ----- density 1 = dense; density 0.5 is sparse ------------------------------------------------------------
@pytest.mark.parametrize("spec", FAMILIES)
def test_density_one_gives_dense_tokens_and_half_is_sparse(load_tiny, spec):
    lm = load_tiny(spec)
    dense = generate(lm, PROMPTS[0], "dense", **KW)
    for method in _methods(lm):
        assert generate(lm, PROMPTS[0], method, density=1.0, **KW).token_ids == dense.token_ids, method
        r = generate(lm, PROMPTS[0], method, density=DENSITY, **KW)
        rf = r.params["read_fraction"]
        assert 0.2 < r.density < 0.8 and rf["lm_head"] == 1.0, method
        if method == "chess":  # gate dense, up and down at ~d: (1 + 2d)/3; q and o at ~d, k and v dense
            assert 0.45 < rf["ffn"] < 0.85 and 0.3 < rf["other"] < 0.9
        else:  # gate, up and down at ~d; attention dense
            assert 0.3 < rf["ffn"] < 0.7 and rf["other"] == 1.0


@pytest.mark.parametrize("spec", FAMILIES)
def test_scap_folded_bias_is_exact_at_threshold_zero(load_tiny, spec, monkeypatch):
    """Threshold 0 through the shifted kernel path (every ``x - c`` entry kept, ``W·c`` in the bias)
    gives ``W·x + b`` and dense's tokens."""
    import tda.engine.methods.scap as scap

    lm = load_tiny(spec)
    sess, table = _decode_table(lm, SparsityConfig("scap", density=DENSITY, fast=False))
    cal = scap.scap_calibration(lm, sess.cfg)
    assert any(abs(c) > 0 for c in cal.modes.values())
    for i, m in enumerate(sess.impl.modules()):
        w, b = module_weight(m), getattr(m, "bias", None)
        x = _x(3, w.shape[1], i)
        fn = scap.centred_linear(w.t(), b, 0.25, 0.0, None)
        with torch.inference_mode():
            torch.testing.assert_close(fn(x), F.linear(x, w, b), rtol=1e-4, atol=1e-5)
    monkeypatch.setattr(scap, "strictly_above", lambda tau: 0.0)
    dense = generate(lm, PROMPTS[1], "dense", fast=False, **KW)
    r = generate(lm, PROMPTS[1], "scap", density=DENSITY, fast=False, **KW)
    assert r.token_ids == dense.token_ids
    # really the kernel path, every entry kept (but a ReLU's exact zeros where its mode is 0: they add nothing)
    assert r.params["read_fraction"]["ffn"] > (0.75 if spec == "tiny-opt" else 0.99)


# ----- each sparse path equals its masked dense product ----------------------------------------------------
@pytest.mark.parametrize("spec", GATED)
def test_chess_equals_masked_dense(load_tiny, spec):
    from tda.engine.methods.chess import channel_thresholds
    from tda.engine.sparse import ffn_apply
    from tda.masks.channel_thresholds import attention_projections

    lm = load_tiny(spec)
    ffn = lm.ffn
    sess, table = _decode_table(lm, SparsityConfig("chess", density=0.4, fast=False))
    cal = channel_thresholds(lm, sess.cfg)
    for L in range(ffn.n_layers):
        cut = cal.chess_cuts(L, 0.4)
        assert cut.shape == (ffn.d_ff,) and len(set(cut.tolist())) > ffn.d_ff // 2  # one per channel
        x = _x(3, ffn.d_model, L)
        with torch.inference_mode():
            with linear_overrides({m: table[m] for m in (*ffn.in_modules(L), ffn.out_module(L))}):
                got = ffn_apply(ffn, L, x)
                single = torch.cat([ffn_apply(ffn, L, x[r:r + 1]) for r in range(3)])
            keep = ffn.act_fn(L)(F.linear(x, ffn.in_weights(L)[0])).abs() >= cut
            ref = F.linear(ffn.activations(L, x) * keep, ffn.down_weight(L), ffn.down_bias(L))
        assert 0 < int(keep.sum()) < keep.numel()
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(single, ref, rtol=1e-4, atol=1e-5)  # batch rows = rows alone
        for m, role in zip(attention_projections(ffn.layers[L]), ("q", "o")):
            w, b = module_weight(m), getattr(m, "bias", None)
            t = cal.threshold(f"chess.{role}.{L}", 0.4)
            x = _x(3, w.shape[1], 10 + L) * t / 0.674  # about half of N(0, 1) lies beyond 0.674
            keep = x.abs() >= t
            with torch.inference_mode():
                got = table[m](x)
                single = torch.cat([table[m](x[r:r + 1]) for r in range(3)])
            assert 0 < int(keep.sum()) < keep.numel()
            torch.testing.assert_close(got, F.linear(x * keep, w, b), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(single, got, rtol=1e-4, atol=1e-5)
    k_proj = ffn.layers[0].self_attn.k_proj
    assert k_proj not in table  # k and v stay dense


@pytest.mark.parametrize("spec", FAMILIES)
def test_scap_equals_masked_dense(load_tiny, spec):
    from tda.engine.methods.scap import scap_calibration, strictly_above

    lm = load_tiny(spec)
    ffn = lm.ffn
    sess, table = _decode_table(lm, SparsityConfig("scap", density=DENSITY, fast=False))
    cal = scap_calibration(lm, sess.cfg)
    assert len(table) == 3 * ffn.n_layers if ffn.gated else 2 * ffn.n_layers
    for L in range(ffn.n_layers):
        sites = [(m, f"scap.in.{L}") for m in ffn.in_modules(L)] + [(ffn.out_module(L), f"scap.down.{L}")]
        for i, (m, site) in enumerate(sites):
            c, tau = cal.site(site)
            w, b = module_weight(m), getattr(m, "bias", None)
            x = c + _x(3, w.shape[1], 7 * L + i) * max(tau, 1e-3) / 0.674
            if i == len(sites) - 1:
                x[..., ::5] = c  # entries exactly at the mode: |x - c| = 0 is never kept
            keep = (x - c).abs() >= strictly_above(tau)
            with torch.inference_mode():
                got = table[m](x)
                single = torch.cat([table[m](x[r:r + 1]) for r in range(3)])
                ref = F.linear(torch.where(keep, x, torch.full_like(x, c)), w, b)  # W·[(x - c)·keep] + b + W·c
            assert 0 < int(keep.sum()) < keep.numel()
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(single, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec,method", [("tiny-llama", "chess"), ("tiny-llama", "scap"), ("tiny-opt", "scap"),
                                         ("tiny-gemma3", "chess")])
def test_batch_equals_per_prompt(load_tiny, spec, method):
    lm = load_tiny(spec)
    batch = generate(lm, PROMPTS, method, density=DENSITY, **KW)
    for i, p in enumerate(PROMPTS):
        assert batch.token_ids[i] == generate(lm, p, method, density=DENSITY, **KW).token_ids[0], i


# ----- CHESS: hand port of the reference --------------------------------------------------------------------
def _kth_quantile(v: torch.Tensor, q: float) -> torch.Tensor:
    """CHESS's ``quantile``: ``kthvalue`` at ``k = int(n·q)``."""
    return torch.kthvalue(v.flatten(), int(v.numel() * q)).values


def _chess_reference_calibration(lm, texts: list[str], sparsity: float) -> dict:
    """CHESS's thresholds: two dense passes, per-sample statistics averaged over samples."""
    from tda.masks.channel_thresholds import attention_projections

    ffn, n = lm.ffn, lm.ffn.n_layers
    att_in, att_out, up_mean, imp = [0.0] * n, [0.0] * n, [0.0] * n, [0.0] * n
    samples = [torch.tensor([lm.tokenizer(t).input_ids[:128]]) for t in texts]
    first = 1  # the engine's convention: BOS out of the statistics

    def forward_with(table):
        with torch.inference_mode(), linear_overrides(table):
            for ids in samples:
                lm.model(input_ids=ids, use_cache=False)

    def recorder(m, fn):
        w, b = module_weight(m), getattr(m, "bias", None)

        def rec(x):
            y = F.linear(x, w, b)
            fn(x[:, first:], y[:, first:])
            return y

        return rec

    table = {}
    for L in range(n):
        q, o = attention_projections(ffn.layers[L])
        gate, up = ffn.in_modules(L)

        def on_q(x, y, L=L):
            att_in[L] += _kth_quantile(x.abs(), sparsity) / len(samples)

        def on_o(x, y, L=L):
            att_out[L] += _kth_quantile(x.abs(), sparsity) / len(samples)

        def on_up(x, y, L=L):
            up_mean[L] += y.abs().reshape(-1, ffn.d_ff).mean(dim=0) / len(samples)

        table.update({q: recorder(q, on_q), o: recorder(o, on_o), up: recorder(up, on_up)})
    forward_with(table)
    table = {}
    for L in range(n):
        gate = ffn.in_modules(L)[0]

        def on_gate(x, y, L=L):
            score = ffn.act_fn(L)(y).abs().reshape(-1, ffn.d_ff) * up_mean[L]
            imp[L] += _kth_quantile(score, sparsity) / len(samples)

        table[gate] = recorder(gate, on_gate)
    forward_with(table)
    return {"q": att_in, "o": att_out, "m": up_mean, "cut": [imp[L] / up_mean[L] for L in range(n)]}


class ReferenceChessMLP(nn.Module):
    """CHESS+'s MLP: ``act(gate)`` zeroed where ``|.| <`` its channel's threshold (decode steps here)."""

    def __init__(self, mlp: nn.Module, cut: torch.Tensor):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj, self.act_fn = mlp.gate_proj, mlp.up_proj, mlp.down_proj, mlp.act_fn
        self.cut, self.kept = cut, []

    def forward(self, x):
        g = self.act_fn(self.gate_proj(x))
        if x.shape[1] == 1:
            g = torch.where(g.abs() < self.cut, 0.0, g)
            self.kept.append(int((g != 0).sum()))
        return self.down_proj(g * self.up_proj(x))


class ReferenceInputMask(nn.Module):
    """CHESS+'s attention: this projection's input zeroed where ``|x| < t`` (decode steps here)."""

    def __init__(self, proj: nn.Module, t: float):
        super().__init__()
        self.proj, self.t, self.kept = proj, t, []

    def forward(self, x):
        if x.shape[1] == 1:
            x = torch.where(x.abs() < self.t, 0.0, x)
            self.kept.append(int((x != 0).sum()))
        return self.proj(x)


def test_chess_calibration_matches_the_reference(load_tiny):
    from tda.masks.channel_thresholds import calibrate_channels

    lm = load_tiny("tiny-llama")
    texts = _long_texts(lm)
    ref = _chess_reference_calibration(lm, texts, 1 - DENSITY)
    cal = calibrate_channels(lm, texts)
    for L in range(lm.ffn.n_layers):
        torch.testing.assert_close(torch.tensor(cal.scales[f"chess.{L}"]), ref["m"][L].double().cpu().float())
        # interpolated quantiles vs kthvalue: one order statistic apart at most
        torch.testing.assert_close(cal.chess_cuts(L, DENSITY), ref["cut"][L].float(), rtol=2e-2, atol=1e-6)
        for role in ("q", "o"):
            assert cal.threshold(f"chess.{role}.{L}", DENSITY) == pytest.approx(float(ref[role][L]), rel=2e-2)


def test_chess_generation_matches_the_reference():
    """The engine's chess (sparse kernels) and the hand port (masked dense) at the engine's calibrated
    thresholds: the same tokens and, step by step, the same numbers of kept channels and inputs."""
    from tda.engine.methods.chess import channel_thresholds
    from tda.models.load import load_model

    lm = load_model("tiny-llama")  # fresh: another test's methods may have made W_up input-major
    texts = _long_texts(lm)
    res = generate(lm, PROMPTS[2], "chess", density=DENSITY, calibration_texts=texts, fast=False,
                   max_new_tokens=6, min_new_tokens=6)
    cal = channel_thresholds(lm, SparsityConfig("chess", density=DENSITY, calibration_texts=texts))
    fresh = load_model("tiny-llama")  # a private copy: its modules get replaced
    mlps, masks = [], []
    for L, layer in enumerate(fresh.model.model.layers):
        layer.mlp = ReferenceChessMLP(layer.mlp, cal.chess_cuts(L, DENSITY))
        mlps.append(layer.mlp)
        for name, role in (("q_proj", "q"), ("o_proj", "o")):
            wrapper = ReferenceInputMask(getattr(layer.self_attn, name), cal.threshold(f"chess.{role}.{L}", DENSITY))
            setattr(layer.self_attn, name, wrapper)
            masks.append(wrapper)
    ids = torch.tensor([fresh.tokenizer(PROMPTS[2]).input_ids])
    with torch.inference_mode():
        out = fresh.model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                                   pad_token_id=fresh.tokenizer.pad_token_id)
    assert res.token_ids[0] == out[0, ids.shape[1]:].tolist()
    # bytes read: gate in full, up and down at the kept channels; q and o at the kept inputs, k and v in full
    ffn, steps = lm.ffn, len(mlps[0].kept)
    kept_ffn = sum(sum(m.kept) for m in mlps) / (steps * ffn.d_ff * ffn.n_layers)
    assert res.params["read_fraction"]["ffn"] == pytest.approx((1 + 2 * kept_ffn) / 3, abs=1e-6)
    attn = [layer.self_attn for layer in ffn.layers]
    total = sum(module_weight(getattr(a, p)).numel() for a in attn for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
    read = sum(module_weight(getattr(a, p)).numel() for a in attn for p in ("k_proj", "v_proj"))
    for w in masks:
        n_out, d_in = module_weight(w.proj).shape
        read += n_out * sum(w.kept) / steps
    assert res.params["read_fraction"]["other"] == pytest.approx(read / total, abs=1e-6)


# ----- SCAP: hand port of the reference ---------------------------------------------------------------------
class ReferenceScapLinear(nn.Module):
    """SCAP's calibration hook on one linear: calibrates on the first input it sees (median mode,
    threshold = quantile of ``|x - mode|``), then feeds ``x - mode`` zeroed where ``|x - mode| ≤
    threshold`` and adds ``W·(mode·1)`` — during calibration and at decode steps (the engine's
    prefill is dense)."""

    def __init__(self, linear: nn.Module, sparsity: float, first: int, batch: int):
        super().__init__()
        self.linear, self.sparsity, self.first, self.batch = linear, sparsity, first, batch
        self.mode = self.threshold = self.extra = None
        self.calibrating, self.kept = True, []

    def forward(self, x):
        if self.mode is None:
            v = x.reshape(self.batch, -1, x.shape[-1])[:, self.first:].double()  # BOS out (the engine's convention)
            self.mode = float(v.median())
            self.threshold = float(torch.quantile((v - self.mode).abs().flatten(), self.sparsity))
            ones = torch.ones(1, x.shape[-1], dtype=x.dtype)
            self.extra = self.linear(ones * self.mode) - self.linear(ones * 0)
        if not (self.calibrating or x.reshape(-1, x.shape[-1]).shape[0] == 1):  # OPT's FFN sees [B·T, d]
            return self.linear(x)
        shifted = x - self.mode
        shifted = torch.masked_fill(shifted, shifted.abs() <= self.threshold, 0.0)
        if not self.calibrating:
            self.kept.append(int((shifted != 0).sum()))
        return self.linear(shifted) + self.extra


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt2", "tiny-opt"])
def test_scap_matches_the_reference(load_tiny, spec):
    """Calibration (modes, thresholds), tokens and kept counts of the engine's scap vs the hand port."""
    from tda.activations.capture import has_bos
    from tda.engine.methods.scap import scap_calibration
    from tda.masks.input_thresholds import module_names
    from tda.models.load import load_model

    lm = load_tiny(spec)
    texts = _long_texts(lm)
    cfg = SparsityConfig("scap", density=DENSITY, calibration_texts=texts, fast=False)
    cal = scap_calibration(lm, cfg)
    res = generate(lm, PROMPTS[2], cfg, max_new_tokens=6, min_new_tokens=6)

    fresh = load_model(spec)
    ffn, names = fresh.ffn, module_names(fresh.model)
    first = 1 if has_bos(fresh) else 0
    hooks = {}
    for L in range(ffn.n_layers):
        for m in (*ffn.in_modules(L), ffn.out_module(L)):
            site = f"scap.down.{L}" if m is ffn.out_module(L) else f"scap.in.{L}"
            parent, _, attr = names[id(m)].rpartition(".")
            hooks[names[id(m)]] = (site, ReferenceScapLinear(m, 1 - DENSITY, first, len(texts)))
            setattr(fresh.model.get_submodule(parent), attr, hooks[names[id(m)]][1])
    batch = torch.tensor([fresh.tokenizer(t).input_ids[:128] for t in texts])
    with torch.inference_mode():
        fresh.model(input_ids=batch, use_cache=False)
    for site, h in hooks.values():
        c, tau = cal.site(site)
        assert c == pytest.approx(h.mode, rel=1e-4, abs=1e-7), site
        assert tau == pytest.approx(h.threshold, rel=1e-4, abs=1e-7), site
        h.calibrating = False
    ids = torch.tensor([fresh.tokenizer(PROMPTS[2]).input_ids])
    with torch.inference_mode():
        out = fresh.model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                                   pad_token_id=fresh.tokenizer.pad_token_id)
    assert res.token_ids[0] == out[0, ids.shape[1]:].tolist()
    fractions = [sum(h.kept) / (len(h.kept) * module_weight(h.linear).shape[1]) for _, h in hooks.values()]
    # the FFN linears of a family have equal sizes: the FFN read fraction is the mean kept fraction
    assert res.params["read_fraction"]["ffn"] == pytest.approx(sum(fractions) / len(fractions), abs=1e-6)
