"""Speculative greedy decoding with a draft-vocabulary lm_head (tda.engine.speculate): the tokens
are the dense greedy tokens whatever the draft vocabulary holds (a vocabulary that misses most
tokens, one that holds them all, every k), the draft head's rows are the full head's bit for bit,
cache positions of wrong drafts are dropped, and bad arguments get one-line errors."""

from __future__ import annotations

import pytest
import torch

from tda.common.errors import BadInput
from tda.engine import quant_kernels
from tda.engine.speculate import draft_vocabulary, generate_speculative

gguf = pytest.importorskip("gguf")
_ops = quant_kernels.quant_ops()
needs_vnni = pytest.mark.skipif(_ops is None or not hasattr(_ops, "vnni_gemv_rows") or not _ops.vnni_gemv_ready(),
                                reason="no AVX512-VNNI decode on this CPU or build")
PROMPTS = ["the quick brown fox", "Almost one million people visited the city", "a b c"]


def test_draft_vocabulary_is_sorted_unique_and_whole_tiles():
    v = draft_vocabulary(100, texts_ids=[[5, 90, 90, 200]], extra=[77, -1], first=10)
    assert v.tolist() == sorted(set(v.tolist())) and v.numel() % 16 == 0
    assert {0, 9, 5, 90, 77} <= set(v.tolist()) and 200 not in v.tolist() and -1 not in v.tolist()
    assert draft_vocabulary(32, first=100).tolist() == list(range(32))
    with pytest.raises(BadInput):
        draft_vocabulary(8)


@pytest.fixture(scope="module")
def tiny_tiles(tmp_path_factory):
    from tda.models.load import load_model
    from tests.gguf_writer import write_tiny_llama_gguf

    mp = pytest.MonkeyPatch()
    mp.setattr(quant_kernels, "TILE_GEMV_MAX_WEIGHTS", 512 * 64 - 1)
    mp.setenv("TDA_HEAD_TILES", "1")
    path = write_tiny_llama_gguf(load_model("tiny-llama", dtype="fp32"), tmp_path_factory.mktemp("spec") / "t.gguf",
                                 "Q8_0")
    lm = load_model(str(path))
    lm.test_gguf_path = str(path)  # for the CLI test
    yield lm
    mp.undo()


