"""The resumable scoring journal: a run stopped after some batches and rerun with the same journal
gives the very numbers (==) of a run that never stopped, without scoring a journalled passage again;
more densities of the same methods score only the new variants; another method set or CETT reuses
nothing; a truncated last line is tolerated; a bad path is refused."""

from __future__ import annotations

import json

import pytest

from tda.common.errors import BadInput
from tda.evaluate import journal as jn
from tda.evaluate import scoring
from tda.evaluate.journal import Journal
from tda.evaluate.quality import variants
from tda.evaluate.scoring import batches_by_length, nll_and_top, score_units, split_point

BATCH = 512  # tiny-llama's shipped texts (185–256 tokens): batches of two rows


class Stop(Exception):
    """The process 'dies' here."""


@pytest.fixture(scope="module")
def setup(load_tiny):
    from tda.common.data import load_texts

    lm = load_tiny("tiny-llama")
    texts = load_texts(limit=6)
    seqs = [lm.tokenizer(t).input_ids[: lm.n_ctx] for t in texts]
    splits = [split_point(len(s)) for s in seqs]
    vs = variants(["dense", "griffin", "teal"], [0.5])  # teal: token-wise, scored one passage at a time
    return lm, seqs, splits, vs


def _score(setup, *, journal=None, vs=None, cett=0.2, calls=None, stop_at=None, progress=None):
    """score_units with nll_and_top; ``calls`` collects every reduced index; reducing an index in
    ``stop_at`` raises :class:`Stop`."""
    lm, seqs, splits, vs0 = setup

    def reduce(i, logits):
        if stop_at is not None and i in stop_at:
            raise Stop
        if calls is not None:
            calls.append(i)
        return nll_and_top(logits, seqs[i][splits[i]:])

    return score_units(lm, seqs, splits, vs or vs0, cett=cett, batch_tokens=BATCH, what="perplexity",
                       reduce=reduce, journal=journal, progress=progress)


@pytest.fixture(scope="module")
def reference(setup):
    """An uninterrupted run without a journal (a first run converts the layouts; then the reference)."""
    _score(setup)
    return _score(setup)


def _lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


# ----- pure parts --------------------------------------------------------------------------------
def test_values_round_trip_exactly():
    import math
    import random

    rng = random.Random(0)
    values = [rng.random() * 10 ** rng.randint(-30, 30) for _ in range(200)] + [0.1, 1 / 3, -0.0, math.inf, 2.0]
    for v in values:
        back = jn.decode_value(json.loads(json.dumps(jn.encode_value((v, [1, 2])))))
        assert back == (v, [1, 2]) and isinstance(back, tuple) and type(back[0]) is float
        assert math.copysign(1, back[0]) == math.copysign(1, v)
    key, res = jn.parse_line(jn.to_line("k", 3, {"dense": (12.5, [4, 5]), "c": 1, "n": [[1], (2,)]}))
    assert key == "k" and res == {"dense": (12.5, [4, 5]), "c": 1, "n": [[1], (2,)]}
    assert type(res["c"]) is int
    with pytest.raises(TypeError):
        jn.encode_value({1, 2})


def test_keys_change_with_what_sets_the_numbers():
    base = dict(model={"spec": "m", "format": "fp32"}, kind="perplexity", methods=["dense", "teal"], cett=0.2,
                thresholds={"tt": [0.1, 0.2]}, calibration_texts=None, batch_tokens=1024, keep_last=None, fast=True)
    k = jn.run_key(**base)
    assert jn.run_key(**{**base, "methods": ["teal", "dense", "teal"]}) == k  # the set: order and repeats aside
    for change in ({"methods": ["dense", "teal", "cats"]}, {"cett": 0.3}, {"thresholds": {"tt": [0.1, 0.3]}},
                   {"batch_tokens": 512}, {"kind": "cloze"}, {"model": {"spec": "m", "format": "bf16"}},
                   {"keep_last": 4}, {"calibration_texts": ["a"]}, {"fast": False}):
        assert jn.run_key(**{**base, **change}) != k, change
    batch = [([1, 2, 3, 4], 2), ([5, 6, 7], 1)]
    u = jn.unit_key(k, batch, 0)
    assert jn.unit_key(k, batch, 1) != u and jn.unit_key(k, batch[:1], 0) != u  # another batch shape
    assert jn.unit_key(k, [([1, 2, 3, 4], 3), batch[1]], 0) != u and jn.unit_key(k, batch, 0, tag=1) != u
    with pytest.raises(BadInput):
        jn.run_key(**{**base, "methods": []})


