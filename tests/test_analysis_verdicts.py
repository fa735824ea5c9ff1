"""Verdict logic of observations (a)-(e) on hand-made similarity matrices with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.verdicts import OBSERVATIONS, duplicate_groups, evaluate, evaluate_all
from tda.common.errors import BadInput

IDS = list(range(1, 14))
DUPS = {1: {8}, 8: {1}}  # samples 1 and 8 share a text


def _matrix(entries: dict[tuple[int, int], float], base: float = 0.1) -> np.ndarray:
    S = np.full((13, 13), base)
    np.fill_diagonal(S, 1.0)
    for (i, j), v in entries.items():
        S[i - 1, j - 1] = S[j - 1, i - 1] = v
    return S


def _all_hold() -> dict[tuple[int, int], float]:
    """A matrix built by hand on which every observation holds (sample 8 = sample 1)."""
    e = {(1, 8): 1.0, (1, 4): 0.9, (1, 6): 0.9, (1, 9): 0.9, (1, 2): 0.5, (1, 3): 0.5,
         (4, 6): 0.9, (4, 9): 0.9, (6, 9): 0.9,
         (9, 10): 0.6, (9, 11): 0.6, (9, 12): 0.6, (10, 11): 0.6, (10, 12): 0.6, (11, 12): 0.6,
         (10, 13): 0.8, (11, 13): 0.8, (12, 13): 0.8}
    for (i, j), v in list(e.items()):  # sample 8 is a copy of sample 1
        if 1 in (i, j) and 8 not in (i, j):
            other = j if i == 1 else i
            e[(8, other)] = v
    return e


def test_all_observations_hold_on_the_constructed_matrix():
    res = evaluate_all(_matrix(_all_hold()), IDS, DUPS)
    assert {k: r["holds"] for k, r in res.items()} == dict.fromkeys("abcde", True)
    assert all(r["margin"] > 0 and r["n_hold"] == r["n_comparisons"] for r in res.values())


def test_flat_matrix_fails_everything_because_ties_fail():
    res = evaluate_all(_matrix({}), IDS, DUPS)
    assert not any(r["holds"] for r in res.values())
    assert all(r["margin"] == 0.0 for r in res.values())


@pytest.mark.parametrize(
    "key, change, margin",
    [
        ("a", {(1, 2): 0.95}, -0.05),           # sample 2 now closer to 1 than 4, 6, 9 are
        ("b", {(6, 5): 0.95}, -0.05),           # sample 6 closer to 5 than to 4
        ("c", {(9, 13): 0.95}, -0.05),          # 13 beats 4, 6 and 8 as 9's neighbour
        ("d", {(12, 3): 0.7}, -0.1),            # 12 closer to 3 than to 9 and 10
        ("e", {(11, 12): 0.85}, -0.05),         # 11 closer to 12 than to 13
    ],
)
def test_one_change_breaks_exactly_one_observation(key, change, margin):
    e = _all_hold()
    e.update(change)
    res = evaluate_all(_matrix(e), IDS, DUPS)
    assert {k for k, r in res.items() if not r["holds"]} == {key}
    assert res[key]["margin"] == pytest.approx(margin)
    assert res[key]["n_hold"] < res[key]["n_comparisons"]


def test_c_ignores_the_duplicate_of_a_named_sample_but_not_without_duplicates():
    S = _matrix(_all_hold())
    assert evaluate("c", S, IDS, DUPS)["holds"]
    # without the duplicate rule, S[9,1] ties S[9,8] and a tie is not "more similar"
    assert not evaluate("c", S, IDS, {})["holds"]


def test_comparison_rows_carry_the_numbers():
    S = _matrix(_all_hold())
    r = evaluate("a", S, IDS, DUPS)
    assert r["n_comparisons"] == 6
    row = r["comparisons"][0]
    assert row["greater"] == [1, 4] and row["than"] == [1, 2]
    assert row["s_greater"] == pytest.approx(0.9) and row["s_than"] == pytest.approx(0.5)


def test_matrix_order_follows_ids():
    """A permuted matrix with permuted ids gives the same verdicts."""
    S = _matrix(_all_hold())
    perm = np.random.default_rng(0).permutation(13)
    ids = [IDS[p] for p in perm]
    res = evaluate_all(S[np.ix_(perm, perm)], ids, DUPS)
    assert all(r["holds"] for r in res.values())


def test_duplicate_groups_from_texts():
    samples = [{"id": 1, "text": "x"}, {"id": 2, "text": "y"}, {"id": 8, "text": "x "}]
    assert duplicate_groups(samples) == {1: {8}, 8: {1}}


def test_bad_inputs():
    with pytest.raises(BadInput):
        evaluate("a", np.eye(3), [1, 2, 3])
    with pytest.raises(BadInput):
        evaluate("a", np.eye(13), IDS[:12] + [99])
    with pytest.raises(BadInput):
        evaluate("z", np.eye(13), IDS)
    assert [o.key for o in OBSERVATIONS] == list("abcde")