@needs_vnni
def test_take_gives_the_full_heads_rows_bit_for_bit(tiny_tiles):
    tw = tiny_tiles.model.get_output_embeddings().tile_weight
    idx = torch.tensor([3, 0, 17, 511, 256, 255, 8, 9, 100, 101, 102, 103, 104, 105, 106, 5])
    sub = tw.take(idx)
    x = torch.randn(tw.shape[1])
    blocks = torch.empty(0, tw.shape[1] // 32 * 34, dtype=torch.uint8)
    full = _ops.vnni_gemv(x, tw.packed, tw.st, None, blocks, "Q8_0", None)
    part = _ops.vnni_gemv(x, sub.packed, sub.st, None, blocks, "Q8_0", None)
    assert torch.equal(part, full[idx])
    with pytest.raises(ValueError, match="multiple of 16"):
        tw.take(idx[:5])


@needs_vnni
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_speculative_tokens_are_the_dense_greedy_tokens(tiny_tiles, k):
    from tda.engine.generate import generate

    lm = tiny_tiles
    n = lm.model.get_output_embeddings().out_features
    few = torch.arange(16)  # misses nearly every token: every cycle corrects and drops positions
    for prompt in PROMPTS:
        dense = generate(lm, prompt, max_new_tokens=12).token_ids[0]
        for vocab in (few, torch.arange(n), None):
            out = generate_speculative(lm, prompt, max_new_tokens=12, k=k, vocab=vocab)
            assert out.token_ids[0] == dense, (prompt, k, None if vocab is None else vocab.numel())
            st = out.params["speculative"]
            assert st["accepted"] <= st["drafted"] and st["cycles"] >= 1
        assert generate_speculative(lm, prompt, max_new_tokens=12, k=k, vocab=torch.arange(n)).params[
            "speculative"]["acceptance"] == 1.0


@needs_vnni
def test_bad_arguments(tiny_tiles):
    with pytest.raises(BadInput, match="k"):
        generate_speculative(tiny_tiles, "a", k=5)
    with pytest.raises(BadInput, match="max-new-tokens"):
        generate_speculative(tiny_tiles, "a", max_new_tokens=0)
    with pytest.raises(BadInput, match="prompt"):
        generate_speculative(tiny_tiles, "")


def test_a_model_without_a_tiled_head_is_refused():
    from tda.models.load import load_model

    with pytest.raises(BadInput, match="gguf"):
        generate_speculative(load_model("tiny-llama", dtype="fp32"), "a")


@needs_vnni
@pytest.mark.parametrize("method", ["tt", "griffin", "teal", "cats"])
def test_a_sparse_method_under_speculation_gives_its_own_greedy_tokens(tiny_tiles, method):
    from tda.engine.generate import generate

    lm = tiny_tiles
    for prompt in PROMPTS[:2]:
        want = generate(lm, prompt, method, density=0.5, max_new_tokens=10).token_ids[0]
        for vocab in (torch.arange(16), None):
            got = generate_speculative(lm, prompt, method, density=0.5, max_new_tokens=10, k=3, vocab=vocab)
            assert got.token_ids[0] == want, (method, prompt)
            assert got.method == method and got.params["read_fraction"]["ffn"] > 0


@needs_vnni
def test_the_lm_head_option_is_refused(tiny_tiles):
    with pytest.raises(BadInput, match="lm_head option"):
        generate_speculative(tiny_tiles, "a", "tt+head0.7", density=0.5)


@needs_vnni
def test_generate_cli_speculate_prints_the_same_tokens(run_cli, tmp_out, tiny_tiles, monkeypatch):
    """``tda generate --speculate K`` on a GGUF file: the tokens of plain ``tda generate``."""
    import json

    path = tiny_tiles.test_gguf_path
    monkeypatch.setattr(quant_kernels, "TILE_GEMV_MAX_WEIGHTS", 512 * 64 - 1)
    monkeypatch.setenv("TDA_HEAD_TILES", "1")
    outs = []
    for extra in ([], ["--speculate", "3"]):
        j = tmp_out / f"g{len(outs)}.json"
        code, _, err = run_cli("generate", "-m", path, "-p", "the quick brown fox", "-n", "8", "--json", j, *extra)
        assert code == 0, err
        outs.append(json.loads(j.read_text())["token_ids"])
        if extra:
            assert "full-head passes" in err
    assert outs[0] == outs[1]


@needs_vnni
@pytest.mark.slow
def test_gemma_gguf_speculative_tokens_are_its_dense_tokens():
    """The embedded model in the gguf format (its head on integer tiles where the CPU takes them):
    the draft vocabulary misses some tokens of these prompts, and every token is the dense one."""
    from tda.engine.generate import generate
    from tda.models.load import load_model

    lm = load_model("gemma-3-270m", dtype="gguf")
    if lm.model.get_output_embeddings().tile_weight is None:
        pytest.skip("the lm_head is on its blocks on this CPU (TDA_HEAD_TILES=1 puts it on tiles)")
    drafted = accepted = 0
    for prompt in ["Almost one million people visited the city last year, and the",
                   "The history of the city begins in the early middle ages, when"]:
        dense = generate(lm, prompt, max_new_tokens=24).token_ids[0]
        out = generate_speculative(lm, prompt, max_new_tokens=24, k=4)
        assert out.token_ids[0] == dense
        drafted += out.params["speculative"]["drafted"]
        accepted += out.params["speculative"]["accepted"]
    assert 0 < accepted < drafted  # both paths taken: confirmed drafts and corrected ones
    # past the sliding window (512 positions): the cache records the window's past to drop positions
    from tda.common.data import load_texts

    long = " ".join(load_texts(limit=12))
    n = len(lm.tokenizer(long)["input_ids"])
    assert n + 16 > lm.model.config.sliding_window
    dense = generate(lm, long, max_new_tokens=16).token_ids[0]
    out = generate_speculative(lm, long, max_new_tokens=16, k=4, vocab=torch.arange(4096))  # many corrections
    assert out.token_ids[0] == dense and out.params["speculative"]["accepted"] < out.params["speculative"]["drafted"]


def test_split_speculate():
    from tda.engine.speculate import split_speculate

    assert split_speculate("tt+spec4") == ("tt", 4) and split_speculate("dense+spec") == ("dense", 4)
    assert split_speculate("griffin") == ("griffin", None)
    for bad in ("+spec4", "tt+specx"):
        with pytest.raises(BadInput, match="METHOD\\+specK"):
            split_speculate(bad)


@needs_vnni
def test_bench_times_speculative_variants_beside_dense(tiny_tiles):
    """``tda bench --methods dense,dense+spec2,tt+spec2``: paired with dense like every variant, the
    engine's read fractions (fewer lm_head rows) give its ceiling; a model without a tiled head is
    refused before any timing."""
    from tda.evaluate.bench import run_bench
    from tda.models.load import load_model

    res = run_bench(tiny_tiles, methods=["dense", "dense+spec2", "tt+spec2"], density=0.5, prompt_tokens=8,
                    new_tokens=6, rounds=1, bandwidth_mb=0)
    row = res["results"]["dense+spec2"]
    # tiny-llama's 512 ids all lie in the draft vocabulary: every step reads the whole head as its draft,
    # and each verification reads it once more (the engine's account, not a saving)
    assert row["decode_speedup_vs_dense"] > 0 and row["read_fraction"]["lm_head"] > 1.0
    assert row["ceiling_speedup"] < 1.0
    assert 0 < res["results"]["tt+spec2"]["density"] < 1
    with pytest.raises(BadInput, match="gguf"):
        run_bench(load_model("tiny-llama", dtype="fp32"), methods=["dense", "dense+spec2"], prompt_tokens=8,
                  new_tokens=4, rounds=1, bandwidth_mb=0)


def test_adaptive_depth():
    from tda.engine.speculate import adaptive_depth

    assert adaptive_depth(2, 2, 2, 4) == 3 and adaptive_depth(4, 4, 4, 4) == 4  # all confirmed: one more, up to k
    assert adaptive_depth(4, 0, 4, 4) == 1 and adaptive_depth(4, 2, 4, 4) == 3  # a miss: one more than confirmed
    assert adaptive_depth(3, 1, 1, 4) == 4  # a cycle cut short by the end or a stop token counts as confirmed


@needs_vnni
def test_a_vocabulary_that_misses_the_greedy_tokens_drafts_few_steps(tiny_tiles):
    from tda.engine.generate import generate

    lm = tiny_tiles
    dense = generate(lm, PROMPTS[0], max_new_tokens=12).token_ids[0]
    vocab = torch.tensor([t for t in range(512) if t not in dense][:16])  # none of the greedy tokens
    out = generate_speculative(lm, PROMPTS[0], max_new_tokens=12, k=4, vocab=vocab)
    st = out.params["speculative"]
    # without adapting, every miss would cost 4 drafted steps (about 44 here); a token it has missed
    # before is drafted right from its tile of misses
    assert out.token_ids[0] == dense and st["accepted"] < st["drafted"] <= len(dense) + 6


@needs_vnni
def test_the_generate_page_pairs_dense_with_a_speculative_method(tiny_tiles):
    """The app's Generate view (app/views/generate.py): with ``speculate`` the sparse side is the
    method's own greedy tokens under the speculative head, its counts kept for the page; a model
    without a tiled head does not offer it."""
    from app.views import generate as views
    from tda.engine.generate import generate
    from tda.models.load import load_model

    assert views.speculative_available(tiny_tiles)
    assert not views.speculative_available(load_model("tiny-llama", dtype="fp32"))
    pair = views.generate_pair(tiny_tiles, PROMPTS[0], "tt", density=0.5, cett=0.2, max_new_tokens=8, repeats=1,
                               warmup=False, speculate=2)
    want = generate(tiny_tiles, PROMPTS[0], "tt", density=0.5, max_new_tokens=8).token_ids[0]
    assert pair["sparse"]["token_ids"] == want and pair["sparse"]["speculative"]["cycles"] >= 1
    assert "speculative" not in pair["dense"]


@needs_vnni
def test_the_frontier_times_a_speculative_variant_with_its_base_methods_quality(tiny_tiles):
    """``tda frontier --methods dense,tt,tt+spec2``: the speculative row's quality is tt's (scored once,
    the same tokens and logits), its paired difference from dense is tt's, and its speed its own."""
    from tda.evaluate.frontier import run_frontier

    texts = ["the quick brown fox jumps over the lazy dog " * 3, "one two three four five six seven eight nine"]
    res = run_frontier(tiny_tiles, ["dense", "tt", "tt+spec2"], [0.5], rounds=1, prompt_tokens=8, new_tokens=6,
                       heldout=texts, mc_limit=0, bandwidth_mb=0, boot_iters=50)
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == {"dense", "tt", "tt+spec2"}
    assert rows["tt+spec2"]["ppl"] == rows["tt"]["ppl"] and rows["tt+spec2"]["decode_speedup"] > 0
    assert rows["tt+spec2"]["ppl_delta_pct"] == rows["tt"]["ppl_delta_pct"]
    assert {r["method"] for r in res["quality"]["rows"]} == {"dense", "tt"}  # scored once
