"""The memory budget (issue #11): long prompts run in chunks within it or are refused up front."""

from __future__ import annotations

import pytest
import torch

from tda.common import memory
from tda.common.errors import BadInput

TINY = ("tiny-llama", "tiny-gemma3", "tiny-gpt2", "tiny-opt", "tiny-qwen3", "tiny-mistral")
LONG = " ".join(["the quick brown fox jumps over a lazy dog while people visited the city"] * 22)  # 485 tokens


@pytest.fixture(autouse=True)
def _no_budget_leak(monkeypatch):
    monkeypatch.delenv(memory.ENV, raising=False)
    memory.set_budget_override(None)
    yield
    memory.set_budget_override(None)


@pytest.mark.parametrize("text, n", [("8G", 8 * 2**30), ("500M", 500 * 2**20), ("1.5GiB", int(1.5 * 2**30)),
                                     ("64k", 64 * 1024), ("123456", 123456), (" 2 gb ", 2 * 2**30)])
def test_parse_size(text, n):
    assert memory.parse_size(text) == n


@pytest.mark.parametrize("text", ["", "lots", "-1G", "0", "8X"])
def test_parse_size_rejects(text):
    with pytest.raises(BadInput):
        memory.parse_size(text)


def test_budget_sources(monkeypatch):
    b = memory.budget()
    assert b.bytes > 0 and "60%" in b.source
    monkeypatch.setenv(memory.ENV, "3G")
    assert memory.budget() == memory.Budget(3 * 2**30, "TDA_MAX_MEMORY=3G")
    memory.set_budget_override(2**20)  # --memory-budget wins over the environment
    assert memory.budget().bytes == 2**20 and "--memory-budget" in memory.budget().source
    with pytest.raises(BadInput, match="over the budget of 1.0 MB .*--memory-budget or TDA_MAX_MEMORY"):
        memory.check(2 * 2**20, "this job")


# ----- chunked capture is exact ------------------------------------------------------------------------
@pytest.mark.parametrize("spec", TINY)
def test_chunked_capture_equals_one_pass(load_tiny, spec):
    from tda.activations.capture import capture

    lm = load_tiny(spec)
    ref = capture(lm, LONG, chunk=10_000)
    for chunk in (7, 16, 64):
        for layers in (None, [0], [1]):
            got = capture(lm, LONG, layers=layers, chunk=chunk)
            want = ref.acts[[ref.layers.index(L) for L in got.layers]]
            assert torch.allclose(got.acts, want, atol=1e-5, rtol=0), (spec, chunk, layers)
    iso, iso_small = (capture(lm, LONG[:200], mode="isolated", chunk=c) for c in (10_000, 3))
    assert torch.allclose(iso.acts, iso_small.acts, atol=1e-5, rtol=0)


