"""Recall of prompt masks on decode tokens: metric maths on hand-made tensors, decode capture, study."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from tda.activations.decode import generate_with_capture, recording
from tda.common.errors import BadInput
from tda.evaluate.recall import (
    RECALL_METHODS,
    aggregate,
    curve,
    mask_metrics,
    oracle_mask,
    output_mass,
    parse_densities,
    parse_scales,
    recall_rows,
    recall_study,
    summary_at,
    top_active,
    tt_active,
)


# ----- metric maths ------------------------------------------------------------------------------
def test_mask_metrics_by_hand():
    mask = torch.tensor([[True, True, False, False], [False, False, False, False]])
    active = torch.tensor([
        [[True, False, True, False], [True, True, False, False]],
        [[False] * 4, [False] * 4],
    ])
    mass = torch.tensor([
        [[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]],
        [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]],
    ])
    m = mask_metrics(mask, active, mass)
    # layer 0: hits 1 + 2 = 3 of 4 active; mass (1+2)+(4+3) = 10 of 20; precision 3 / (2 kept · 2 steps)
    assert float(m["recall"][0]) == pytest.approx(0.75)
    assert float(m["mass_recall"][0]) == pytest.approx(0.5)
    assert float(m["precision"][0]) == pytest.approx(0.75)
    assert float(m["density"][0]) == pytest.approx(0.5)
    # layer 1: nothing active and an empty mask → recall/precision undefined, mass recall 0
    assert math.isnan(float(m["recall"][1])) and math.isnan(float(m["precision"][1]))
    assert float(m["mass_recall"][1]) == 0.0 and float(m["density"][1]) == 0.0
    with pytest.raises(BadInput):
        mask_metrics(mask[:, :3], active, mass)


def test_truths_by_hand():
    acts = torch.tensor([[[0.1, -2.0, 0.5, 1.0]]])  # [layer 1, step 1, neuron 4]
    norms = torch.tensor([[10.0, 1.0, 1.0, 0.1]])  # output norms 1, 2, 0.5, 0.1
    assert output_mass(acts, norms)[0, 0].tolist() == pytest.approx([1.0, 2.0, 0.5, 0.1])
    assert tt_active(acts, norms, [0.9]).tolist() == [[[True, True, False, False]]]
    assert top_active(acts, norms, 0.25).tolist() == [[[False, True, False, False]]]
    assert top_active(acts, norms, 0.75).tolist() == [[[True, True, True, False]]]
    with pytest.raises(BadInput, match="top-p"):
        top_active(acts, norms, 0.0)


def test_oracle_mask_is_top_mean_output_norm():
    acts = torch.tensor([[[1.0, 0.0, 3.0, 0.1], [1.0, 0.0, -3.0, 0.2]]])
    assert oracle_mask(acts, torch.ones(1, 4), 0.5).tolist() == [[True, False, True, False]]


def _planted(n_layers=2, d_ff=20, tokens=5, steps=4, hot=(0, 1, 2, 3)):
    """Neurons ``hot`` have |a| = 1 on every prefill and decode token; the rest 0.01 (or 0)."""
    g = torch.Generator().manual_seed(0)
    pre = torch.full((n_layers, tokens, d_ff), 0.01) * torch.rand(n_layers, tokens, d_ff, generator=g)
    dec = torch.full((n_layers, steps, d_ff), 0.01) * torch.rand(n_layers, steps, d_ff, generator=g)
    pre[:, :, list(hot)] = 1.0
    dec[:, :, list(hot)] = -1.0
    return pre, dec


def test_planted_neurons_are_recalled_by_prompt_masks():
    pre, dec = _planted()
    norms = torch.ones(2, 20)
    rows = recall_rows(pre, dec, down_norms=norms, thresholds=[0.5, 0.5], static_scores=torch.rand(2, 20),
                       densities=[0.2, 0.5], scales=[1e-4, 1.0, 10.0], top_p=0.2)
    get = {(r["truth"], r["method"], r["value"], r["layer"]): r for r in rows}
    tda1 = get[("tt", "tda", 1.0, 0)]
    assert tda1["recall"] == 1.0 and tda1["precision"] == 1.0 and tda1["density"] == pytest.approx(0.2)
    assert get[("tt", "griffin", 0.2, 1)]["recall"] == 1.0
    assert get[("tt", "tda_matched", 0.2, 1)]["recall"] == 1.0
    assert get[("top", "oracle", 0.2, 0)]["recall"] == 1.0
    assert get[("tt", "tda", 1e-4, 0)]["density"] == 1.0 and get[("tt", "tda", 1e-4, 0)]["mass_recall"] == pytest.approx(1.0)
    assert get[("tt", "tda", 10.0, 0)]["recall"] == 0.0 and get[("tt", "tda", 10.0, 0)]["density"] == 0.0
    # one row per truth × (scales + other methods × densities) × layer
    assert len(rows) == 2 * (3 + (len(RECALL_METHODS) - 1) * 2) * 2
    s = {(x["truth"], x["method"]): x for x in summary_at(rows, density=0.5)}
    assert s[("tt", "griffin")]["value"] == 0.5 and s[("tt", "tda")]["value"] == 1.0
    c = curve(rows, truth="tt", metric="recall")
    assert c["griffin"]["value"] == [0.2, 0.5] and c["tda"]["param"] == "scale"
    agg = aggregate(rows + rows, by=("truth", "method", "value"))
    assert all(r["n"] == 4 for r in agg)


def test_parse_sweeps():
    assert parse_densities("0.1:0.9:0.1") == pytest.approx([0.1 * i for i in range(1, 10)])
    assert parse_densities("0.5, 0.25") == [0.25, 0.5]
    assert parse_densities([1.0]) == [1.0]
    assert parse_scales("0.5:2:0.5") == [0.5, 1.0, 1.5, 2.0]
    for bad in ("0:0.5:0.1", "0.5,1.5", "abc", "0.5:0.1:0.1", ""):
        with pytest.raises(BadInput):
            parse_densities(bad)
    with pytest.raises(BadInput, match="positive"):
        parse_scales("0,1")


# ----- decode capture ----------------------------------------------------------------------------
def _full_forward(lm, ids):
    from tda.activations.capture import _forward

    x = torch.tensor([ids])
    return _forward(lm, x, torch.ones_like(x), list(range(lm.ffn.n_layers)), "hooks")


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gemma3", "tiny-opt", "tiny-gpt2"])
def test_decode_capture_matches_generate_and_full_forward(load_tiny, spec):
    lm = load_tiny(spec)
    dc = generate_with_capture(lm, "the cat sat on the mat", 6)
    ref = lm.model.generate(torch.tensor([dc.prompt_ids]), do_sample=False, max_new_tokens=6, min_new_tokens=6)
    P = len(dc.prompt_ids)
    assert ref[0, P:].tolist() == dc.token_ids
    assert dc.decode_acts.shape == (3, 6, 128) and dc.n_steps == 6
    full = _full_forward(lm, dc.prompt_ids + dc.token_ids)  # no cache: every position at once
    start = 1 if dc.meta["bos_excluded"] else 0
    assert dc.prefill_acts.shape == (3, P - start, 128)
    for L in range(3):
        torch.testing.assert_close(dc.decode_acts[L], full[L][0, P:P + 6].float(), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(dc.prefill_acts[L], full[L][0, start:P].float(), atol=1e-5, rtol=1e-4)
    assert all(len(m._forward_pre_hooks) == 0 for m in (lm.ffn.out_module(L) for L in range(3)))


def test_hooks_record_only_in_the_calling_context(tiny_llama):
    lm = tiny_llama
    x = torch.tensor([[1, 5, 6, 7]])
    with recording(lm, [0, 2]) as store:
        t = threading.Thread(target=lambda: lm.model(input_ids=x))  # a concurrent user of the model
        t.start()
        t.join()
        assert store == {0: [], 2: []}
        lm.model(input_ids=x)
        assert [a.shape for a in store[0]] == [(4, 128)]
    lm.model(input_ids=x)  # after the block: nothing recorded, no hooks left
    assert len(store[0]) == 1
    assert len(lm.ffn.out_module(0)._forward_pre_hooks) == 0


@pytest.mark.parametrize("bad", [0, -3, 1.5, True])
def test_new_tokens_must_be_positive(tiny_llama, bad):
    with pytest.raises(BadInput, match="new tokens"):
        generate_with_capture(tiny_llama, "hello", bad)


def test_empty_prompt_and_too_long(tiny_llama):
    with pytest.raises(BadInput, match="empty"):
        generate_with_capture(tiny_llama, "  ", 4)
    with pytest.raises(BadInput, match="exceed the context"):
        generate_with_capture(tiny_llama, "hello", 600)


# ----- the study and figures ---------------------------------------------------------------------
def test_recall_study_on_tiny_model(tiny_llama, tmp_path, monkeypatch):
    from tda.masks.calibrate import calibrate

    cal = calibrate(tiny_llama, ["one two three four five", "the dog barked at the mailman"], 0.2)
    rows = recall_study(tiny_llama, "the cat sat on the mat", cal, new_tokens=5, densities=[0.25, 0.5])
    assert {r["method"] for r in rows} == set(RECALL_METHODS)
    assert {r["steps"] for r in rows} == {5}
    for r in rows:
        assert 0.0 <= r["density"] <= 1.0
        assert 0.0 <= r["mass_recall"] <= 1.0 + 1e-9
    # the random mask at density d recalls about d of the active neurons on average
    rnd = [r["recall"] for r in rows if r["method"] == "random" and r["value"] == 0.5]
    assert 0.3 < sum(rnd) / len(rnd) < 0.7
    # full-density masks recall everything
    full = recall_study(tiny_llama, "the cat sat on the mat", cal, new_tokens=2, densities=[1.0],
                        methods=["griffin", "static"])
    assert all(r["recall"] == pytest.approx(1.0) and r["mass_recall"] == pytest.approx(1.0) for r in full)
    from tda.masks.calibrate import Calibration

    other = Calibration(**{**cal.__dict__, "model_id": "another", "d_ff": 4096})
    with pytest.raises(BadInput, match="thresholds are for model 'another'"):
        recall_study(tiny_llama, "hi there", other, new_tokens=2)


def test_figures_are_built_from_rows():
    from tda.evaluate.recall_plots import (
        calibration_figure,
        recall_by_layer_figure,
        recall_vs_density_figure,
        recall_vs_threshold_figure,
    )

    pre, dec = _planted()
    rows = recall_rows(pre, dec, down_norms=torch.ones(2, 20), thresholds=[0.5, 0.5],
                       static_scores=torch.rand(2, 20), densities=[0.2, 0.5], scales=[0.5, 1.0, 2.0])
    fig = recall_vs_density_figure(rows)
    names = [t.name for t in fig.data]
    assert set(RECALL_METHODS) <= set(names)
    tda_trace = fig.data[names.index("tda")]
    assert list(tda_trace.y) == pytest.approx([1.0, 1.0, 1.0])  # planted neurons: recalled at every scale
    fig2 = recall_vs_threshold_figure(rows)
    assert list(fig2.data[0].x) == [0.5, 1.0, 2.0] and fig2.layout.xaxis.type == "log"
    fig3 = recall_by_layer_figure(rows, metric="mass_recall")
    assert len(fig3.data) == len(RECALL_METHODS) and list(fig3.data[0].x) == [0, 1]
    fig4 = calibration_figure([0.1, 0.2], [0.3, 0.4])
    assert list(fig4.data[0].y) == [0.1, 0.2]


@pytest.mark.slow
def test_gemma_prompt_masks_beat_random(gemma):
    """Real model, one passage, 8 decode steps: griffin/tda_matched recall more than a random mask."""
    from tda.common.data import load_texts
    from tda.masks.calibrate import load_or_calibrate

    cal = load_or_calibrate(gemma)
    rows = recall_study(gemma, load_texts(limit=1)[0], cal, new_tokens=8, densities=[0.5],
                        methods=["griffin", "tda_matched", "random"])
    s = {x["method"]: x for x in summary_at(rows) if x["truth"] == "tt"}
    assert s["griffin"]["recall"] > s["random"]["recall"] + 0.05
    assert s["tda_matched"]["recall"] > s["random"]["recall"] + 0.05
