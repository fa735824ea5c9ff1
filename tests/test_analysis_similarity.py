"""Similarity measures on hand-made patterns, and Study 2 end to end on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.similarity import (
    check_samples,
    cosine_matrix,
    jaccard_matrix,
    layer_groups,
    spearman_matrix,
    verdict_rows,
)
from tda.common.errors import BadInput


def test_cosine_known_values():
    X = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [0.0, 0.0]])
    S = cosine_matrix(X)
    assert S[0, 1] == pytest.approx(0.0)
    assert S[0, 2] == pytest.approx(1 / np.sqrt(2))
    assert S[3, 0] == 0.0 and S[3, 3] == 1.0
    assert np.allclose(S, S.T)


def test_spearman_is_rank_based():
    x = np.arange(10.0)
    S = spearman_matrix(np.stack([x, x**3, -x, np.ones(10)]))
    assert S[0, 1] == pytest.approx(1.0)   # monotone transform: same ranks
    assert S[0, 2] == pytest.approx(-1.0)  # reversed
    assert S[0, 3] == 0.0 and S[3, 3] == 1.0  # constant row: no correlation
    assert np.allclose(spearman_matrix(np.stack([x, -x])), [[1, -1], [-1, 1]])


def test_jaccard_known_values():
    M = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)
    S = jaccard_matrix(M)
    assert S[0, 1] == pytest.approx(1 / 3)
    assert S[0, 2] == 0.0 and S[2, 3] == 1.0


def test_layer_groups():
    g = layer_groups(18)
    assert g["early"] == list(range(6)) and g["middle"] == list(range(6, 12)) and g["late"] == list(range(12, 18))
    assert g["all"] == list(range(18))
    assert layer_groups(3) == {"early": [0], "middle": [1], "late": [2], "all": [0, 1, 2]}


def test_check_samples_errors():
    with pytest.raises(BadInput):
        check_samples([{"id": 1, "text": "a"}])
    with pytest.raises(BadInput):
        check_samples([{"id": 1, "text": "a"}, {"id": 2}])
    with pytest.raises(BadInput):
        check_samples([{"id": 1, "text": "a"}, {"id": 1, "text": "b"}])
    assert check_samples([{"text": "a"}, {"text": "b"}])[1]["id"] == 2


@pytest.fixture(scope="module")
def study2(load_tiny):
    from analysis.activation import cett_rule
    from analysis.similarity import similarity_study
    from tda.common.data import load_samples

    lm = load_tiny("tiny-gemma3")
    return similarity_study(lm, load_samples(), cett_rule(lm))


def test_study2_end_to_end_on_tiny_model(study2):
    assert [s["id"] for s in study2["samples"]] == list(range(1, 14))
    assert set(study2["matrices"]) == {"cosine", "spearman", "jaccard_tda", "jaccard_griffin"}
    for by_group in study2["matrices"].values():
        assert set(by_group) == {"early", "middle", "late", "all"}
        for S in by_group.values():
            S = np.asarray(S)
            assert S.shape == (13, 13) and np.allclose(S, S.T) and np.allclose(np.diag(S), 1)
            assert S[0, 7] == pytest.approx(1.0)  # samples 1 and 8 have the same text
    obs = study2["observations"]
    assert set(obs) == set("abcde")
    for per in obs.values():
        for m in study2["measures"]:
            for g, v in per[m].items():
                assert isinstance(v["holds"], bool)
                assert v["holds"] == (v["n_hold"] == v["n_comparisons"])
                # the verdict agrees with the stored matrix
                S = np.asarray(study2["matrices"][m][g])
                for c in v["comparisons"]:
                    (i, j), (p, q) = c["greater"], c["than"]
                    assert c["s_greater"] == pytest.approx(S[i - 1, j - 1], abs=1e-6)
                    assert c["s_than"] == pytest.approx(S[p - 1, q - 1], abs=1e-6)
    assert len(verdict_rows(study2)) == 5 * 4 * 4


def test_non_paper_samples_give_matrices_only(load_tiny):
    from analysis.activation import cett_rule
    from analysis.similarity import similarity_study

    lm = load_tiny("tiny-gemma3")
    res = similarity_study(lm, [{"id": 1, "text": "the city"}, {"id": 2, "text": "the planet"}], cett_rule(lm),
                           measures=["cosine"])
    assert res["observations"] is None and verdict_rows(res) == []
    assert np.asarray(res["matrices"]["cosine"]["all"]).shape == (2, 2)
