"""One neuron's profile (``analysis.neuron``), the corpus statistics cache and ``tda neuron``.

The maths is checked on hand-computed cases; the model-facing parts on ``tiny-llama`` against
the activations recomputed from the weights.
"""

from __future__ import annotations

import json

import pytest
import torch

from analysis import neuron as nrn
from tda.common.errors import BadInput

TEXTS = ["The harbour tram opens later.", "Octopuses change colour fast.", "A short third text, with commas."]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def small_stats(tiny_llama):
    from tda.activations.neuron_corpus import corpus_stats

    return corpus_stats(tiny_llama, TEXTS)


# ----- pure maths --------------------------------------------------------------------------------
def test_check_neuron_refuses_out_of_range_and_non_integers():
    assert nrn.check_neuron(2, 7, 3, 8) == (2, 7)
    with pytest.raises(BadInput, match=r"layer 3 out of range: the model has layers 0\.\.2"):
        nrn.check_neuron(3, 0, 3, 8)
    with pytest.raises(BadInput, match=r"neuron 8 out of range: layer 1 has neurons 0\.\.7"):
        nrn.check_neuron(1, 8, 3, 8)
    with pytest.raises(BadInput, match="neuron -1 out of range"):
        nrn.check_neuron(1, -1, 3, 8)
    with pytest.raises(BadInput, match="integer"):
        nrn.check_neuron(True, 0, 3, 8)
    with pytest.raises(BadInput, match="integer"):
        nrn.check_neuron(0, 1.5, 3, 8)


def test_cdf_fraction_and_histogram_from_quantiles():
    q = [0.0, 1.0, 2.0, 3.0, 4.0]  # quantiles at 0, 1/4, ..., 1: uniform on [0, 4]
    assert nrn.cdf(q, 1.5) == pytest.approx(0.375)
    assert nrn.cdf(q, -1.0) == 0.0 and nrn.cdf(q, 5.0) == 1.0
    edges, counts = nrn.quantile_histogram(q, 100, bins=4)
    assert edges == pytest.approx([0, 1, 2, 3, 4]) and counts == pytest.approx([25, 25, 25, 25])
    sym = [-2.0, -1.0, 0.0, 1.0, 2.0]  # |v| >= 1.5: an eighth at each end
    assert nrn.fraction_beyond(sym, 1.5) == pytest.approx(0.25)
    assert nrn.fraction_beyond(sym, 0.0) == 1.0
    ties = [0.0, 0.0, 0.0, 1.0, 2.0]  # half the values are exactly 0 (a point mass)
    assert nrn.cdf(ties, 0.0) == pytest.approx(0.5)
    assert nrn.fraction_beyond(ties, 0.5) == pytest.approx(0.375)
    _, counts = nrn.quantile_histogram(ties, 8, bins=2)
    assert counts == pytest.approx([6, 2])  # [0, 1): the zeros and a quarter; [1, 2]: a quarter
    levels = [0.0, 0.1, 1.0]  # unequal levels: a tenth of the values in [0, 1], the rest in [1, 2]
    assert nrn.cdf([0.0, 1.0, 2.0], 0.5, levels) == pytest.approx(0.05)
    assert nrn.cdf([0.0, 1.0, 2.0], 1.5, levels) == pytest.approx(0.55)
    assert nrn.quantile_histogram([0.0, 1.0, 2.0], 100, bins=2, levels=levels)[1] == pytest.approx([10, 90])


def test_vocab_logits_scale_and_centring():
    d = torch.tensor([1.0, 2.0])
    w_u = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
    gamma = torch.tensor([2.0, 0.5])
    assert nrn.vocab_logits(d, w_u, gamma).tolist() == pytest.approx([2.0, 1.0, 1.0])
    # LayerNorm centres: d - mean(d) = [-0.5, 0.5], times gamma = [-1, 0.25]
    assert nrn.vocab_logits(d, w_u, gamma, centre=True).tolist() == pytest.approx([-1.0, 0.25, -1.25])