def test_the_kernels_that_round_are_part_of_the_model_identity(setup, monkeypatch):
    """A journal written with AMX prefill (or another build) is not read back without it."""
    lm = setup[0]
    ident = jn.model_identity(lm)
    assert set(ident["kernels"]) == {"backend", "flags", "amx"}
    from tda.engine import kernels

    monkeypatch.setattr(kernels, "backend_info", lambda: {"backend": "torch", "flags": []})
    assert jn.model_identity(lm) != ident


def test_lines_of_one_key_merge_label_by_label():
    data = (jn.to_line("k", 0, {"dense": 1.0, "teal@0.5": 2.0}) + jn.to_line("j", 1, {"dense": 5.0})
            + jn.to_line("k", 0, {"teal@0.3": 3.0, "dense": 4.0})).encode()
    entries, damaged, _ = jn.parse(data)
    assert entries == {"k": {"dense": 4.0, "teal@0.5": 2.0, "teal@0.3": 3.0}, "j": {"dense": 5.0}} and not damaged


def test_scoring_time_sums_the_timed_lines_and_counts_the_rest(tmp_path):
    data = (jn.to_line("k", 0, {"dense": 1.0}, 2.5) + jn.to_line("k", 1, {"dense": 2.0})  # an older, untimed line
            + jn.to_line("j", 0, {"teal@0.3": 3.0}, 0.25) + "not json\n" + '{"key": "k", "i": 2, "res').encode()
    assert jn.scoring_time(data) == {"seconds": 2.8, "lines": 3, "timed_lines": 2}
    assert jn.parse(data)[0] == {"k": {"dense": 2.0}, "j": {"teal@0.3": 3.0}}  # the time is not a result
    with pytest.raises(BadInput, match="scoring time"):
        jn.to_line("k", 0, {}, -1.0)
    assert Journal(tmp_path / "none.jsonl").scoring_time() == {"seconds": 0.0, "lines": 0, "timed_lines": 0}
    j = Journal(tmp_path / "a.jsonl")
    j.append([("k", 0, {"d": 1.0}), ("k", 1, {"d": 2.0})], seconds=3.0)
    j.close()
    assert [x["s"] for x in _lines(tmp_path / "a.jsonl")] == [1.5, 1.5]


def test_parse_tolerates_a_truncated_tail_and_flags_damage():
    good = [jn.to_line(f"k{n}", n, {"dense": float(n)}) for n in range(3)]
    data = (good[0] + "{not json\n" + good[1] + good[2][:-9]).encode()
    entries, damaged, end = jn.parse(data)
    assert set(entries) == {"k0", "k1"} and damaged == [2] and data[:end].endswith(b"\n")
    assert jn.parse(b"") == ({}, [], 0)


