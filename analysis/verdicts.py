"""Automatic verdicts for the five observations (a)–(e) of the paper's 13-sample study.

Written from the observations' wording (``shared/paper/DIGEST.md``) *before* any result was
looked at; tested on hand-made similarity matrices whose answers are known
(``tests/test_analysis_verdicts.py``). Never change a reading to make a verdict hold.

Every observation is a list of strict pairwise inequalities ``S[p] > S[q]`` between entries of
a symmetric similarity matrix ``S`` (samples addressed by their ids, 1..13). An observation
*holds* when every one of its inequalities holds; its *margin* is the smallest ``S[p] − S[q]``
(negative when it fails). Ties fail: "more similar" is strict.

Readings (the paper gives no formulas; these are ours, chosen to be literal and jointly
satisfiable — a matrix on which all five hold exists, see the tests):

(a) "samples 4, 6 and 9 are more similar to sample 1 than samples 2 and 3 are":
    ``S[1,x] > S[1,y]`` for x in {4, 6, 9}, y in {2, 3}.
(b) "samples 1, 6, 8 and 9 are more similar to sample 4 than to sample 5":
    ``S[i,4] > S[i,5]`` for i in {1, 6, 8, 9}.
(c) "sample 9 is most similar to samples 4, 6 and 8":
    ``S[9,x] > S[9,y]`` for x in {4, 6, 8} and every other sample y — except samples whose text
    is identical to one of x (sample 1 repeats sample 8's text, so ``S[9,1]`` equals
    ``S[9,8]`` for any deterministic pattern; naming 8 stands for both).
(d) "samples 11 and 12 are more similar to samples 9 and 10" (no comparison set is named):
    ``S[i,x] > S[i,y]`` for i in {11, 12}, x in {9, 10}, and y in samples 1–8 (the samples
    neither (d) nor (e) names). 13 is left out because (e) separately asserts that 11 and 12
    are *more* similar to 13 than to anything else; comparing with 13 here would make (d)
    and (e) contradictory.
(e) "samples 10, 11 and 12 are more similar to sample 13 than to any other samples":
    ``S[i,13] > S[i,y]`` for i in {10, 11, 12} and every y other than i and 13 (literal: the
    other subjects count as "any other samples").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tda.common.errors import BadInput

PAPER_IDS = tuple(range(1, 14))


@dataclass(frozen=True)
class Observation:
    key: str
    wording: str
    reading: str


OBSERVATIONS: tuple[Observation, ...] = (
    Observation("a", "samples 4, 6 and 9 are more similar to sample 1 than samples 2 and 3 are",
                "S[1,x] > S[1,y] for x in {4,6,9}, y in {2,3}"),
    Observation("b", "samples 1, 6, 8 and 9 are more similar to sample 4 than to sample 5",
                "S[i,4] > S[i,5] for i in {1,6,8,9}"),
    Observation("c", "sample 9 is most similar to samples 4, 6 and 8",
                "S[9,x] > S[9,y] for x in {4,6,8}, y any other sample (texts identical to an x excluded)"),
    Observation("d", "samples 11 and 12 are more similar to samples 9 and 10",
                "S[i,x] > S[i,y] for i in {11,12}, x in {9,10}, y in samples 1-8"),
    Observation("e", "samples 10, 11 and 12 are more similar to sample 13 than to any other samples",
                "S[i,13] > S[i,y] for i in {10,11,12}, y any sample other than i and 13"),
)

_BY_KEY = {o.key: o for o in OBSERVATIONS}
Pair = tuple[int, int]


def _comparisons(key: str, ids: Sequence[int], duplicates: dict[int, set[int]]) -> list[tuple[Pair, Pair]]:
    """The inequalities ``(p, q)`` meaning ``S[p] > S[q]`` of observation ``key``."""
    everyone = list(ids)

    def dups_of(xs) -> set[int]:
        out: set[int] = set()
        for x in xs:
            out |= duplicates.get(x, set())
        return out

    if key == "a":
        return [((1, x), (1, y)) for x in (4, 6, 9) for y in (2, 3)]
    if key == "b":
        return [((i, 4), (i, 5)) for i in (1, 6, 8, 9)]
    if key == "c":
        named = {4, 6, 8}
        others = [y for y in everyone if y not in named | {9} | dups_of(named)]
        return [((9, x), (9, y)) for x in sorted(named) for y in others]
    if key == "d":
        others = [y for y in everyone if 1 <= y <= 8]
        return [((i, x), (i, y)) for i in (11, 12) for x in (9, 10) for y in others]
    if key == "e":
        return [((i, 13), (i, y)) for i in (10, 11, 12) for y in everyone if y not in (i, 13)]
    raise BadInput(f"unknown observation '{key}'; use one of a, b, c, d, e")


def duplicate_groups(samples: Sequence[dict]) -> dict[int, set[int]]:
    """``{id: ids of the other samples with exactly the same text}`` (only ids that have any)."""
    by_text: dict[str, list[int]] = {}
    for s in samples:
        by_text.setdefault(s["text"].strip(), []).append(int(s["id"]))
    out: dict[int, set[int]] = {}
    for group in by_text.values():
        for i in group:
            others = set(group) - {i}
            if others:
                out[i] = others
    return out


def applicable(ids: Sequence[int]) -> bool:
    """Observations (a)–(e) refer to samples 1..13: they apply when all those ids are present."""
    return set(PAPER_IDS) <= {int(i) for i in ids}


def evaluate(key: str, S: np.ndarray, ids: Sequence[int], duplicates: dict[int, set[int]] | None = None) -> dict:
    """Verdict of one observation on similarity matrix ``S`` (rows/columns in the order of ``ids``).

    Returns ``{"holds", "margin", "n_comparisons", "n_hold", "comparisons": [...], "wording",
    "reading"}``; each comparison lists both pairs and their similarities.
    """
    S = np.asarray(S, dtype=float)
    ids = [int(i) for i in ids]
    if S.shape != (len(ids), len(ids)):
        raise BadInput(f"similarity matrix is {S.shape}, expected {len(ids)}x{len(ids)}")
    if not applicable(ids):
        raise BadInput("observations (a)-(e) need samples with ids 1..13")
    pos = {i: n for n, i in enumerate(ids)}
    obs = _BY_KEY.get(key)
    if obs is None:
        raise BadInput(f"unknown observation '{key}'; use one of a, b, c, d, e")
    rows = []
    for p, q in _comparisons(key, ids, duplicates or {}):
        sp, sq = float(S[pos[p[0]], pos[p[1]]]), float(S[pos[q[0]], pos[q[1]]])
        rows.append({"greater": list(p), "s_greater": sp, "than": list(q), "s_than": sq, "holds": bool(sp > sq)})
    margins = [r["s_greater"] - r["s_than"] for r in rows]
    return {
        "holds": all(r["holds"] for r in rows),
        "margin": float(min(margins)),
        "n_comparisons": len(rows),
        "n_hold": sum(r["holds"] for r in rows),
        "comparisons": rows,
        "wording": obs.wording,
        "reading": obs.reading,
    }


def evaluate_all(S: np.ndarray, ids: Sequence[int], duplicates: dict[int, set[int]] | None = None) -> dict[str, dict]:
    """``{key: evaluate(key, ...)}`` for the five observations."""
    return {o.key: evaluate(o.key, S, ids, duplicates) for o in OBSERVATIONS}
