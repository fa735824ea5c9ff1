"""Chunked prefill in generate (issue 17, point 3): a long prompt prefills through the KV cache in
chunks (capture's chunking and budget), giving the tokens and masks of a one-forward prefill, and is
accepted where a one-forward prefill would be over the memory budget."""

from __future__ import annotations

import pytest
import torch

from tda.common import memory
from tests.conftest import TINY
from tests.test_memory import _no_budget_leak  # noqa: F401  (autouse: no budget leaks between tests)

LONG = " ".join(["the quick brown fox jumps over a lazy dog while people visited the city"] * 8)




@pytest.fixture
def built(monkeypatch):
    """What each session built at the end of its prefill: masks (prompt methods), scale (tt)."""
    from tda.engine.session import SparseSession

    seen = []
    orig = SparseSession.finish_prefill

    def spy(self):
        orig(self)
        seen.append({"masks": [m.keep.clone() for m in self.masks],
                     "scale": getattr(self.impl, "scale", None)})

    monkeypatch.setattr(SparseSession, "finish_prefill", spy)
    return seen


@pytest.mark.parametrize("spec", TINY)
def test_chunked_prefill_gives_the_one_forward_tokens(load_tiny, spec):
    from tda.engine.generate import generate

    lm = load_tiny(spec)
    ref = generate(lm, LONG, max_new_tokens=6, min_new_tokens=6)
    assert ref.timings["prefill_chunk"] == ref.timings["prompt_tokens"]  # short enough: one forward
    for chunk in (7, 32):
        got = generate(lm, LONG, max_new_tokens=6, min_new_tokens=6, chunk=chunk)
        assert got.timings["prefill_chunk"] == chunk
        assert got.token_ids == ref.token_ids, (spec, chunk)


@pytest.mark.parametrize("method", ["griffin", "tda", "tt"])
def test_chunked_prefill_builds_the_same_masks(load_tiny, built, method):
    from tda.engine.generate import generate

    lm = load_tiny("tiny-llama")
    ref = generate(lm, LONG, method, density=0.5, max_new_tokens=4)
    got = generate(lm, LONG, method, density=0.5, max_new_tokens=4, chunk=16)
    a, b = built
    assert len(a["masks"]) == len(b["masks"])
    for x, y in zip(a["masks"], b["masks"]):
        assert torch.equal(x, y)
    if method == "tt":
        assert a["scale"] == pytest.approx(b["scale"], rel=1e-5)
    else:
        assert a["masks"] and 0.3 < float(a["masks"][0].float().mean()) < 0.7
    assert got.token_ids == ref.token_ids


def test_long_prompt_accepted_in_chunks_under_the_budget(tiny_llama, run_cli, tmp_path):
    from tda.activations.budget import check_generation, generation_bytes, prefill_plan
    from tda.common.errors import BadInput
    from tda.engine.generate import encode_batch, generate

    ids, _, _ = encode_batch(tiny_llama, [LONG], 4)
    n = ids.shape[1]
    one = generation_bytes(tiny_llama, n, 4)
    ref = generate(tiny_llama, LONG, max_new_tokens=4, min_new_tokens=4)
    budget = (one + generation_bytes(tiny_llama, n, 4, chunk=16)) // 2
    memory.set_budget_override(budget)  # too small for one forward over the prompt
    with pytest.raises(BadInput):
        check_generation(tiny_llama, n, 4)
    plan = prefill_plan(tiny_llama, n, 4)
    assert plan.chunk < n and plan.need <= budget
    got = generate(tiny_llama, LONG, max_new_tokens=4, min_new_tokens=4)
    assert got.timings["prefill_chunk"] == plan.chunk and got.token_ids == ref.token_ids
    memory.set_budget_override(None)
    f = tmp_path / "p.txt"
    f.write_text(LONG)
    code, out, err = run_cli("--memory-budget", str(budget), "generate", "-m", "tiny-llama",
                             "--prompt-file", f, "-n", "4")
    assert code == 0, err
    assert tiny_llama.tokenizer.decode(ref.token_ids[0], skip_special_tokens=True).strip()[:8] in out


def test_decode_capture_prefills_in_chunks_under_the_budget(tiny_llama):
    from tda.activations.budget import generation_bytes, prefill_plan
    from tda.activations.capture import tokenize
    from tda.activations.decode import generate_with_capture

    n, L = len(tokenize(tiny_llama, LONG)), tiny_llama.ffn.n_layers
    ref = generate_with_capture(tiny_llama, LONG, 4)
    one = generation_bytes(tiny_llama, n, 4, capture_layers=L)
    memory.set_budget_override((one + generation_bytes(tiny_llama, n, 4, capture_layers=L, chunk=16)) // 2)
    assert prefill_plan(tiny_llama, n, 4, capture_layers=L).chunk < n
    got = generate_with_capture(tiny_llama, LONG, 4)
    assert got.token_ids == ref.token_ids
    assert got.prefill_acts.shape == ref.prefill_acts.shape
    assert torch.allclose(got.prefill_acts, ref.prefill_acts, atol=1e-5)
    assert torch.allclose(got.decode_acts, ref.decode_acts, atol=1e-5)