# ----- resuming score_units ----------------------------------------------------------------------
def test_interrupted_then_resumed_equals_uninterrupted(setup, reference, tmp_path):
    lm, seqs, splits, vs = setup
    batches = batches_by_length([len(s) for s in seqs], BATCH)
    assert len(batches) >= 3 and len(batches[0]) == 2
    path = tmp_path / "run.journal.jsonl"
    with pytest.raises(Stop):  # dies while scoring the second batch
        _score(setup, journal=Journal(path), stop_at=set(batches[1]))
    assert sorted(x["i"] for x in _lines(path)) == sorted(batches[0])  # the first batch, nothing else
    calls: list[int] = []
    msgs: list[str] = []
    resumed = _score(setup, journal=Journal(path), calls=calls, progress=msgs.append)
    assert resumed == reference  # every label's (nll, top ids), bit for bit
    assert all(isinstance(r[v.label], tuple) for r in resumed for v in vs)
    done = set(batches[0])
    assert calls and not done & set(calls)  # no journalled passage scored again
    assert sorted(set(calls)) == sorted(i for b in batches[1:] for i in b)
    assert any("2 sequences resumed from the journal" in m for m in msgs)
    assert any(f"{len(batches) - 1} batches" in m for m in msgs)
    # a third run scores nothing at all (only the layouts' build on a few tokens runs)
    seen = []
    real = scoring.batch_logits

    def spy(*a, **kw):
        seen.append(1)
        return real(*a, **kw)

    calls.clear()
    msgs.clear()
    try:
        scoring.batch_logits = spy
        again = _score(setup, journal=Journal(path), calls=calls, progress=msgs.append)
    finally:
        scoring.batch_logits = real
    assert again == reference and calls == [] and len(seen) == 1
    assert any(f"all {len(seqs)} sequences resumed" in m for m in msgs)
    # every line carries its share of its batch's scoring time; the total spans both processes
    lines = _lines(path)
    assert len(lines) == len(seqs) and all(x["s"] > 0 for x in lines)
    first = [x["s"] for x in lines if x["i"] in batches[0]]
    assert len(set(first)) == 1  # one batch's time, shared out evenly
    got = Journal(path).scoring_time()
    assert got == {"seconds": round(sum(x["s"] for x in lines), 1), "lines": len(seqs), "timed_lines": len(seqs)}


def test_other_variants_or_cett_reuse_nothing(setup, reference, tmp_path):
    lm, seqs, splits, vs = setup
    path = tmp_path / "j.jsonl"
    _score(setup, journal=Journal(path))
    n = len(_lines(path))
    assert n == len(seqs)
    for kw in ({"vs": variants(["dense", "griffin"], [0.5])}, {"cett": 0.3}):
        calls: list[int] = []
        _score(setup, journal=Journal(path), calls=calls, **kw)
        assert sorted(set(calls)) == list(range(len(seqs))), kw  # everything scored again
    assert len(_lines(path)) == 3 * n  # and journalled under its own keys
    calls = []
    assert _score(setup, journal=Journal(path), calls=calls) == reference and calls == []  # the first still holds


def test_more_densities_score_only_the_new_variants(setup, reference, tmp_path):
    """A run at 0.5 journalled, then the same methods at 0.5 and 0.3: the 0.5 variants and dense are
    read back, only the 0.3 ones scored — and every number equals a fresh run at both densities
    without a journal (so a variant's numbers do not depend on the other densities in its run)."""
    lm, seqs, splits, vs = setup
    both = variants(["dense", "griffin", "teal"], [0.5, 0.3])
    fresh = _score(setup, vs=both)
    assert [{k: r[k] for k in (v.label for v in vs)} for r in fresh] == reference
    path = tmp_path / "j.jsonl"
    _score(setup, journal=Journal(path))
    scored: list[str] = []
    real = scoring.batch_logit_parts

    def spy(lm_, rows, splits_, sess, **kw):
        if kw.get("keep_last") is None:  # not the layouts' build on a few tokens (keep_last=1)
            scored.extend(sess)
        return real(lm_, rows, splits_, sess, **kw)

    msgs: list[str] = []
    try:
        scoring.batch_logit_parts = spy
        extended = _score(setup, vs=both, journal=Journal(path), progress=msgs.append)
    finally:
        scoring.batch_logit_parts = real
    assert extended == fresh and [list(r) for r in extended] == [[v.label for v in both]] * len(seqs)
    assert set(scored) == {"griffin@0.3", "teal@0.3"}  # nothing journalled was scored again
    assert any("0 sequences resumed from the journal, and 3 of the 5 variants of the rest" in m for m in msgs), msgs
    again: list[int] = []
    assert _score(setup, vs=both, journal=Journal(path), calls=again) == fresh and again == []


