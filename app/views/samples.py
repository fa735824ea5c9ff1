"""Page 3 (13 samples): the editor's rows, Study 2 and its views."""

from __future__ import annotations


def layer_groups(n_layers: int) -> dict[str, list[int]]:
    from analysis.similarity import layer_groups as groups

    return groups(n_layers)


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip())


def samples_from_table(records: list[dict]) -> list[dict]:
    """Rows of the samples editor → samples for :func:`analysis.similarity.check_samples`.

    Blank rows are dropped; a new row without an id gets the next free one.
    """
    from analysis.similarity import check_samples

    blank = _blank
    rows = [r for r in records if not all(blank(r.get(k)) for k in ("id", "text", "treatment"))]
    used = [int(r["id"]) for r in rows if not blank(r.get("id"))]
    nxt = max(used, default=0) + 1
    out = []
    for r in rows:
        sid = r.get("id")
        if blank(sid):
            sid, nxt = nxt, nxt + 1
        out.append({"id": sid, "text": "" if blank(r.get("text")) else str(r["text"]),
                    "treatment": "" if blank(r.get("treatment")) else str(r["treatment"])})
    return check_samples(out)


COLUMNS = ("id", "text", "treatment")


def cleared_cells(before, after) -> list[tuple[object, str]]:
    """``(row label, column)`` of the cells that had a value in ``before`` and are blank in ``after``
    (two DataFrames of the samples editor, rows matched by index; deleted rows do not count): what a
    Ctrl+A, Delete in the grid empties."""
    out = []
    for idx in after.index:
        if idx not in before.index:
            continue
        for col in COLUMNS:
            if col in before.columns and not _blank(before.at[idx, col]) and _blank(after.at[idx, col]):
                out.append((idx, col))
    return out


def restore_cells(before, after, cells):
    """``after`` with ``cells`` (from :func:`cleared_cells`) given their values in ``before`` again."""
    out = after.copy()
    for idx, col in cells:
        out.at[idx, col] = before.at[idx, col]
    return out


def similarity_result(lm, samples: list[dict], cett_target: float) -> dict:
    """Study 2 end to end (:func:`analysis.similarity.similarity_study`) under a CETT rule."""
    from analysis.activation import make_rule
    from analysis.similarity import similarity_study

    return similarity_study(lm, samples, make_rule(lm, "cett", cett_target))


def similarity_view(result: dict, measure: str, group: str) -> dict:
    """Page 3: the heatmap of one measure × layer group and the verdict table."""
    import numpy as np

    from analysis.plots import similarity_heatmap, verdict_grid
    from analysis.similarity import verdict_rows
    from analysis.verdicts import OBSERVATIONS

    wording = {o.key: o.wording for o in OBSERVATIONS}
    rows = verdict_rows(result)
    verdicts = [
        {"obs.": r["observation"], "paper says": wording.get(r["observation"], ""), "holds": r["holds"],
         "margin": r["margin"], "comparisons holding": f"{r['n_hold']}/{r['n_comparisons']}"}
        for r in rows if r["measure"] == measure and r["group"] == group
    ]
    S = np.asarray(result["matrices"][measure][group], dtype=float)
    labels = [str(x["id"]) for x in result["samples"]]
    off = S[~np.eye(len(S), dtype=bool)]  # colour range of the off-diagonal entries (the diagonal is 1)
    names = [f"{x['id']}: {x['text'][:40]}" for x in result["samples"]]
    figure = similarity_heatmap(
        S, labels, zmin=float(off.min()) if off.size else None, zmax=float(off.max()) if off.size else None,
        title=f"{result['model_id']}: {result['measures'][measure]['label']}<br><sup>{group} layers "
              f"{result['groups'][group][0]}–{result['groups'][group][-1]}; diagonal (1) left blank, colours "
              f"span the other pairs</sup>", names=names)
    grid = verdict_grid(result) if result.get("observations") else None
    return {"verdicts": verdicts, "matrix": S, "figure": figure, "grid": grid}
