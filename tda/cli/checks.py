"""Argument checks that run before a model is loaded, and prompts from files or standard input.

Nothing here imports torch: a bad ``--layers``, an out-of-range ``--layer``, an unknown
``--model``/``--dtype``/``--device`` or an unwritable ``--out`` answer in about the time of
``tda --help``. Layer ranges come from the model's config (:func:`tda.models.specs.shape_of`,
which reads a JSON file); when it cannot be known without loading (a hub model), the same check
runs after the load.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tda.common.errors import BadInput

STDIN = "-"


def _read_file(path: Path) -> str:
    p = Path(path).expanduser()
    if not p.is_file():
        raise BadInput(f"prompt file {p} does not exist" if not p.exists() else f"prompt file {p} is not a file")
    try:
        text = p.read_text(encoding="utf-8")
        if "\x00" in text:
            raise BadInput(f"prompt file {p} is binary data (it holds NUL bytes)")
        return text
    except UnicodeDecodeError:
        raise BadInput(f"prompt file {p} is not UTF-8 text") from None
    except OSError as e:
        raise BadInput(f"cannot read prompt file {p}: {e.strerror}") from None


def _read_stdin() -> str:
    try:
        buf = getattr(sys.stdin, "buffer", None)
        data = buf.read() if buf is not None else sys.stdin.read()
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        raise BadInput("the prompt on standard input is not UTF-8 text") from None
    except OSError as e:
        raise BadInput(f"cannot read the prompt from standard input ({type(e).__name__})") from None
    if "\x00" in text:
        raise BadInput("the prompt on standard input is binary data (it holds NUL bytes)")
    return text


def read_prompt(prompt: str | None, prompt_file: Path | None, *, required: bool = True) -> str | None:
    """The prompt text: ``--prompt TEXT``, ``--prompt -`` (standard input) or ``--prompt-file PATH``.

    Exactly one source; the text must not be blank. With ``required=False`` neither may be given
    (returns None).
    """
    if prompt is not None and prompt_file is not None:
        raise BadInput("give either --prompt or --prompt-file, not both")
    if prompt is None and prompt_file is None:
        if required:
            raise BadInput("give the prompt with --prompt TEXT, --prompt - (standard input) or --prompt-file PATH")
        return None
    text = _read_file(prompt_file) if prompt_file is not None else _read_stdin() if prompt == STDIN else prompt
    if not text.strip():
        raise BadInput("the prompt is empty")
    return text


def read_prompts(prompts: list[str] | None, prompt_files: list[Path] | None) -> list[str]:
    """Prompts of a batch: each ``--prompt`` (``-`` reads standard input once) and each ``--prompt-file``."""
    if sum(p == STDIN for p in prompts or []) > 1:
        raise BadInput("standard input can be read once: give --prompt - at most once")
    out = []
    for p in prompts or []:
        out.append(_read_stdin() if p == STDIN else p)
    out += [_read_file(f) for f in prompt_files or []]
    if not out:
        raise BadInput("give the prompt with --prompt TEXT, --prompt - (standard input) or --prompt-file PATH")
    if any(not p.strip() for p in out):
        raise BadInput("the prompt is empty")
    return out


def parse_layers(text: str | None) -> list[int] | None:
    """``"all"``/empty -> None; ``"0,3,-1"`` -> ``[0, 3, -1]`` (negative indices count from the end)."""
    if text is None or text.strip().lower() == "all":
        return None
    if not text.strip():
        raise BadInput("--layers is empty; give comma-separated integers, or 'all'")
    parts = text.replace(" ", "").split(",")
    if any(x == "" for x in parts):
        raise BadInput(f"layers has an empty entry: '{text}' (give comma-separated integers, or 'all')")
    try:
        layers = [int(x) for x in parts]
    except ValueError:
        raise BadInput(f"layers must be comma-separated integers (negative count from the end) or 'all', "
                       f"got '{text}'") from None
    if not layers:
        raise BadInput("no layers given")
    return layers


def check_model_args(model: str, dtype: str = "fp32", device: str = "cpu", *, layers: list[int] | None = None,
                     prompt_tokens_max: int | None = None):
    """Check the model spec, dtype, device and layer indices without loading; returns the shape or None."""
    from tda.models.specs import DEVICE_NAMES, DTYPE_NAMES, resolve, shape_of

    resolve(model)
    if dtype not in DTYPE_NAMES:
        raise BadInput(f"unknown dtype '{dtype}'; use one of auto, fp32, bf16, fp16, gguf, gguf:Q8_0, gguf:Q4_0, gguf:Q4_K")
    if not (device in DEVICE_NAMES or str(device).startswith("cuda:")):
        raise BadInput(f"unknown device '{device}'; use cpu, cuda or auto")
    shape = shape_of(model)
    if shape is not None and layers:
        n = shape.n_layers
        for L in layers:
            if not -n <= L < n:
                raise BadInput(f"layer {L} out of range: the model has layers 0..{n - 1} "
                               f"(negative indices count from the end)")
    return shape


def cores() -> int:
    """The cores this process may run on."""
    import os

    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_environment() -> None:
    """The ``TDA_*`` variables every command reads, before any work: ``TDA_THREADS`` (all, auto
    or 1..cores), ``TDA_KERNELS_BACKEND`` (auto, cpp, torch) and ``TDA_CACHE_DIR`` (a folder that
    can be created and written). Each refusal names the variable."""
    import os

    threads = os.environ.get("TDA_THREADS", "").strip().lower()
    if threads and threads not in ("all", "auto"):
        n = cores()
        if not threads.isdigit() or not 1 <= int(threads) <= n:
            raise BadInput(f"TDA_THREADS must be 'all', 'auto' or a count from 1 to {n} (the cores here), "
                           f"got {threads!r}")
    backend = os.environ.get("TDA_KERNELS_BACKEND", "").strip().lower()
    if backend and backend not in ("auto", "cpp", "torch"):
        raise BadInput(f"TDA_KERNELS_BACKEND must be auto, cpp or torch, got {backend!r}")
    if os.environ.get("TDA_CACHE_DIR"):
        from tda.common.paths import cache_dir

        cache_dir()  # raises BadInput naming TDA_CACHE_DIR when it cannot be used


def check_sampling(sample: bool, temperature: float, top_p: float, top_k: int) -> None:
    """Sampling arguments, before the model loads: temperature finite (and > 0 with --sample),
    top-p in (0, 1], top-k >= 0 (0: all)."""
    import math

    if not math.isfinite(temperature) or (sample and temperature <= 0):
        raise BadInput(f"--temperature must be a finite number > 0 with --sample, got {temperature}")
    if not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise BadInput(f"--top-p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise BadInput(f"--top-k must be >= 0 (0: all tokens), got {top_k}")


def check_count(value: int | None, name: str, *, minimum: int = 0, allow: tuple[int, ...] = ()) -> None:
    """An integer option: at least ``minimum``, or one of the special values ``allow``."""
    if value is not None and value not in allow and value < minimum:
        extra = f" (or {', '.join(map(str, allow))})" if allow else ""
        raise BadInput(f"{name} must be >= {minimum}{extra}, got {value}")


def check_out_file(path: Path | None) -> None:
    """A writable output file path (its folder is created); None passes."""
    if path is not None:
        from tda.common.atomic import check_output_path

        check_output_path(path)


def check_out_dir(path: Path | None) -> None:
    """A writable output folder; created only when the command writes it (nothing is made here)."""
    if path is not None:
        from tda.common.atomic import check_output_dir_writable

        check_output_dir_writable(path)


def journal_path(journal: Path | None, resume: bool, out_dir: Path) -> Path | None:
    """The scoring journal of ``--journal``/``--resume`` (None: off), checked before the model loads:
    ``--journal PATH`` must name a file in an existing, writable folder; ``--resume`` alone means
    ``<out folder>.journal.jsonl`` beside the output folder (created with it)."""
    from tda.evaluate.journal import check_journal_path, default_journal_path

    if journal is not None:
        return check_journal_path(journal)
    if resume:
        return check_journal_path(default_journal_path(out_dir), create_folder=True)
    return None


def open_journal(path: Path | None, out_dir: Path):
    """A :class:`tda.evaluate.journal.Journal` on a path from :func:`journal_path` (None: None)."""
    if path is None:
        return None
    from tda.evaluate.journal import Journal, default_journal_path

    return Journal(path, create_folder=path == default_journal_path(out_dir))


def check_eval_memory(lm, heldout: list[str], summaries: list[dict], max_new_tokens: int) -> None:
    """`tda eval` up front: the longest held-out text (scored teacher-forced: logits for every
    token) and the longest summarisation prompt must fit the memory budget."""
    from tda.activations.budget import check_generation, prefill_plan
    from tda.common.data import xsum_prompt

    def n_tokens(text: str) -> int:
        return min(len(lm.tokenizer(text, add_special_tokens=True).input_ids), lm.n_ctx)

    if heldout:
        n = max(n_tokens(t) for t in heldout)
        check_generation(lm, n, 0, logits_rows=n, what=f"scoring a {n}-token held-out text")
    if summaries:
        n = max(n_tokens(xsum_prompt(r["article"])) for r in summaries)
        prefill_plan(lm, n, max_new_tokens, what=f"summarising from a {n}-token prompt")  # chunked prefill