def test_truncated_last_line_and_damaged_lines(setup, reference, tmp_path):
    lm, seqs, splits, vs = setup
    batches = batches_by_length([len(s) for s in seqs], BATCH)
    path = tmp_path / "j.jsonl"
    _score(setup, journal=Journal(path))
    data = path.read_bytes()
    path.write_bytes(data[:-25])  # killed in the middle of writing the last line
    lost = json.loads(data.decode().splitlines()[-1])["i"]
    calls: list[int] = []
    msgs: list[str] = []
    assert _score(setup, journal=Journal(path), calls=calls, progress=msgs.append) == reference
    lost_batch = next(b for b in batches if lost in b)
    assert sorted(set(calls)) == sorted(lost_batch)  # a batch partly there is scored whole
    assert not any("warning" in m for m in msgs)  # a truncated tail is no damage
    assert all(json.loads(x) for x in path.read_text().splitlines()) and path.read_text().endswith("\n")
    # a damaged line in the middle: one warning line, the rest is used
    lines = path.read_text().splitlines(keepends=True)
    hit = json.loads(lines[1])["i"]
    lines[1] = "{garbage\n"
    path.write_text("".join(lines))
    calls, msgs = [], []
    assert _score(setup, journal=Journal(path), calls=calls, progress=msgs.append) == reference
    warnings = [m for m in msgs if "warning" in m]
    assert len(warnings) == 1 and "1 damaged line(s) ignored (line 2)" in warnings[0]
    assert sorted(set(calls)) == sorted(next(b for b in batches if hit in b))


def test_perplexity_and_cloze_resume_through_their_evaluations(setup, tmp_path):
    """perplexity_eval and cloze_eval pass the journal on; a rerun is all journalled, the same result."""
    from tda.common.evalsets import get_set
    from tda.evaluate.cloze import cloze_eval
    from tda.evaluate.quality import perplexity_eval

    lm, _, _, vs = setup
    from tda.common.data import load_texts

    texts = load_texts(limit=3)
    items = get_set("pydoc-cloze", "cloze").load()[:3]
    path = tmp_path / "j.jsonl"
    first = (perplexity_eval(lm, texts, vs, boot_iters=10, journal=Journal(path)),
             cloze_eval(lm, items, vs, journal=Journal(path)))
    kinds = len(_lines(path))
    assert kinds == len(texts) + len(items)
    msgs: list[str] = []
    again = (perplexity_eval(lm, texts, vs, boot_iters=10, journal=Journal(path), progress=msgs.append),
             cloze_eval(lm, items, vs, journal=Journal(path), progress=msgs.append))
    assert again == first and len(_lines(path)) == kinds
    assert sum("sequences resumed from the journal" in m for m in msgs) == 2


# ----- paths and the CLI ---------------------------------------------------------------------------
def test_check_journal_path(tmp_path):
    assert jn.check_journal_path(tmp_path / "j.jsonl") == tmp_path / "j.jsonl"
    assert not (tmp_path / "j.jsonl").exists()  # nothing created
    with pytest.raises(BadInput, match="does not exist"):
        jn.check_journal_path(tmp_path / "nope" / "j.jsonl")
    assert jn.check_journal_path(tmp_path / "nope" / "j.jsonl", create_folder=True)
    with pytest.raises(BadInput, match="is a directory"):
        jn.check_journal_path(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadInput, match="not a directory"):
        jn.check_journal_path(tmp_path / "file" / "j.jsonl")
    with pytest.raises(BadInput, match="empty"):
        jn.check_journal_path("")
    assert jn.default_journal_path(tmp_path / "out") == tmp_path / "out.journal.jsonl"


