"""The shared typer app and small helpers every command module uses.

Nothing here imports torch: ``tda --help``, ``tda models`` and argument errors stay fast.
Help is plain text (``rich_markup_mode=None``): ``acts[layer, token, neuron]`` in a help text is
shown as written (no markup), and boolean flags appear as flags.
"""

from __future__ import annotations

import sys

import typer
from typer.core import TyperCommand


class Command(TyperCommand):
    """A command whose usage line names its arguments plainly: ``tda info [OPTIONS] FILE``."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param.metavar or param.name.upper()
                name = name + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


def use_plain_commands() -> None:
    """Give every registered command the :class:`Command` class (called once the modules are imported)."""
    for info in app.registered_commands:
        if info.cls in (None, TyperCommand):
            info.cls = Command


app = typer.Typer(
    name="tda",
    help="tda-workbench: which FFN neurons fire, and why; TDA masks, recall and sparse generation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root(
    memory_budget: str = typer.Option(
        None, "--memory-budget", metavar="SIZE",
        help="memory budget of a command's model and work, e.g. 8G or 500M; longer inputs are refused "
             "up front with one line (default: $TDA_MAX_MEMORY, else 60% of the memory available)"),
) -> None:
    from tda.cli.checks import check_environment
    from tda.common import memory

    check_environment()  # TDA_THREADS, TDA_KERNELS_BACKEND, TDA_CACHE_DIR: one line each, before any work
    memory.set_budget_override(memory.parse_size(memory_budget, "--memory-budget") if memory_budget is not None else None)


class LazyConsole:
    """rich's ``Console(**kw)``, created on first use (so `tda --help` does not import rich)."""

    def __init__(self, **kw):
        self._kw, self._console = kw, None

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._kw)
        return getattr(self._console, name)


def echo_err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def progress_printer(msg: str) -> None:
    echo_err(f"[tda] {msg}")


def load(spec: str, dtype: str = "fp32", device: str = "cpu"):
    """Load a model for a command, printing one-time conversion progress on stderr.

    The spec, dtype and device are checked first, without importing torch.
    """
    from tda.cli.checks import check_model_args
    from tda.cli.placement_opts import PLACEMENT

    check_model_args(spec, dtype, device)
    from tda.activations.budget import check_before_load

    check_before_load(spec, dtype)  # weights over the budget: refused before they are read
    import tda.engine.quant_kernels  # noqa: F401 (registers the kernels' choices with the GGUF loader: TDA_HEAD_TILES)
    from tda.models.load import load_model

    return load_model(spec, dtype=dtype, device=device, progress=progress_printer, **PLACEMENT)


ModelOpt = typer.Option("gemma-3-270m", "--model", "-m", help="model spec (see `tda models`)")
DtypeOpt = typer.Option("auto", "--dtype", help="fp32, bf16, fp16, or gguf: the GGUF's own quantized blocks "
                        "(the embedded model's file, a .gguf path; gguf:Q8_0|Q4_0|Q4_K quantizes an fp32 "
                        "model); auto = gguf for a .gguf file, else fp32")
DeviceOpt = typer.Option("cpu", "--device", help="cpu, cuda or auto")
JournalOpt = typer.Option(
    None, "--journal", metavar="PATH",
    help="keep every scored passage in this file (JSON lines, appended and synced as each batch is scored); "
         "rerunning the same command with the same journal continues where it stopped: passages already in it "
         "are read back, not scored again. Its folder must exist. A passage is reused only when everything "
         "that sets its numbers is the same (model, format, methods, CETT, batch size); more densities of the "
         "same methods score only the new variants (default: off)")
ResumeOpt = typer.Option(
    False, "--resume", help="journal as --journal does, to <out folder>.journal.jsonl beside the output folder: "
                            "give --resume on the first run and again on the rerun, and the rerun continues where "
                            "the first stopped (delete the journal to score afresh)")
PromptFileOpt = typer.Option(
    None, "--prompt-file", metavar="PATH",
    help="read the prompt from this UTF-8 text file instead of --prompt (no size limit; default: use --prompt)")
