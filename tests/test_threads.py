"""Thread policy for generation (issue 17, point 5): all cores, the free ones, or a count."""

from __future__ import annotations

import pytest
import torch

from tda.common.errors import BadInput
from tda.engine import threads


def test_policies_resolve(monkeypatch):
    assert threads.resolve("all", 7) == 7
    assert threads.resolve(3, 7) == 3 and threads.resolve("2", 7) == 2
    monkeypatch.setattr(threads, "free_cores", lambda: 1)
    assert threads.resolve("auto", 2) == 1
    monkeypatch.setattr(threads, "free_cores", lambda: 5)
    assert threads.resolve("auto", 2) == 2  # never more than torch's default
    monkeypatch.setattr(threads, "free_cores", lambda: None)
    assert threads.resolve("auto", 2) == 2  # unknown: all
    monkeypatch.setenv(threads.ENV, "all")
    assert threads.check_policy(None) == "all"
    monkeypatch.delenv(threads.ENV)
    assert threads.check_policy(None) == "auto"
    for bad in ("some", 0, -1, True, 1.5):
        with pytest.raises(BadInput):
            threads.check_policy(bad)


def test_busy_fractions_read_the_machine():
    fr = threads.busy_fractions(0.02)
    assert fr and all(0.0 <= f <= 1.0 for f in fr)
    assert threads.free_cores() is not None


def test_generate_restores_the_thread_count(tiny_llama):
    from tda.engine.generate import generate

    before = torch.get_num_threads()
    r1 = generate(tiny_llama, "the quick brown fox", max_new_tokens=4, min_new_tokens=4, threads=1)
    assert r1.timings["threads"] == 1 and torch.get_num_threads() == before
    r2 = generate(tiny_llama, "the quick brown fox", max_new_tokens=4, min_new_tokens=4, threads="auto")
    assert 1 <= r2.timings["threads"] <= before and torch.get_num_threads() == before
    assert r1.token_ids == r2.token_ids
    with pytest.raises(BadInput, match="threads"):
        generate(tiny_llama, "x", threads="many")