def test_plan_picks_a_chunk_that_fits(tiny_llama):
    from tda.activations.budget import capture_plan
    from tda.activations.capture import capture, tokenize

    n = len(tokenize(tiny_llama, LONG))
    one_pass = capture_plan(tiny_llama, n, n - 1, [0, 1, 2])
    assert one_pass.chunk == n  # no budget pressure: one forward
    memory.set_budget_override(one_pass.need // 2)  # too small for one pass over the prompt
    plan = capture_plan(tiny_llama, n, n - 1, [0, 1, 2])
    assert plan.chunk < n and plan.need <= one_pass.need // 2
    got = capture(tiny_llama, LONG)  # accepted within the budget, in chunks, and exact
    memory.set_budget_override(None)
    assert torch.allclose(got.acts, capture(tiny_llama, LONG).acts, atol=1e-5, rtol=0)


def test_gemma_long_prompt_estimates():
    """On the real shape: one pass over 32k tokens needs tens of GB; chunks need about 2 GB."""
    from tda.activations.budget import forward_bytes
    from tda.models.specs import shape_of

    shape = shape_of("gemma-3-270m")
    if shape is None:
        pytest.skip("the embedded model is not cached here")
    full = forward_bytes(shape, q=32_000, kv=32_000, layers_run=10, width=4)
    chunked = forward_bytes(shape, q=512, kv=32_000, layers_run=10, width=4)
    assert full > 30 * 2**30 and chunked < 2**30


# ----- refused up front through the CLI: one line, exit 2, nothing written -------------------------------
def _one_line(err):
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_capture_refused_over_budget(run_cli, tmp_path, monkeypatch):
    f = tmp_path / "long.txt"
    f.write_text(LONG)
    out = tmp_path / "out"
    code, _, err = run_cli("--memory-budget", "200K", "capture", "-m", "tiny-llama", "--prompt-file", f,
                           "--out", out / "c.st")
    assert code == 2 and _one_line(err)
    assert "over the budget of 200.0 KB (--memory-budget 200.0 KB)" in err and "TDA_MAX_MEMORY" in err
    assert list(out.iterdir()) == []
    monkeypatch.setenv(memory.ENV, "200K")  # the environment variable does the same
    code, _, err = run_cli("capture", "-m", "tiny-llama", "--prompt-file", f, "--out", out / "c.st")
    assert code == 2 and "TDA_MAX_MEMORY=200K" in err and list(out.iterdir()) == []


def test_capture_accepted_in_chunks_under_budget(run_cli, tmp_path, tiny_llama):
    from tda.activations.budget import capture_plan
    from tda.activations.capture import Capture, capture, tokenize

    n = len(tokenize(tiny_llama, LONG))
    budget = capture_plan(tiny_llama, n, n - 1, [0, 1, 2]).need // 2
    code, _, err = run_cli("--memory-budget", str(budget), "capture", "-m", "tiny-llama", "-p", LONG,
                           "--out", tmp_path / "c.st")
    assert code == 0, err
    assert torch.allclose(Capture.load(tmp_path / "c.st").acts, capture(tiny_llama, LONG).acts, atol=1e-5)


@pytest.mark.parametrize("args", [
    ["generate", "-m", "tiny-llama", "-p", LONG, "-n", "4"],
    ["recall", "-m", "tiny-llama", "-p", LONG, "--new-tokens", "4", "--out", "OUT"],
    ["eval", "-m", "tiny-llama", "--methods", "dense", "--densities", "0.5", "--limit", "1", "--out", "OUT"],
])
def test_generation_commands_refused_over_budget(run_cli, tmp_path, args):
    args = [str(tmp_path / "o") if a == "OUT" else a for a in args]
    code, _, err = run_cli("--memory-budget", "300K", *args)
    assert code == 2 and "memory" in err and "over the budget" in err and _one_line(err), err
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_library_refuses_too(tiny_llama):
    from tda.activations.decode import generate_with_capture
    from tda.engine.generate import generate

    memory.set_budget_override(300 * 1024)
    with pytest.raises(BadInput, match="over the budget"):
        generate(tiny_llama, LONG, max_new_tokens=4)
    with pytest.raises(BadInput, match="over the budget"):
        generate_with_capture(tiny_llama, LONG, 4)


# ----- refused before the model loads (issue #28: a refusal under --memory-budget 1G peaked at 2.0 GB) ----
@pytest.fixture
def no_model_load(monkeypatch, tmp_path):
    """Any model load (or conversion of the embedded model) fails the test; an empty cache folder."""
    from tda.models import embedded, load

    def boom(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setenv("TDA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(load, "load_model", boom)
    monkeypatch.setattr(embedded, "ensure_embedded_cache", boom)


@pytest.mark.parametrize("args", [
    ["generate", "-m", "tiny-llama", "-p", "hi"],
    ["capture", "-m", "tiny-llama", "-p", "hi", "--out", "OUT/c.st"],
    ["recall", "-m", "tiny-llama", "-p", "hi", "--out", "OUT"],
    ["generate", "-m", "tiny-gpt2+randinit3", "-p", "hi", "--dtype", "bf16"],
])
def test_refused_before_the_model_loads(run_cli, no_model_load, tmp_path, args):
    args = [a.replace("OUT", str(tmp_path / "o")) for a in args]
    code, _, err = run_cli("--memory-budget", "300K", *args)
    assert code == 2 and _one_line(err), err
    assert "needs at least" in err and "over the budget of 300.0 KB (--memory-budget 300.0 KB)" in err
    assert "TDA_MAX_MEMORY" in err and ("fp32 weights" in err or "bf16 weights" in err)
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


@pytest.mark.parametrize("dtype, budget, words", [
    ("auto", "1G", "generating 32 tokens with gemma-3-270m (fp32 weights: 1022.7 MB)"),  # the case
    ("fp32", "900M", "generating 32 tokens with gemma-3-270m (fp32 weights"),
    ("bf16", "500M", "bf16 weights: 511.4 MB"),
    ("gguf", "200M", "the GGUF's quantized blocks: 241.4 MB"),
])
def test_embedded_model_refused_before_converting_or_loading(run_cli, no_model_load, dtype, budget, words):
    """The embedded model's size is known before its first conversion (empty cache here)."""
    code, _, err = run_cli("--memory-budget", budget, "generate", "-p", "hi", "--dtype", dtype)
    assert code == 2 and _one_line(err), err
    assert words in err and f"(--memory-budget {memory.format_bytes(memory.parse_size(budget))})" in err, err


def test_embedded_model_estimate_needs_no_cache(no_model_load):
    from tda.activations.budget import check_before_load

    memory.set_budget_override(2 * 2**30)
    assert check_before_load("gemma-3-270m", "auto") == 268_098_176 * 4
    assert check_before_load("gemma-3-270m", "bf16", new_tokens=32) > 268_098_176 * 2


def test_embedded_shape_and_count_match_the_converted_model():
    from tda.models import embedded, specs

    if not embedded.cache_is_valid():
        pytest.skip("the embedded model is not cached here")
    assert specs.shape_from_config(specs.EMBEDDED_SHAPE_CONFIG) == specs.shape_of("gemma-3-270m")
    assert specs._safetensors_params(embedded.embedded_cache_path()) == embedded.N_PARAMS


@pytest.mark.parametrize("spec", TINY)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_estimates_before_loading_never_exceed_those_after(spec, dtype, monkeypatch):
    """What is refused before the load would be refused after it: the estimates are lower bounds."""
    from tda.activations import budget
    from tda.models.load import load_model

    lm = load_model(spec, dtype=dtype)
    memory.set_budget_override(2**40)
    weights = budget.check_before_load(spec, dtype)
    assert 0.9 * budget.weights_bytes(lm) <= weights <= budget.weights_bytes(lm)
    for n in (0, 1, 32):
        assert budget.check_before_load(spec, dtype, new_tokens=n) <= budget.generation_bytes(lm, 1, n)
        assert budget.check_before_load(spec, dtype, new_tokens=n, capture_all=True) <= \
            budget.generation_bytes(lm, 1, n, capture_layers=lm.ffn.n_layers)


def test_local_folder_and_gguf_file_estimates(tmp_path, tiny_llama):
    from tda.models import specs

    folder = tmp_path / "m"
    tiny_llama.model.save_pretrained(folder)
    exact = sum(p.numel() for p in tiny_llama.model.parameters())
    assert specs.weights_estimate(str(folder), "fp32") == (specs.shape_of("tiny-llama").n_params * 4, "fp32 weights")
    assert specs._safetensors_params(folder) == exact  # the headers, when the config cannot be read
    (folder / "config.json").write_text("{}")
    assert specs.weights_estimate(str(folder), "bf16") == (exact * 2, "bf16 weights")
    g = tmp_path / "x.gguf"
    g.write_bytes(b"\0" * 5000)
    assert specs.weights_estimate(str(g), "auto") == (5000, "the GGUF's quantized blocks")
    assert specs.weights_estimate(str(g), "fp32") is None  # not indexed yet: the check after the load stays
    assert specs.weights_estimate("owner/hub-name", "fp32") is None


def test_eval_refused_before_the_model_loads(run_cli, no_model_load, tmp_path):
    code, _, err = run_cli("--memory-budget", "1G", "eval", "--methods", "dense", "--densities", "0.5",
                           "--limit", "1", "--out", tmp_path / "o")
    assert code == 2 and _one_line(err), err
    assert "scoring texts with gemma-3-270m (fp32 weights: 1022.7 MB) needs at least" in err, err
    assert not (tmp_path / "o").exists()


def test_recall_refusal_names_recall(run_cli, no_model_load, tmp_path):
    code, _, err = run_cli("--memory-budget", "1G", "recall", "-p", "hi", "--out", tmp_path / "o")
    assert code == 2 and _one_line(err), err
    assert "recall (64 new tokens, every layer recorded) with gemma-3-270m (fp32 weights: 1022.7 MB)" in err, err
