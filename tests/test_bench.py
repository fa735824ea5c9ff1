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
                             "--new-tokens", "2", "--rounds", "1", "--out", path)
    assert code == 0, err
    data = json.loads(path.read_text())
    assert set(data["results"]) == {"dense", "tt"} and "ceiling" in data
    assert "| tt |" in out
