"""Ceiling arithmetic and the benchmark loop on a tiny model (numbers are noise; structure is not)."""

from __future__ import annotations

import pytest

from tda.evaluate.bench import format_table, run_bench
from tda.evaluate.ceiling import ceiling, fraction_of_gain, kv_bytes, weight_bytes


def test_weight_bytes_partition(tiny_llama):
    lm = tiny_llama
    w = weight_bytes(lm)
    ffn = lm.ffn
    expect_ffn = ffn.n_layers * 3 * ffn.d_model * ffn.d_ff * 4
    assert w["ffn"] == expect_ffn
    head = lm.model.get_output_embeddings().weight
    assert w["lm_head"] == head.numel() * 4
    total = sum(p.numel() * 4 for n, p in lm.model.named_parameters() if p.dim() == 2 and "embed" not in n)
    assert w["ffn"] + w["lm_head"] + w["other"] == total + (0 if "lm_head.weight" in dict(
        lm.model.named_parameters()) else head.numel() * 4)


def test_ceiling_math(tiny_llama):
    c = ceiling(tiny_llama, 0.5, 16, 8)
    w = c["weight_bytes"]
    assert c["dense_bytes_per_step"] - c["sliced_bytes_per_step"] == pytest.approx(0.5 * w["ffn"])
    weights_only = 1.0 / (1 - 0.5 * w["ffn"] / (w["ffn"] + w["lm_head"] + w["other"])) + 1e-9
    assert c["ceiling_speedup"] > 1.0 and c["ceiling_speedup"] < weights_only
    assert ceiling(tiny_llama, 0.5, 16, 8, method="tt")["ceiling_speedup"] == pytest.approx(1.0)
    assert kv_bytes(tiny_llama, 20) == 2 * kv_bytes(tiny_llama, 10)
    assert fraction_of_gain(1.1, 1.2) == pytest.approx(0.5)
    assert fraction_of_gain(1.0, 1.0) != fraction_of_gain(1.0, 1.0)  # nan
    assert fraction_of_gain(1.063, 1.003) != fraction_of_gain(1.063, 1.003)  # within 1% of dense: nan, not 2100%


def test_kv_sliding_window(load_tiny):
    lm = load_tiny("tiny-gemma3")
    cfg = lm.model.config
    if not getattr(cfg, "sliding_window", None):
        pytest.skip("no sliding window in this config")
    big = cfg.sliding_window * 4
    assert kv_bytes(lm, big) < big / 10 * kv_bytes(lm, 10)


def test_run_bench_structure(tiny_llama):
    res = run_bench(tiny_llama, methods=("stock", "dense", "griffin", "tda"), prompt_tokens=12, new_tokens=3, rounds=2)
    r = res["results"]
    assert set(r) == {"stock", "dense", "griffin", "tda"}
    assert r["dense"]["decode_speedup_vs_dense"] == pytest.approx(1.0)
    assert len(r["griffin"]["decode_ms_per_token_all"]) == 2
    assert r["griffin"]["density"] == pytest.approx(0.5, abs=0.01)
    assert "decode_speedup_vs_stock" in r["dense"] and r["griffin"]["ceiling_speedup"] > 1
    assert res["machine"]["cpu_count"] >= 1
    assert "| griffin |" in format_table(res)


def test_bench_cli_json(run_cli, tmp_out):
    import json

    path = tmp_out / "b.json"
    code, out, err = run_cli("bench", "--model", "tiny-llama", "--methods", "dense,tt", "--prompt-tokens", "8",
                             "--new-tokens", "2", "--rounds", "2", "--target-ci", "0.5", "--max-rounds", "3",
                             "--out", path)
    assert code == 0, err
    data = json.loads(path.read_text())
    assert set(data["results"]) == {"dense", "tt"} and "ceiling" in data
    tt = data["results"]["tt"]
    assert tt["speedup_lo"] <= tt["decode_speedup_vs_dense"] <= tt["speedup_hi"]
    assert 2 <= data["rounds_run"] <= 3 and data["target_ci"] == 0.5 and "remeasured" in data
    assert "| tt |" in out
    code, _, err = run_cli("bench", "--model", "tiny-llama", "--rounds", "3", "--max-rounds", "2")
    assert code == 2 and "--max-rounds" in err