def test_mask_membership_by_hand():
    acts = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]])
    gate = torch.tensor([[0.5, 0.0, 0.0, 0.0], [0.1, 0.0, 0.0, 0.0], [0.3, 0.0, 0.0, 0.0]])
    kw = dict(down_norms=torch.ones(4), static_scores=torch.tensor([1.0, 4.0, 3.0, 2.0]), t_layer=0.5,
              teal_cut=0.9, gate=gate, cats_cut=0.25)
    m0 = nrn.mask_membership(acts, 0, density=0.25, **kw)
    # TDA: RMS over tokens of |a|·1 = sqrt(2/3) ≥ 0.5; GRIFFIN: rows normalised -> s = [√2, 1, 0, 0], k = 1
    assert m0["tda"]["keeps"] and m0["tda"]["score"] == pytest.approx((2 / 3) ** 0.5)
    assert m0["griffin"]["keeps"] and m0["griffin"]["rank"] == 1 and m0["griffin"]["k"] == 1
    assert not m0["static"]["keeps"] and m0["static"]["rank"] == 4
    assert m0["tt"]["fraction"] == pytest.approx(2 / 3)  # tokens 0 and 1
    assert m0["teal"]["fraction"] == pytest.approx(2 / 3)
    assert m0["cats"]["fraction"] == pytest.approx(2 / 3)  # gates 0.5 and 0.3 pass 0.25
    m1 = nrn.mask_membership(acts, 1, density=0.5, **kw)
    assert m1["griffin"]["rank"] == 2 and m1["griffin"]["keeps"]  # k = 2
    assert m1["static"]["keeps"] and m1["static"]["rank"] == 1
    assert m1["tt"]["fraction"] == pytest.approx(1 / 3)
    assert m1["tda"]["keeps"] and m1["tda"]["score"] == pytest.approx(2 / 3 ** 0.5)  # RMS 2/√3 ≥ 0.5
    assert nrn.mask_membership(acts, 0, density=0.25, **{**kw, "gate": None})["cats"] is None