@pytest.mark.parametrize("command", ["frontier", "eval"])
def test_cli_refuses_a_bad_journal_before_loading(run_cli, tmp_out, monkeypatch, command):
    import tda.cli.frontier_cmds as fc
    import tda.cli.generate_cmds as gc

    def no_load(*a, **kw):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(fc, "load", no_load)
    monkeypatch.setattr(gc, "load", no_load)
    (tmp_out / "file").write_text("x")
    for bad, msg in ((tmp_out / "missing" / "j.jsonl", "does not exist"), (tmp_out / "file" / "j.jsonl",
                                                                           "not a directory"), (tmp_out, "directory")):
        code, _, err = run_cli(command, "--model", "tiny-llama", "--out", tmp_out / "o", "--journal", bad)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
        assert err.startswith("error: ") and "journal" in err
    assert not (tmp_out / "o").exists() and not (tmp_out / "missing").exists()


def test_cli_help_explains_continuing(run_cli):
    for command in ("frontier", "eval"):
        code, out, _ = run_cli(command, "--help")
        text = " ".join(out.split())
        assert code == 0 and "--journal" in text and "--resume" in text
        assert "rerunning the same command with the same journal continues where it stopped" in text


def test_eval_cli_resume(run_cli, tmp_out):
    """`tda eval --resume` twice: the journal beside the output folder, the rerun all resumed, the same numbers."""
    args = ("eval", "--model", "tiny-llama", "--methods", "griffin", "--densities", "0.5", "--limit", "2",
            "--max-new-tokens", "4", "--out", tmp_out / "q", "--resume")
    code, _, err = run_cli(*args)
    assert code == 0, err
    path = tmp_out / "q.journal.jsonl"
    assert path.exists() and not (tmp_out / "q" / "q.journal.jsonl").exists() and "journal" in err
    first = json.loads((tmp_out / "q" / "quality.json").read_text())
    code, _, err = run_cli(*args)
    assert code == 0 and "all 2 sequences resumed from the journal" in err, err
    again = json.loads((tmp_out / "q" / "quality.json").read_text())
    assert again["per_text"] == first["per_text"] and again["meta"]["journal"] == path.name


def test_two_processes_share_a_journal(run_cli, tmp_path):
    """`tda eval` under torchrun with 2 processes: each appends the batches of its shard to one
    journal; a one-process rerun finds every passage there and gives the same numbers."""
    from tests.test_distributed import _ok, torchrun

    path = tmp_path / "j.jsonl"
    args = ("eval", "--model", "tiny-llama", "--methods", "griffin", "--densities", "0.5", "--limit", "8",
            "--max-new-tokens", "4", "--journal", path)
    _ok(torchrun(*args, "--out", tmp_path / "two", cache=tmp_path / "cache"))
    lines = _lines(path)
    assert sorted(x["i"] for x in lines) == list(range(8))
    code, _, err = run_cli(*args, "--out", tmp_path / "one")
    assert code == 0 and "all 8 sequences resumed from the journal" in err, err
    two, one = (json.loads((tmp_path / d / "quality.json").read_text()) for d in ("two", "one"))
    assert one["per_text"] == two["per_text"] and len(_lines(path)) == 8


def test_frontier_resume_records_the_journal_s_scoring_time(run_cli, tmp_out):
    """`tda frontier --resume`: the stored meta gives the scoring time every process journalled
    (the total of a run resumed over several processes), the rerun adding none of its own."""
    args = ("frontier", "--model", "tiny-llama", "--methods", "griffin", "--densities", "0.5", "--rounds", "1",
            "--prompt-tokens", "8", "--new-tokens", "3", "--limit", "2", "--mc-limit", "0", "--cloze-limit", "2",
            "--gen-prompts", "0", "--bandwidth-mb", "8", "--boot-iters", "50", "--out", tmp_out / "f", "--resume")
    code, _, err = run_cli(*args)
    assert code == 0, err
    first = json.loads((tmp_out / "f" / "frontier.json").read_text())["meta"]["journal_scoring"]
    lines = _lines(tmp_out / "f.journal.jsonl")
    assert first["lines"] == first["timed_lines"] == len(lines) >= 4  # 2 texts + 2 cloze items
    assert first["seconds"] == round(sum(x["s"] for x in lines), 1) > 0
    code, _, err = run_cli(*args)
    assert code == 0, err
    again = json.loads((tmp_out / "f" / "frontier.json").read_text())["meta"]["journal_scoring"]
    assert again == first
