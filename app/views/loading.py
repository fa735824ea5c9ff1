"""One display per one-time job: the overall fraction, an estimate of the time left and the newest line.

Pure functions over the progress lines a job printed (:mod:`tda.common.progress` and the embedded
model's conversion in :mod:`tda.models.embedded`), each with the time it arrived.
"""

from __future__ import annotations

import re

# Share of the conversion's time per step, measured on a fresh cache (benchmarks/convert_profile.py,
# 2 cores): assemble 1.2 s, tokenizer from the GGUF 16 s, de-quantisation 34 s, safetensors 2 s.
CONVERSION_STEPS = (1.2, 16.2, 33.8, 2.2)
CONVERSION_S = sum(CONVERSION_STEPS)  # on a quiet machine; the estimate rescales by the speed seen so far
_STEP = re.compile(r"step (\d+)/(\d+)")
_TASK = re.compile(r"\((\d+)%\)(?: · ~([^·]+?) left)?")


def _key(msg: str) -> str:
    """What a line is about: its text before the first ' · ', ': done', ': failed' or '…'."""
    return re.split(r" · |: done|: failed|…|\.\.\.", msg, maxsplit=1)[0].strip()


def condensed(messages: list[str]) -> list[str]:
    """The last line of each job step, in the order the steps began (a step's start line, its heartbeats
    and its end line collapse into the newest one)."""
    last: dict[str, str] = {}
    for m in messages:
        last[_key(m)] = m
    return list(last.values())


def format_left(seconds: float) -> str:
    return f"about {seconds:.0f} s left" if seconds < 90 else f"about {seconds / 60:.1f} min left"


def job_progress(stamped: list[tuple[float, str]], now: float, started: float) -> tuple[float | None, str]:
    """``(overall fraction or None, estimate text)`` of a job from its ``(time, line)`` pairs.

    The embedded model's conversion ("step k/4" lines): completed steps count by their measured share
    (:data:`CONVERSION_STEPS`), the running one by its elapsed time against its share (at most 95%),
    and the time left is the expected rest scaled by how fast the steps so far went. A
    :class:`tda.common.progress.Task` line with a count ("3/10 (30%) · ~12 s left") gives its own.
    """
    if not stamped:
        return None, ""
    t_last, last = stamped[-1]
    task = _TASK.search(last)
    steps = [(t, m, _STEP.search(m)) for t, m in stamped]
    steps = [(t, m, s) for t, m, s in steps if s and int(s.group(2)) == len(CONVERSION_STEPS)]
    if not steps:
        if task:
            return int(task.group(1)) / 100, (f"about {task.group(2).strip()} left" if task.group(2) else "")
        return None, ""
    k = int(steps[-1][2].group(1))
    k_start = next(t for t, _, s in steps if int(s.group(1)) == k)
    finished = any(int(s.group(1)) == k and ": done" in m for _, m, s in steps)
    w = [x / CONVERSION_S for x in CONVERSION_STEPS]
    done = sum(w[:k - 1])
    if finished:
        done += w[k - 1]
    else:
        done += w[k - 1] * min(0.95, (now - k_start) / CONVERSION_STEPS[k - 1])
    done = min(done, 0.99)
    spent = now - started
    expected_so_far = done * CONVERSION_S
    speed = spent / expected_so_far if expected_so_far > 2 else 1.0  # > 1 on a busy machine
    return done, format_left(max(0.0, (1 - done) * CONVERSION_S * speed))