# ----- on a tiny model ---------------------------------------------------------------------------
def _mlp_inputs(lm, text: str, layer: int) -> torch.Tensor:
    """The FFN input ``x[position, d_model]`` of ``layer`` (BOS included), by a hook of the test's own."""
    seen = []
    h = lm.ffn.in_modules(layer)[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    try:
        ids = lm.tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            lm.model(ids)
    finally:
        h.remove()
    return seen[0][0]


def test_prompt_trace_matches_the_weights(tiny_llama):
    lm, L = tiny_llama, 1
    cap, gate = nrn.prompt_trace(lm, TEXTS[0], L)
    x = _mlp_inputs(lm, TEXTS[0], L)[1:]  # BOS dropped, as the capture does
    with torch.no_grad():
        a_ref = lm.ffn.activations(L, x)
        gate_ref = lm.ffn.act_fn(L)(lm.ffn.in_modules(L)[0](x))
    torch.testing.assert_close(cap.layer(L), a_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gate, gate_ref, atol=1e-5, rtol=1e-4)


def test_final_norm_scale_per_family(load_tiny):
    from tda.models.load import load_model

    g = load_model("tiny-gemma3")  # a fresh copy: its norm weight is changed below
    g.model.model.norm.weight.data.fill_(0.5)
    scale, centre = g.ffn.final_norm_scale()
    assert torch.allclose(scale, torch.full((g.ffn.d_model,), 1.5)) and not centre  # Gemma: 1 + w
    lm = load_tiny("tiny-llama")
    scale, centre = lm.ffn.final_norm_scale()
    assert torch.equal(scale, lm.model.model.norm.weight.float()) and not centre
    assert load_tiny("tiny-gpt2").ffn.final_norm_scale()[1]  # LayerNorm centres


def test_vocab_effect_is_the_unembedding_of_the_scaled_column(tiny_llama):
    lm, L, i = tiny_llama, 2, 9
    top = nrn.vocab_effect(lm, L, i, k=5)
    ref = lm.model.lm_head.weight.float() @ (lm.model.model.norm.weight.float() * lm.ffn.down_weight(L)[:, i].float())
    assert [r["id"] for r in top["promoted"]] == ref.topk(5).indices.tolist()
    assert [r["id"] for r in top["suppressed"]] == ref.topk(5, largest=False).indices.tolist()
    assert top["promoted"][0]["logit"] == pytest.approx(float(ref.max()), rel=1e-5)


def test_corpus_stats_match_a_direct_capture(tiny_llama, small_stats):
    from tda.activations.capture import capture
    from tda.activations.neuron_corpus import LEVELS

    lm, st = tiny_llama, small_stats
    caps = [capture(lm, t, None, "sequence") for t in TEXTS]
    acts = torch.cat([c.acts for c in caps], dim=1)  # [layer, corpus token, neuron]
    assert st.n_texts == 3 and st.n_tokens == acts.shape[1]
    assert st.token_ids.tolist() == [t for c in caps for t in c.token_ids]
    assert st.quantiles.shape == (lm.ffn.n_layers, len(LEVELS), lm.ffn.d_ff)
    torch.testing.assert_close(st.quantiles[:, 0].float(), acts.amin(dim=1), atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(st.quantiles[:, -1].float(), acts.amax(dim=1), atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(st.top_values[:, 0], acts.amax(dim=1), atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(st.bottom_values[:, 0], acts.amin(dim=1), atol=2e-3, rtol=2e-3)
    L, i = 1, 3
    col = acts[L, :, i]
    assert int(st.top_index[L, 0, i]) == int(col.argmax())
    # the fraction beyond a cut-off read from the quantiles is the direct one within one value's step
    cut = float(col.abs().median())
    direct = float((col.abs() >= cut).float().mean())
    step = 1 / (st.n_tokens - 1) + 2 / 256
    assert nrn.fraction_beyond(st.quantiles[L, :, i].float(), cut, st.levels) == pytest.approx(direct, abs=step)
    # act(gate) over the corpus: the same as the prompt trace of each text
    gates = torch.cat([nrn.prompt_trace(lm, t, L)[1] for t in TEXTS])
    torch.testing.assert_close(st.gate_quantiles[L, -1].float(), gates.amax(dim=0), atol=2e-3, rtol=2e-3)
    assert st.locate(0) == (0, 0)
    assert st.locate(int(st.offsets[1])) == (1, 0) and st.locate(st.n_tokens - 1)[0] == 2


def test_corpus_contexts_mark_the_right_token(tiny_llama, small_stats):
    ctx = nrn.corpus_contexts(small_stats, tiny_llama.tokenizer, 1, 3, k=4, window=3)
    assert len(ctx["top"]) == 4 and len(ctx["bottom"]) == 4
    vals = [r["activation"] for r in ctx["top"]]
    assert vals == sorted(vals, reverse=True) and vals[0] >= ctx["bottom"][0]["activation"]
    for r in ctx["top"]:
        text = TEXTS[r["text"]]
        assert (r["before"] + r["token"] + r["after"]).replace("⏎", "\n") in text
        assert len(tiny_llama.tokenizer(r["before"], add_special_tokens=False).input_ids) <= 3 + 1


def test_corpus_cache_round_trip_and_reuse(tiny_llama, cache, monkeypatch):
    from tda.activations import neuron_corpus as nc

    assert nc.cached_corpus_stats(tiny_llama, TEXTS) is None
    calls = []
    first = nc.load_or_compute_corpus_stats(tiny_llama, TEXTS, progress=lambda d, n: calls.append((d, n)))
    n = 3 + tiny_llama.ffn.n_layers  # the texts, then each layer's statistics
    assert calls[-1] == (n, n) and [d for d, _ in calls] == list(range(1, n + 1))
    path = nc.cache_path(tiny_llama.model_id, first.data_hash)
    assert path.is_file() and path.parent.parent == cache
    loaded = nc.CorpusStats.load(path)
    assert torch.equal(loaded.quantiles, first.quantiles) and torch.equal(loaded.top_index, first.top_index)
    monkeypatch.setattr(nc, "corpus_stats", lambda *a, **k: pytest.fail("recomputed a cached result"))
    nc._MEMO.clear()
    assert torch.equal(nc.load_or_compute_corpus_stats(tiny_llama, TEXTS).gate_quantiles, first.gate_quantiles)
    path.write_bytes(b"damaged")
    nc._MEMO.clear()
    assert nc.cached_corpus_stats(tiny_llama, TEXTS) is None and not path.exists()


def test_neuron_profile_numbers(tiny_llama, small_stats, cache):
    from tda.masks.calibrate import calibrate
    from tda.masks.input_thresholds import calibrate_inputs

    lm, L, i = tiny_llama, 1, 3
    cal = calibrate(lm, TEXTS, 0.2)
    inputs = calibrate_inputs(lm, TEXTS)
    prof = nrn.neuron_profile(lm, L, i, TEXTS[1], corpus=small_stats, calibration=cal, inputs=inputs,
                              density=0.5, k_contexts=3, k_tokens=4)
    json.dumps(prof)  # JSON-able
    cap, gate = nrn.prompt_trace(lm, TEXTS[1], L)
    assert prof["prompt"]["activation"] == pytest.approx(cap.layer(L)[:, i].tolist())
    assert prof["prompt"]["gate"] == pytest.approx(gate[:, i].tolist())
    norm = float(lm.ffn.down_norms(L)[i])
    assert prof["cutoffs"]["cett"]["value"] == pytest.approx(cal.thresholds[L] / norm)
    assert prof["cutoffs"]["teal"]["value"] == pytest.approx(inputs.threshold("model.layers.1.mlp.down_proj", 0.5))
    assert prof["cutoffs"]["cats"]["value"] == pytest.approx(inputs.threshold("gate_act.1", 0.5))
    tt = (cap.layer(L)[:, i].abs() * norm >= cal.thresholds[L]).float().mean()
    assert prof["masks"]["tt"]["fraction"] == pytest.approx(float(tt))
    assert len(prof["corpus"]["top"]) == 3 and len(prof["vocab"]["promoted"]) == 4
    with pytest.raises(BadInput, match="neuron 128 out of range"):
        nrn.neuron_profile(lm, L, 128, TEXTS[1], corpus=small_stats, calibration=cal, inputs=inputs)


def test_non_gated_model_has_no_cats(load_tiny):
    from tda.activations.neuron_corpus import corpus_stats
    from tda.masks.calibrate import calibrate
    from tda.masks.input_thresholds import calibrate_inputs

    lm = load_tiny("tiny-gpt2")
    stats = corpus_stats(lm, TEXTS[:2])
    assert stats.gate_quantiles is None
    prof = nrn.neuron_profile(lm, 0, 1, TEXTS[2], corpus=stats, calibration=calibrate(lm, TEXTS[:2]),
                              inputs=calibrate_inputs(lm, TEXTS[:2]))
    assert prof["cutoffs"]["cats"] is None and prof["masks"]["cats"] is None and prof["prompt"]["gate"] is None
    assert "cats" not in prof["corpus"]["fraction_beyond"]


# ----- the CLI -----------------------------------------------------------------------------------
def test_cli_neuron_json_and_table(run_cli, tmp_path, cache, tiny_llama):
    out = tmp_path / "n.json"
    code, stdout, err = run_cli("neuron", "--model", "tiny-llama", "--layer", "1", "--neuron", "5",
                                "--prompt", TEXTS[0], "--contexts", "3", "--json", out)
    assert code == 0, err
    prof = json.loads(out.read_text())
    assert prof["layer"] == 1 and prof["neuron"] == 5 and len(prof["corpus"]["top"]) == 3
    assert prof["corpus"]["n_texts"] == 120  # the shipped corpus
    assert "neuron 5 of layer 1" in stdout and "top-activating corpus contexts" in stdout
    assert f"{prof['cutoffs']['cett']['value']:.4g}" in stdout
    direct = nrn.neuron_profile(tiny_llama, 1, 5, TEXTS[0], k_contexts=3)  # the same caches: the same numbers
    assert direct["prompt"]["activation"] == pytest.approx(prof["prompt"]["activation"])
    assert direct["corpus"]["fraction_beyond"] == pytest.approx(prof["corpus"]["fraction_beyond"])
    for side in ("promoted", "suppressed"):  # ids exact; logits to float rounding (the shared fixture's
        # weights may have been made input-major by earlier tests, which changes the summation order)
        assert [t["id"] for t in direct["vocab"][side]] == [t["id"] for t in prof["vocab"][side]]
        assert [t["logit"] for t in direct["vocab"][side]] == pytest.approx([t["logit"] for t in prof["vocab"][side]],
                                                                             rel=1e-5)


@pytest.mark.parametrize("args, message", [
    (("--layer", "3", "--neuron", "0"), "layer 3 out of range"),
    (("--layer", "0", "--neuron", "128"), "neuron 128 out of range: layer 0 has neurons 0..127"),
    (("--layer", "0", "--neuron", "1", "--density", "0"), "density must be in (0, 1]"),
    (("--layer", "0", "--neuron", "1", "--contexts", "99"), "--contexts in 1..16"),
    (("-l", "0", "-i", "128"), "neuron 128 out of range"),  # -i is the short form of --neuron
    (("--layer", "0", "-n", "5"), "give the neuron as --neuron or -i"),  # -n is generate's --max-new-tokens
    (("--layer", "0"), "missing --neuron (-i)"),
])
def test_cli_neuron_checks_before_loading(run_cli, monkeypatch, args, message):
    import tda.cli.neuron_cmd as cmd

    monkeypatch.setattr(cmd, "load", lambda *a, **k: pytest.fail("loaded the model before checking"))
    code, _, err = run_cli("neuron", "--model", "tiny-llama", "--prompt", "x", *args)
    assert code == 2 and message in err
