"""Quality metrics on tiny models: dense agrees with itself, masks change things, lm-eval runs offline."""

from __future__ import annotations

import json

import pytest

from tda.common.errors import BadInput
from tda.evaluate.quality import (
    Variant,
    perplexity_eval,
    rouge,
    summarization_eval,
    to_csv,
    to_markdown,
    variants,
)

TEXTS = ["the quick brown fox jumps over the lazy dog and runs far away into the woods",
         "one two three four five six seven eight nine ten eleven twelve"]


def test_variants_validate():
    vs = variants(["dense", "griffin"], [0.25, 0.5])
    assert [v.label for v in vs] == ["dense", "griffin@0.25", "griffin@0.5"]
    with pytest.raises(BadInput):
        variants(["nope"], [0.5])
    with pytest.raises(BadInput):
        variants(["griffin"], [0.0])


def test_perplexity_and_agreement(tiny_llama):
    vs = [Variant("dense", None), Variant("griffin", 1.0), Variant("random", 0.1)]
    res = perplexity_eval(tiny_llama, TEXTS, vs)
    assert res["dense"]["agreement"] == 1.0
    assert res["griffin@1"]["ppl"] == pytest.approx(res["dense"]["ppl"], rel=1e-4)
    assert res["griffin@1"]["agreement"] == 1.0
    assert res["random@0.1"]["ppl"] != pytest.approx(res["dense"]["ppl"], rel=1e-3)
    assert res["random@0.1"]["agreement"] < 1.0
    assert res["dense"]["tokens"] > 10


def test_teacher_forced_matches_full_forward(tiny_llama):
    """Dense prefill + cached continuation gives the same log-likelihood as one full forward."""
    import torch

    from tda.engine.generate import SparseSession
    from tda.evaluate.quality import continuation_logits

    ids = tiny_llama.tokenizer(TEXTS[0]).input_ids
    got = continuation_logits(tiny_llama, ids, 5, SparseSession(tiny_llama, "dense", fast=False))
    with torch.inference_mode():
        full = tiny_llama.model(input_ids=torch.tensor([ids])).logits[0, 4:-1].float()
    torch.testing.assert_close(got, full, rtol=1e-4, atol=1e-4)


def test_rouge_and_summaries(tiny_llama, monkeypatch):
    import tda.common.data

    monkeypatch.setattr(tda.common.data, "xsum_prompt", lambda article: f"Article: {article}\nSummary:")
    r = rouge(["a cat sat on the mat"], ["a cat sat on the mat"])
    assert r["rouge1"] == pytest.approx(100.0)
    assert rouge(["dogs bark"], ["a cat sat"])["rouge1"] == 0.0
    recs = [{"article": "A zoo welcomed twin red panda cubs.", "summary": "Zoo has red panda twins."}]
    res = summarization_eval(tiny_llama, recs, [Variant("dense", None), Variant("griffin", 1.0)], max_new_tokens=4)
    assert res["dense"]["rouge1_vs_dense"] == pytest.approx(100.0) or res["dense"]["outputs"] == [""]
    assert res["griffin@1"]["outputs"] == res["dense"]["outputs"]


def test_tables():
    rows = [{"method": "dense", "density": 1.0, "ppl": 3.0}, {"method": "tt", "density": 0.5, "ppl": 4.5}]
    assert to_csv(rows).splitlines()[0] == "method,density,ppl"
    assert "| tt | 0.5 | 4.5 |" in to_markdown(rows)


def test_quality_figure():
    from tda.evaluate.quality_plots import quality_figure

    rows = [{"method": "dense", "density": 1.0, "agreement": 1.0},
            {"method": "tt", "density": 0.5, "agreement": 0.8}, {"method": "tt", "density": 0.25, "agreement": 0.6}]
    fig = quality_figure(rows, "agreement")
    names = [t.name for t in fig.data]
    assert "tt" in names and "dense" in names
    tt = fig.data[names.index("tt")]
    assert list(tt.x) == [0.25, 0.5] and list(tt.y) == [0.6, 0.8]


def test_lm_eval_wrapper_offline(tiny_llama):
    from tda.evaluate.lm_eval_model import TDALM, mc_task_config, run_mc_task

    cfg = mc_task_config()
    assert cfg["dataset_path"] == "json" and cfg["dataset_kwargs"]["data_files"]["test"].startswith("/")
    acc = run_mc_task(tiny_llama, "griffin", 0.5, limit=5)
    assert 0.0 <= acc <= 1.0

    class Req:
        def __init__(self, *args):
            self.args = args

    m = TDALM(lm=tiny_llama, method="dense")
    (lp, greedy), = m.loglikelihood([Req("the cat", " sat on")])
    assert lp < 0 and isinstance(greedy, bool)
    (lp2,) = TDALM(lm=tiny_llama, method="griffin", density=1.0).loglikelihood([Req("the cat", " sat on")])
    assert lp2[0] == pytest.approx(lp, rel=1e-4)


