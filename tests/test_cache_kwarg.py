"""Forward-compatible KV-cache use (issue 17, point 6): the cache goes in by the name the installed
transformers asks for, so chunked capture, decode capture and scoring raise no deprecation warning."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

from tests.conftest import TINY


@pytest.mark.parametrize("spec", TINY)
def test_cache_keyword_matches_the_forward_signature(load_tiny, spec):
    from tda.models.load import cache_kwarg

    lm = load_tiny(spec)
    name = cache_kwarg(lm.model)
    assert name in inspect.signature(type(lm.model).forward).parameters
    assert lm.cache_kw("C") == {name: "C"}


def test_chunked_capture_and_scoring_raise_no_cache_deprecation(tiny_llama):
    from tda.activations.capture import capture
    from tda.engine.session import SparseSession
    from tda.evaluate.scoring import continuation_logits

    text = " ".join(f"w{i}" for i in range(60))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        a = capture(tiny_llama, text, chunk=16)
        b = capture(tiny_llama, text, chunk=10_000)
        ids = [int(t) for t in tiny_llama.tokenizer(text)["input_ids"]]
        logits = continuation_logits(tiny_llama, ids, 20, SparseSession(tiny_llama, "dense"))
    assert torch.allclose(a.acts, b.acts, atol=1e-5)
    assert logits.shape[0] == len(ids) - 20
