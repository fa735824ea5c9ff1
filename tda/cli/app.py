"""The shared typer app and small helpers every command module uses."""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="tda",
    help="tda-workbench: which FFN neurons fire, and why; TDA masks, recall and sparse generation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def echo_err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def progress_printer(msg: str) -> None:
    echo_err(f"[tda] {msg}")


def load(spec: str, dtype: str = "fp32", device: str = "cpu"):
    """Load a model for a command, printing one-time conversion progress on stderr."""
    from tda.cli.placement_opts import PLACEMENT
    from tda.models.load import load_model

    return load_model(spec, dtype=dtype, device=device, progress=progress_printer, **PLACEMENT)


ModelOpt = typer.Option("gemma-3-270m", "--model", "-m", help="model spec (see `tda models`)")
DtypeOpt = typer.Option("fp32", "--dtype", help="fp32, bf16 or fp16")
DeviceOpt = typer.Option("cpu", "--device", help="cpu, cuda or auto")