def test_ceiling_from_read_fraction_by_hand(tiny_llama):
    from tda.evaluate.ceiling import ceiling_from_read, default_read_fraction, read_fraction_of

    w = weight_bytes(tiny_llama)
    kv = sum(kv_bytes(tiny_llama, c) for c in range(16, 16 + 7)) / 7
    rf = {"ffn": 0.25, "other": 0.5, "lm_head": 0.8}
    c = ceiling_from_read(tiny_llama, rf, 16, 8)
    expect = 0.25 * w["ffn"] + 0.5 * w["other"] + 0.8 * w["lm_head"] + kv
    assert c["bytes_per_step"] == pytest.approx(expect)
    assert c["ceiling_speedup"] == pytest.approx((w["ffn"] + w["other"] + w["lm_head"] + kv) / expect)
    # the old sliced ceiling is the special case {"ffn": d}
    assert ceiling_from_read(tiny_llama, {"ffn": 0.5}, 16, 8)["ceiling_speedup"] == pytest.approx(
        ceiling(tiny_llama, 0.5, 16, 8)["ceiling_speedup"])
    # fallbacks when the engine reports no read fractions
    assert default_read_fraction("griffin", 0.3) == {"ffn": 0.3, "other": 1.0, "lm_head": 1.0}
    assert default_read_fraction("griffin+tt", 0.3)["ffn"] == 0.3
    assert default_read_fraction("tt", 0.3)["ffn"] == 1.0
    assert default_read_fraction("dense", None) == {"ffn": 1.0, "other": 1.0, "lm_head": 1.0}
    assert read_fraction_of("tt", 0.3, {"read_fraction": {"ffn": 0.4, "lm_head": 0.5}}) == \
        {"ffn": 0.4, "other": 1.0, "lm_head": 0.5}
    assert read_fraction_of("griffin", 0.3, {}) == default_read_fraction("griffin", 0.3)


def test_bandwidth_small_buffer():
    import math

    from tda.evaluate.bandwidth import (
        measure_bandwidth,
        roofline_ms,
        roofline_pct,
        stream_read_gbps,
    )

    bw = measure_bandwidth(8, repeats=3)
    assert math.isfinite(bw["gbps"]) and bw["gbps"] > 0 and bw["median_gbps"] <= bw["gbps"]
    assert len(bw["all_gbps"]) == 3 and bw["threads"] >= 1
    assert stream_read_gbps(4, repeats=2, threads=1) > 0
    assert roofline_ms(1.074e9, 19.8) == pytest.approx(54.24, abs=0.01)
    assert roofline_pct(54.0, 90.0) == pytest.approx(60.0)


def test_run_bench_densities(tiny_llama):
    res = run_bench(tiny_llama, methods=("dense", "tt", "griffin"), densities=[0.25, 0.5], prompt_tokens=10,
                    new_tokens=3, rounds=1, bandwidth_mb=8)
    r = res["results"]
    assert list(r) == ["dense", "tt@0.25", "tt@0.5", "griffin@0.25", "griffin@0.5"]
    g = r["griffin@0.25"]
    assert g["method"] == "griffin" and g["density_target"] == 0.25 and g["density"] == pytest.approx(0.25, abs=0.02)
    assert 0 < g["read_fraction"]["ffn"] <= g["density"] + 0.05  # engine-reported or the sliced fallback
    assert g["bytes_per_step"] < r["dense"]["bytes_per_step"] and g["ceiling_speedup"] > r["griffin@0.5"]["ceiling_speedup"]
    assert r["tt@0.5"]["ceiling_speedup"] >= 1.0 and r["dense"]["read_fraction"] == {"ffn": 1, "other": 1, "lm_head": 1}
    assert res["bandwidth"]["gbps"] > 0 and r["dense"]["roofline_ms"] > 0 and r["dense"]["roofline_pct"] > 0
    assert len(g["decode_speedup_rounds"]) == 1
    table = format_table(res)
    assert "| griffin@0.25 |" in table and "% of roofline" in table


def test_run_bench_bad_method(tiny_llama):
    from tda.common.errors import BadInput

    with pytest.raises(BadInput, match="unknown method 'nope'"):
        run_bench(tiny_llama, methods=("dense", "nope"), prompt_tokens=8, new_tokens=2, rounds=1)
    with pytest.raises(BadInput):
        run_bench(tiny_llama, methods=("dense", "griffin"), densities=[1.5], prompt_tokens=8, new_tokens=2, rounds=1)
