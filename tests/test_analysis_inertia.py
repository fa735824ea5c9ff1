"""Inertia metrics and the Claim 4 verdict on hand-made masks with known answers."""

from __future__ import annotations

import pytest
import torch

from analysis.activation import check_top_p, topp_active
from analysis.inertia import (
    chance_history_jaccard,
    claim4_verdict,
    concentration,
    history_jaccard,
    jaccard,
    layer_metrics,
    mode_differences,
    self_jaccard,
)
from tda.common.errors import BadInput


def mask(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in r] for r in rows])


def test_jaccard_basics():
    assert jaccard(mask(["1100"])[0], mask(["0110"])[0]) == pytest.approx(1 / 3)
    assert jaccard(mask(["0000"])[0], mask(["0000"])[0]) == 1.0


def test_history_jaccard_known_values():
    A = mask(["1100", "0110", "0011", "1100"])
    # k=1: J(t1,t0)=1/3, J(t2,t1)=1/3, J(t3,t2)=0
    assert history_jaccard(A, 1).tolist() == pytest.approx([1 / 3, 1 / 3, 0.0])
    # k=2: t2=0011 vs t0|t1=1110 -> 1/4; t3=1100 vs t1|t2=0111 -> 1/4
    assert history_jaccard(A, 2).tolist() == pytest.approx([1 / 3, 1 / 4, 1 / 4])
    # k=3: t3 vs everything before (all four): {0,1}/{0,1,2,3} = 1/2
    assert history_jaccard(A, 3)[-1].item() == pytest.approx(0.5)


def test_identical_rows_give_full_overlap_and_high_concentration():
    A = mask(["11000000"] * 6)
    m = layer_metrics(A, k=4)
    assert m["jaccard"] == 1.0 and m["jaccard_prev"] == 1.0
    assert m["n50"] == 1 and m["n90"] == 2 and m["events"] == 12 and m["n_active_neurons"] == 2
    assert m["density"] == pytest.approx(0.25)
    # two of eight neurons, sets of size 2 -> chance overlap (2*2/8)/(2+2-0.5)
    assert m["jaccard_chance"] == pytest.approx(0.5 / 3.5)


def test_concentration_counts():
    # neuron 0 fires 6 times, 1..4 once each: 10 events; 50% -> 1 neuron, 90% -> 4 neurons
    A = torch.zeros(6, 5, dtype=torch.bool)
    A[:, 0] = True
    for j in range(1, 5):
        A[j, j] = True
    c = concentration(A)
    assert c[0.5] == 1 and c[0.9] == 4
    assert concentration(torch.zeros(3, 4, dtype=torch.bool)) == {0.5: 0, 0.9: 0}


def test_disjoint_shifting_sets_vs_chance():
    A = torch.eye(8, dtype=torch.bool)  # every token its own neuron
    assert history_jaccard(A, 4).max().item() == 0.0
    assert (chance_history_jaccard(A, 4) > 0).all()
    assert concentration(A) == {0.5: 4, 0.9: 8}


def test_self_jaccard_and_mode_differences():
    seq, iso = mask(["1100", "1100"]), mask(["1100", "0011"])
    assert self_jaccard(seq, iso).tolist() == [1.0, 0.0]
    d = mode_differences([{"layer": 0, "density": 0.5, "jaccard": 0.0, "jaccard_prev": 0.0, "n50": 2, "n90": 4}],
                         [{"layer": 0, "density": 0.5, "jaccard": 1.0, "jaccard_prev": 1.0, "n50": 1, "n90": 2}])
    assert d == [{"layer": 0, "d_density": 0.0, "d_jaccard": 1.0, "d_jaccard_prev": 1.0, "d_n50": -1, "d_n90": -2}]


def test_topp_active_counts_and_bad_p():
    acts = torch.tensor([[[0.1, -5.0, 0.2, 3.0], [1.0, 0.0, 0.0, 0.0]]])
    out = topp_active(acts, 0.5)
    assert out.sum(-1).tolist() == [[2, 2]]  # exactly round(0.5 * 4) per token, ties included
    assert out[0, 0].tolist() == [False, True, False, True]
    assert out[0, 1, 0].item() is True
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(BadInput):
            check_top_p(bad)


def _result(flock: bool, context: bool, layers: int = 3) -> dict:
    """A synthetic inertia result where parts A and B hold or not, by construction."""
    iso_row = {"density": 0.1, "jaccard": 0.2, "jaccard_prev": 0.2, "n50": 100, "n90": 300}
    seq_row = dict(iso_row, jaccard=0.5 if flock else 0.1, jaccard_prev=0.5 if flock else 0.1,
                   n50=50 if flock else 150)
    self_j = 0.3 if context == flock else (0.05 if context else 0.9)
    src = {"isolated": [dict(iso_row, layer=L) for L in range(layers)],
           "sequence": [dict(seq_row, layer=L) for L in range(layers)],
           "self_jaccard": [self_j] * layers}
    return {"model_id": "m", "k": 4, "rule": {"label": "top 10%"}, "sources": {"real": src, "random": src}}


@pytest.mark.parametrize("flock, context, verdict", [
    (True, True, "holds"), (True, False, "partly holds"), (False, True, "partly holds"), (False, False, "fails"),
])
def test_claim4_verdict_logic(flock, context, verdict):
    v = claim4_verdict(_result(flock, context))
    assert v["verdict"] == verdict
    assert v["A"] is flock and v["B"] is context and v["C"] is None
    assert v["statement"].startswith(f"Claim 4 (activation inertia) {verdict.upper()}")


def test_claim4_control_part():
    trained, control = _result(True, True), _result(False, False)
    v = claim4_verdict(trained, control)
    assert v["C"] is True and "larger with trained weights for every token source" in v["statement"]
    v2 = claim4_verdict(trained, trained)
    assert v2["C"] is False  # equal effect: not larger with training
    assert "at least as large an effect for every token source" in v2["statement"]


def test_claim4_majority_threshold():
    r = _result(True, True, layers=3)
    r["sources"]["real"] = dict(r["sources"]["real"])
    r["sources"]["real"]["sequence"] = [dict(x) for x in r["sources"]["real"]["sequence"]]
    r["sources"]["real"]["sequence"][0]["n50"] = 500  # layer 0 no longer concentrates: 2/3 remain
    assert claim4_verdict(r)["A"] is True
    r["sources"]["real"]["sequence"][1]["n50"] = 500  # 1/3 remain
    assert claim4_verdict(r)["A"] is False
