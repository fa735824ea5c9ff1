"""Study 1 and Appendix C end to end on tiny models (fast), and the random-weights control."""

from __future__ import annotations

import pytest
import torch

from analysis.activation import make_rule, topp_rule
from analysis.studies import (
    capture_sources,
    inertia_for_prompt,
    prefix_text,
    random_word_text,
    run_scale,
    study1_inputs,
)
from tda.common.errors import BadInput


@pytest.fixture(scope="module")
def lm(load_tiny):
    return load_tiny("tiny-gemma3")


def test_study1_inputs_are_exact_tokens(lm):
    inp = study1_inputs(lm)
    assert inp["n_tokens"] == 16
    assert inp["real"].startswith("###\nArticle: Almost")
    for text in (inp["real"], inp["random"]):
        assert len(lm.tokenizer(text, add_special_tokens=False).input_ids) == 16
    assert study1_inputs(lm)["random"] == inp["random"]  # seeded
    assert study1_inputs(lm, seed=1)["random"] != inp["random"]


def test_prefix_text_and_random_words(lm):
    text, m = prefix_text(lm, "Almost one million people visited the city", 3)
    assert m == 3 and len(lm.tokenizer(text, add_special_tokens=False).input_ids) == 3
    words, _ = random_word_text(lm, 5, seed=3, pool=["city", "people", "one"])
    assert len(words.split()) == 5
    with pytest.raises(BadInput):
        prefix_text(lm, "   ", 4)


def test_study1_end_to_end(lm):
    run = inertia_for_prompt(lm, make_rule(lm, "cett"))
    res = run.result
    assert res["layers"] == [0, 1, 2] and res["rule"]["rule"] == "cett" and len(res["rule"]["thresholds"]) == 3
    assert set(res["sources"]) == {"real", "random"}
    for d in res["sources"].values():
        for mode in ("isolated", "sequence"):
            assert len(d[mode]) == 3
            for row in d[mode]:
                assert 0 <= row["jaccard"] <= 1 and 0 < row["density"] < 1
                assert row["n50"] >= 1 and row["n50"] <= row["n90"] <= row["n_active_neurons"] <= 128
        assert all(0 <= x <= 1 for x in d["self_jaccard"])
    # the first token has no context in either mode: both captures see [BOS, t0]
    for src in ("real", "random"):
        iso, seq = run.captures[(src, "isolated")], run.captures[(src, "sequence")]
        assert torch.allclose(iso.acts[:, 0], seq.acts[:, 0], atol=1e-5)
        assert iso.token_ids == seq.token_ids


def test_topp_rule_gives_fixed_density(lm):
    run = inertia_for_prompt(lm, topp_rule(0.25), n_tokens=8)
    for d in run.result["sources"].values():
        for mode in ("isolated", "sequence"):
            assert all(r["density"] == pytest.approx(32 / 128) for r in d[mode])


def test_scale_end_to_end(lm):
    from tda.common.data import load_texts

    rules = [make_rule(lm, "cett"), topp_rule(0.1)]
    out = run_scale(lm, rules, load_texts()[:4], n_tokens=8, keep_rates=[1])
    res = out["result"]
    assert res["n_samples"] == 4 and res["rate_layers"] == [1]
    assert set(res["by_rule"]) == {"cett0.2", "top10pct"}
    for r in res["by_rule"].values():
        for d in r["sources"].values():
            assert d["n_samples"] == 4 and d["mean_tokens"] == 8
            for mode in ("isolated", "sequence"):
                assert [row["layer"] for row in d[mode]] == [0, 1, 2]
                assert all(row["n50_pooled"] <= row["n90_pooled"] for row in d[mode])
    R = out["rates"]["top10pct"]["real"]["sequence"]
    assert R.shape == (1, 4, 128) and float(R.min()) >= 0 and float(R.max()) <= 1
    # top-p: every token has exactly round(0.1*128) active neurons, so each row's rates sum to 13
    assert torch.allclose(R.sum(-1), torch.full((1, 4), 13.0))


def test_random_control_differs_and_is_seeded(lm):
    from analysis.random_control import random_weights_like

    c0, c0b, c1 = random_weights_like(lm, 0), random_weights_like(lm, 0), random_weights_like(lm, 1)
    assert c0 is c0b and c0.model_id == "tiny-gemma3+randinit0"
    assert c0.ffn.describe() == lm.ffn.describe()
    w = [m.ffn.down_weight(0) for m in (lm, c0, c1)]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    caps = capture_sources(c0, {"real": "the city"})
    assert caps[("real", "sequence")].model_id == c0.model_id


def test_cett_rule_rejects_other_layers(lm):
    rule = make_rule(lm, "cett")
    with pytest.raises(BadInput):
        rule.active(torch.zeros(1, 2, 128), [5])
    with pytest.raises(BadInput):
        make_rule(lm, "cett", 1.5)
    with pytest.raises(BadInput):
        make_rule(lm, "median")


@pytest.mark.slow
def test_study1_and_study2_on_the_embedded_model(gemma):
    """The real Gemma 3 270M: the XSum prefix is the paper's, and both studies give full results."""
    from analysis.similarity import similarity_study, verdict_rows
    from tda.common.data import load_samples

    rule = make_rule(gemma, "cett")
    run = inertia_for_prompt(gemma, rule)
    toks = run.result["sources"]["real"]["tokens"]
    assert toks[:5] == ["###", "\n", "Article", ":", "▁Almost"] and len(toks) == 16
    assert run.result["inputs"]["random_source"] == "words.txt"
    assert len(run.result["sources"]["random"]["sequence"]) == 18
    sim = similarity_study(gemma, load_samples(), rule)
    assert len(verdict_rows(sim)) == 80
    assert sim["groups"]["early"] == [0, 1, 2, 3, 4, 5]
