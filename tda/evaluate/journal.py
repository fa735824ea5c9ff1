"""A resumable scoring journal: every scored batch appended to one JSONL file, read back on a rerun.

A full-set quality run scores for hours; a process that is stopped loses nothing it journalled.
:func:`tda.evaluate.scoring.score_units` appends one line per sequence once its batch is scored
(one write, flushed and fsynced)::

    {"key": "<hex>", "i": 12, "results": {"dense": [12.5, [464, 3290]], "griffin@0.5": ...}, "s": 1.84}

``s`` (optional: lines of older runs lack it) is the line's share of its batch's scoring seconds, so
that a run resumed over several processes still knows what its scoring cost in all
(:func:`scoring_time`).

``results`` holds what the caller's ``reduce`` returned for each variant label: floats (JSON keeps
Python floats exactly: ``repr`` round-trips), ints, lists, and tuples (written ``{"tuple": [...]}``
and read back as tuples). Lines with the same key merge, label by label (a later value wins), so a
rerun reads every label of a sequence that any earlier run journalled under that key: the same
command skips the batches whose every sequence is there, and the command with more densities of the
same methods scores only the new labels (:func:`unit_key`).

The **key** of a sequence changes whenever its numbers could (:func:`run_key`, :func:`unit_key`):
the model (spec, dtype, weight format, device type), the kernels (backend, compile flags, AMX
prefill on or off), the scoring kind (perplexity, cloze), the
sorted methods of *every* variant of the run (a token-wise method's numbers depend on which methods
were built in the same process, as they set the weights' layouts:
:func:`tda.evaluate.scoring.prepare_layouts`; the densities do not), CETT, a hash of the
thresholds and of the calibration texts, the batch size in tokens, the logits kept, the fast
path, and the token ids and split point (what the prefix fraction sets) of the sequence *and of
every sequence in its batch* (the batch's shape sets the rounding of the batched variants). A line
with another key is ignored.

Reading is forgiving where a kill can leave damage and loud elsewhere: a truncated last line (the
process died mid-write) is ignored silently and cut off before the next append; a damaged line in
the middle is ignored with one warning line for the file. One run per journal at a time (the
processes of one distributed job share it: each appends whole lines with one ``O_APPEND`` write).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from tda.common.errors import BadInput

VERSION = 2  # part of every key: a change of the line format or of the key's parts bumps it


# ----- keys (pure) --------------------------------------------------------------------------------
def _canon(x):
    """``x`` as plain JSON values (dict keys sorted on dumping); tensors and arrays as lists.
    Raises TypeError on anything else (a key must not depend on an object's ``repr``)."""
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, dict):
        return {str(k): _canon(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_canon(v) for v in x]
    if hasattr(x, "tolist"):  # torch tensor, numpy array or scalar
        return _canon(x.tolist())
    if hasattr(x, "thresholds"):  # a calibration object: its per-layer values are what a session reads
        return _canon(list(x.thresholds))
    raise TypeError(f"cannot key a journal on a {type(x).__name__}")


def digest(x) -> str:
    """A hex SHA-256 of ``x``'s canonical JSON (floats by ``repr``: exact)."""
    text = json.dumps(_canon(x), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def model_identity(lm) -> dict:
    """What of a loaded model sets its numbers: spec, id, kind, dtype, weight format, device type
    (``cuda``, not ``cuda:1``: every process of a distributed job keys alike) and context."""
    info = lm.info()
    return {"spec": info.get("spec"), "model_id": info.get("model_id"), "kind": info.get("kind"),
            "dtype": info.get("dtype"), "format": info.get("format"), "n_ctx": info.get("n_ctx"),
            "device": str(info.get("device", "")).split(":")[0],
            "kernels": kernels_identity(quantized=info.get("format") == "gguf")}


def kernels_identity(*, quantized: bool = False) -> dict:
    """What of the C++ kernels sets the rounding: their backend, compile flags (the instruction sets
    they use), whether the prefill of quantized weights runs on AMX tiles (``TDA_NO_AMX``) and, for a
    ``quantized`` model, which GEMV its decode steps take (:func:`~tda.engine.quant_kernels.decode_kernel`,
    and whether the lm_head takes it too: :func:`~tda.engine.quant_kernels.head_tiles`; on VNNI the
    kept fraction from which threshold rules' decode rows take it: :func:`~tda.engine.quant_kernels.dense_from`)."""
    from tda.engine import kernels, quant_kernels

    info = kernels.backend_info()
    ops = quant_kernels.quant_ops()
    amx = bool(ops is not None and hasattr(ops, "amx_prefill_ready") and ops.amx_prefill_ready())
    got = {"backend": info["backend"], "flags": info["flags"], "amx": amx}
    if quantized:
        got["decode"] = quant_kernels.decode_kernel(ops) or "blocks"
        if got["decode"] != "blocks" and quant_kernels.head_tiles():
            got["head"] = "tiles"  # a Q8_0 lm_head's GEMV too (other bits than the blocks')
        if got["decode"] == "vnni":  # threshold rules' decode rows on the dense tiles from this kept fraction
            got["dense_from"] = quant_kernels.dense_from()
    return got


def run_key(*, model: dict, kind: str, methods: list[str], cett: float, thresholds, calibration_texts,
            batch_tokens: int, keep_last: int | None, fast) -> str:
    """The part of every sequence's key that one :func:`tda.evaluate.scoring.score_units` call shares;
    ``methods``: the method of every variant of the run (a set: order and repeats do not count)."""
    if not kind or not methods:
        raise BadInput("a journal key needs the scoring kind and the variants' methods")
    return digest({"v": VERSION, "model": model, "kind": kind, "methods": sorted(set(methods)), "cett": float(cett),
                   "thresholds": digest(thresholds or {}), "calibration": digest(calibration_texts),
                   "batch_tokens": int(batch_tokens), "keep_last": keep_last, "fast": fast})


def unit_key(run: str, batch: list[tuple[list[int], int]], j: int, tag=None) -> str:
    """Key of row ``j`` of a batch ``[(token ids, split point) per row]`` under run key ``run``
    (``tag``: anything else its result depends on, e.g. a cloze target's token count)."""
    if not 0 <= j < len(batch):
        raise BadInput(f"row {j} is not in a batch of {len(batch)}")
    rows = [[list(map(int, ids)), int(k)] for ids, k in batch]
    return digest({"run": run, "batch": digest(rows), "row": j, "tag": tag})


# ----- values and lines (pure) -------------------------------------------------------------------
def encode_value(x):
    """A ``reduce`` result as JSON: floats, ints, strings, lists as they are, tuples tagged."""
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, tuple):
        return {"tuple": [encode_value(v) for v in x]}
    if isinstance(x, list):
        return [encode_value(v) for v in x]
    raise TypeError(f"a journal keeps floats, ints, strings, lists and tuples, not a {type(x).__name__}")


def decode_value(x):
    """The inverse of :func:`encode_value`."""
    if isinstance(x, dict):
        if set(x) != {"tuple"} or not isinstance(x["tuple"], list):
            raise ValueError("not a journal value")
        return tuple(decode_value(v) for v in x["tuple"])
    if isinstance(x, list):
        return [decode_value(v) for v in x]
    return x


def to_line(key: str, i: int, results: dict, seconds: float | None = None) -> str:
    """One journal line (``\\n``-terminated) for sequence ``i``'s ``{label: value}`` (``seconds``: its
    share of the batch's scoring time)."""
    d = {"key": key, "i": int(i), "results": {str(k): encode_value(v) for k, v in results.items()}}
    if seconds is not None:
        if not seconds >= 0:
            raise BadInput(f"a scoring time must be >= 0 seconds, got {seconds}")
        d["s"] = round(float(seconds), 3)
    return json.dumps(d, separators=(",", ":")) + "\n"


def parse_line(line: str) -> tuple[str, dict]:
    """``(key, {label: value})`` of one line; ValueError when it is not a journal line."""
    d = json.loads(line)
    if not isinstance(d, dict) or not isinstance(d.get("key"), str) or not isinstance(d.get("i"), int) \
            or not isinstance(d.get("results"), dict):
        raise ValueError("not a journal line")
    return d["key"], {k: decode_value(v) for k, v in d["results"].items()}


def parse(data: bytes) -> tuple[dict[str, dict], list[int], int]:
    """``(entries {key: results}, damaged line numbers (1-based), complete_bytes)`` of a journal's
    bytes. The part after the last newline is a truncated line: not parsed, not damage;
    ``complete_bytes`` is where it starts. Lines with the same key merge label by label: a later
    line's value of a label wins."""
    end = data.rfind(b"\n") + 1
    entries: dict[str, dict] = {}
    damaged = []
    for n, raw in enumerate(data[:end].split(b"\n")[:-1], 1):
        if not raw.strip():
            continue
        try:
            key, res = parse_line(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            damaged.append(n)
            continue
        entries.setdefault(key, {}).update(res)
    return entries, damaged, end


def scoring_time(data: bytes) -> dict:
    """``{"seconds", "lines", "timed_lines"}`` of a journal's bytes: the scoring seconds its complete
    lines record (summed over every process that appended to it) and how many lines carry one."""
    total, lines, timed = 0.0, 0, 0
    for raw in data[:data.rfind(b"\n") + 1].split(b"\n")[:-1]:
        try:
            d = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            continue
        if not isinstance(d, dict) or "key" not in d:
            continue
        lines += 1
        s = d.get("s")
        if isinstance(s, (int, float)) and not isinstance(s, bool) and s >= 0:
            total += float(s)
            timed += 1
    return {"seconds": round(total, 1), "lines": lines, "timed_lines": timed}


# ----- the file ------------------------------------------------------------------------------------
def check_journal_path(path: str | os.PathLike, *, create_folder: bool = False) -> Path:
    """Validate a journal path before any work (creates nothing unless ``create_folder``): an existing
    regular file that can be read and appended to, or a new file in a writable folder (which must
    exist, unless ``create_folder``: then its nearest existing ancestor must be writable)."""
    from tda.common.atomic import check_output_dir_writable, require_writable_folder

    if str(path).strip() == "":
        raise BadInput("the journal path is empty")
    p = Path(path).expanduser()
    if p.is_dir():
        raise BadInput(f"journal {p} is a directory; give a file name (e.g. {p / 'run.journal.jsonl'})")
    if p.exists():
        if not p.is_file():
            raise BadInput(f"journal {p} is not a regular file")
        if not os.access(p, os.R_OK | os.W_OK):
            raise BadInput(f"journal {p} is not readable and writable")
        return p
    folder = p.parent
    if create_folder:
        check_output_dir_writable(folder)
        return p
    if not folder.exists():
        raise BadInput(f"cannot write journal {p}: folder {folder} does not exist")
    require_writable_folder(folder, p, f"cannot write journal {p}: folder ")
    return p


def default_journal_path(out_dir: str | os.PathLike) -> Path:
    """``<out folder>.journal.jsonl`` beside the output folder (not inside it: that is swapped whole)."""
    p = Path(out_dir).expanduser()
    return p.parent / f"{p.name}.journal.jsonl"


class Journal:
    """One journal file: :meth:`read` its entries, :meth:`append` a scored batch.

    ``warn(msg)`` gets the one warning line about damaged lines (default: stderr via
    :func:`tda.common.progress.note`); ``create_folder``: the first append creates the file's folder."""

    def __init__(self, path: str | os.PathLike, *, warn: Callable[[str], None] | None = None,
                 create_folder: bool = False):
        self.path = Path(path).expanduser()
        self.warn = warn
        self.create_folder = create_folder
        self._fd: int | None = None

    def read(self, warn: Callable[[str], None] | None = None) -> dict[str, dict]:
        """``{key: {label: value}}`` of every complete line (none when the file does not exist yet).
        A truncated last line is cut off so that the next append starts on a line of its own;
        damaged lines give one warning line to ``warn`` (else the journal's own, else stderr)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise BadInput(f"cannot read journal {self.path}: {e.strerror or e}") from None
        entries, damaged, end = parse(data)
        if damaged:
            shown = ", ".join(map(str, damaged[:5])) + (", ..." if len(damaged) > 5 else "")
            msg = f"warning: journal {self.path}: {len(damaged)} damaged line(s) ignored (line {shown})"
            sink = warn or self.warn
            if sink is not None:
                sink(msg)
            else:
                from tda.common import progress

                progress.note(msg)
        if end < len(data):  # killed mid-write: the partial line goes
            self.close()
            try:
                os.truncate(self.path, end)
            except OSError as e:
                raise BadInput(f"cannot write journal {self.path}: {e.strerror or e}") from None
        return entries

    def append(self, rows: list[tuple[str, int, dict]], seconds: float | None = None) -> None:
        """Append ``[(key, i, {label: value})]`` as one write, flushed and fsynced; ``seconds``: the
        batch's scoring time, shared out evenly over its lines."""
        if not rows:
            return
        share = None if seconds is None else seconds / len(rows)
        data = "".join(to_line(k, i, r, share) for k, i, r in rows).encode()
        try:
            if self._fd is None:
                if self.create_folder:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            os.fsync(self._fd)
        except OSError as e:
            raise BadInput(f"cannot write journal {self.path}: {e.strerror or e}") from None

    def scoring_time(self) -> dict:
        """:func:`scoring_time` of the file (zeros when it does not exist yet)."""
        try:
            return scoring_time(self.path.read_bytes())
        except FileNotFoundError:
            return {"seconds": 0.0, "lines": 0, "timed_lines": 0}
        except OSError as e:
            raise BadInput(f"cannot read journal {self.path}: {e.strerror or e}") from None

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # at interpreter exit module globals (os) may be gone; the OS closes the fd
            pass
