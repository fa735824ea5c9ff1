"""``tda models``, ``tda capture``, ``tda info``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tda.cli.app import DeviceOpt, DtypeOpt, ModelOpt, app, load

console = Console()


@app.command()
def models() -> None:
    """List the model specs and whether the embedded model is cached."""
    from tda.models.load import list_specs

    table = Table("spec", "kind", "note")
    for row in list_specs():
        table.add_row(row["spec"], row["kind"], row["note"])
    console.print(table)


def _summary(cap, title: str) -> None:
    from tda.activations.capture import active_fraction

    console.print(
        f"[bold]{title}[/bold]: model {cap.model_id}, mode {cap.mode}, {cap.n_tokens} tokens, "
        f"{len(cap.layers)} layers, d_ff {cap.d_ff}"
    )
    table = Table("layer", "|a|>0.01", "mean |a|", "max |a|")
    for i, (L, frac) in enumerate(zip(cap.layers, active_fraction(cap))):
        a = cap.acts[i].abs()
        table.add_row(str(L), f"{frac:.3f}", f"{a.mean():.4f}", f"{a.max():.2f}")
    console.print(table)


@app.command()
def capture(
    prompt: str = typer.Option(..., "--prompt", "-p", help="the text to capture"),
    out: Path = typer.Option(..., "--out", "-o", help="output .safetensors file"),
    model: str = ModelOpt,
    layers: str = typer.Option("all", "--layers", help="comma-separated layer indices, or 'all'"),
    mode: str = typer.Option("sequence", "--mode", help="sequence or isolated"),
    backend: str = typer.Option("hooks", "--backend", help="hooks (plain forward hooks) or tl (TransformerLens)"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """Capture FFN activations acts[layer, token, neuron] of a prompt and write them to --out."""
    from tda.activations.capture import capture as do_capture
    from tda.activations.capture import tokenize
    from tda.common.atomic import check_output_path
    from tda.common.errors import BadInput

    if not prompt.strip():
        raise BadInput("the prompt is empty")
    if mode not in ("sequence", "isolated"):
        raise BadInput(f"unknown mode '{mode}'; use sequence or isolated")
    check_output_path(out)  # fail before loading a model
    lm = load(model, dtype, device)
    tokenize(lm, prompt)
    with console.status(f"capturing {mode} activations..."):
        cap = do_capture(lm, prompt, layers=layers, mode=mode, backend=backend)
    cap.save(out)
    _summary(cap, f"wrote {out}")


@app.command()
def info(file: Path = typer.Argument(..., help="a capture file written by `tda capture`")) -> None:
    """Print what a capture file holds."""
    from tda.activations.capture import Capture

    cap = Capture.load(file)
    _summary(cap, str(file))
    shown = " ".join(cap.tokens[:24]) + (" ..." if cap.n_tokens > 24 else "")
    console.print(f"tokens: {shown}")
    console.print(f"meta: {cap.meta}")