def test_eval_cli(run_cli, tmp_out):
    out = tmp_out / "q"
    code, stdout, err = run_cli("eval", "--model", "tiny-llama", "--methods", "dense,griffin", "--densities", "0.5",
                                "--limit", "2", "--max-new-tokens", "3", "--out", out)
    assert code == 0, err
    data = json.loads((out / "quality.json").read_text())
    assert [r["method"] for r in data["rows"]] == ["dense", "griffin"]
    assert (out / "quality.csv").exists() and (out / "quality-ppl.html").exists()
    assert (out / "quality-ppl.html").stat().st_size < 200_000 and (out / "plotly.min.js").exists()
    assert "| griffin | 0.5 |" in stdout


def test_bootstrap_by_hand():
    import math

    from tda.evaluate.bootstrap import mean_interval, perplexity_interval, ratio_interval

    nll, tok = [10.0, 30.0, 12.0, 25.0, 18.0], [10, 12, 8, 20, 9]
    p, lo, hi = perplexity_interval(nll, tok)
    assert p == pytest.approx(math.exp(sum(nll) / sum(tok)))  # token-weighted, not a mean of ppls
    assert lo <= p <= hi and lo < hi
    assert perplexity_interval(nll, tok, seed=3) == perplexity_interval(nll, tok, seed=3)  # deterministic
    assert perplexity_interval(nll, tok, seed=3) != perplexity_interval(nll, tok, seed=4)
    few = [1, 0, 1, 1, 0, 1, 0, 1]
    a, lo1, hi1 = mean_interval(few)
    assert a == pytest.approx(5 / 8) and lo1 <= a <= hi1
    a2, lo2, hi2 = mean_interval(few * 16)  # same mean, 16x the items: a much narrower interval
    assert a2 == pytest.approx(a) and lo2 <= a2 <= hi2 and (hi2 - lo2) < 0.5 * (hi1 - lo1)
    assert mean_interval([1.0]) == (1.0, 1.0, 1.0)  # nothing to resample
    assert all(x != x for x in ratio_interval([], []))
    assert ratio_interval([3, 3], [4, 4]) == (0.75, 0.75, 0.75)


def test_eval_rows_carry_intervals(tiny_llama):
    from tda.evaluate.quality import run_eval

    res = run_eval(tiny_llama, ["dense", "random"], [0.2], heldout=TEXTS * 2, summaries=[], mc_limit=4)
    dense, rnd = res["rows"]
    assert dense["agreement"] == dense["agreement_lo"] == dense["agreement_hi"] == 1.0
    for r in (dense, rnd):
        assert r["ppl_lo"] <= r["ppl"] <= r["ppl_hi"]
        assert r["mc_acc_lo"] <= r["mc_acc"] <= r["mc_acc_hi"] and r["mc_items"] == 4
    assert len(res["per_text"]["random@0.2"]["nll"]) == 4 and len(res["mc_per_item"]["dense"]) == 4
    assert to_csv(res["rows"]).splitlines()[0].startswith("method,density,ppl,agreement,mc_acc,ppl_lo,ppl_hi")


def test_eval_cli_sets(run_cli, tmp_out):
    """`tda eval --set`: a cloze set scores last-word accuracy with paired deltas; a text set with
    --gen-prompts adds the free-running generation metrics; an unknown set is one line."""
    out = tmp_out / "cz"
    code, _, err = run_cli("eval", "--model", "tiny-llama", "--methods", "dense,griffin", "--densities", "0.5",
                           "--set", "pydoc-cloze", "--limit", "3", "--out", out)
    assert code == 0, err
    data = json.loads((out / "quality.json").read_text())
    g = data["rows"][1]
    assert data["meta"]["set"] == "pydoc-cloze" and g["cloze_items"] == 3 and "ppl" not in g
    assert 0 <= g["cloze_acc"] <= 1 and g["cloze_acc_delta_lo"] <= g["cloze_acc_delta"] <= g["cloze_acc_delta_hi"]
    assert len(data["cloze_per_item"]["griffin@0.5"]) == 3
    out = tmp_out / "gen"
    code, _, err = run_cli("eval", "--model", "tiny-llama", "--methods", "dense,griffin", "--densities", "0.5",
                           "--set", "heldout-small", "--limit", "2", "--gen-prompts", "2", "--gen-tokens", "6",
                           "--max-new-tokens", "3", "--out", out)
    assert code == 0, err
    data = json.loads((out / "quality.json").read_text())
    d, g = data["rows"]
    assert d["gen_rougeL"] == 1.0 and d["gen_prefix"] == 1.0 and 0 <= g["gen_rougeL"] <= 1
    assert g["gen_items"] == 2 and "gen_ppl_delta_pct" in g and "ppl_delta_pct" in g
    assert all(len(x) == 2 for x in data["gen_per_text"]["griffin@0.5"].values())
    code, _, err = run_cli("eval", "--model", "tiny-llama", "--set", "nope", "--out", tmp_out / "x")
    assert code == 2 and "unknown set 'nope'" in err


def test_freegen_helpers():
    from tda.evaluate.freegen import common_prefix, prompt_of, repeated_ngrams

    assert repeated_ngrams([1, 2, 3, 4, 1, 2, 3, 4, 1]) == (2, 6)  # (1,2,3,4) and (2,3,4,1) seen before
    assert repeated_ngrams([1, 2, 3]) == (0, 0)
    assert common_prefix([1, 2, 3, 9], [1, 2, 3, 4]) == 3 and prompt_of("a b c d e") == "a b"
