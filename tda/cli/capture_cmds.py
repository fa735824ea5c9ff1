"""``tda models``, ``tda capture``, ``tda info``."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from tda.cli.app import DeviceOpt, DtypeOpt, LazyConsole, ModelOpt, PromptFileOpt, app, load

console = LazyConsole(width=None if sys.stdout.isatty() else 160)  # lines stay whole when piped


@app.command()
def models() -> None:
    """List the model specs, whether the embedded model is cached, and the weight bytes a dense
    decode step reads in each format (fp32, bf16, gguf: the GGUF's own blocks)."""
    from rich.table import Table

    from tda.models.specs import list_specs, step_bytes

    table = Table("spec", "kind", "formats: MB read per decode step", "note")
    for row in list_specs():
        b = step_bytes(row["spec"]) if row["kind"] not in ("control", "local", "hub") else {}
        fmt = " · ".join(f"{k} {_mb(v)}" for k, v in b.items() if k != "gguf_file")
        if "gguf_file" in b:
            fmt += f" (the file's {_mb(b['gguf_file'])})"
        elif row["kind"].startswith("embedded"):
            fmt += " · gguf: after a first --dtype gguf load"
        table.add_row(row["spec"], row["kind"], fmt, row["note"])
    console.print(table)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f}" if n >= 1e7 else f"{n / 1e6:.2f}"


def _summary(cap, title: str) -> None:
    from rich.table import Table

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
    prompt: str = typer.Option(None, "--prompt", "-p",
                               help="the text to capture; - reads it from standard input (default: --prompt-file)"),
    prompt_file: Path = PromptFileOpt,
    out: Path = typer.Option(..., "--out", "-o", help="output .safetensors file (a folder with --data)"),
    data: Path = typer.Option(None, "--data",
                              help="capture every text of a .json/.jsonl file ('text' field, batch mode) into the "
                                   "folder --out (default: one prompt, --prompt or --prompt-file)"),
    limit: int = typer.Option(None, "--limit", help="with --data: only the first N texts (default: all)"),
    model: str = ModelOpt,
    layers: str = typer.Option("all", "--layers",
                               help="comma-separated layer indices, or 'all'; negative indices count from the "
                                    "end (-1 is the last layer)"),
    mode: str = typer.Option("sequence", "--mode", help="sequence or isolated"),
    backend: str = typer.Option("hooks", "--backend", help="hooks (plain forward hooks) or tl (TransformerLens)"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """Capture FFN activations acts[layer, token, neuron] of a prompt and write them to --out.

    Long prompts run in chunks through the KV cache within the memory budget (see --memory-budget
    of `tda`); a prompt that cannot fit is refused before any work.
    """
    from tda.cli import checks
    from tda.common.errors import BadInput

    if mode not in ("sequence", "isolated"):
        raise BadInput(f"unknown mode '{mode}'; use sequence or isolated")
    if backend not in ("hooks", "tl"):
        raise BadInput(f"unknown capture backend '{backend}'; use hooks or tl")
    layer_list = checks.parse_layers(layers)
    checks.check_model_args(model, dtype, device, layers=layer_list)
    if data is not None:  # a corpus: one file per text plus index.json (sharded under torchrun/accelerate)
        return _capture_corpus(data, out, model, layer_list, limit, backend, dtype, device,
                               prompt if prompt is not None else prompt_file)
    text = checks.read_prompt(prompt, prompt_file)
    checks.check_out_file(out)  # fail before loading a model
    lm = load(model, dtype, device)

    from tda.activations.capture import capture as do_capture

    with console.status(f"capturing {mode} activations..."):
        cap = do_capture(lm, text, layers=layer_list, mode=mode, backend=backend)
    cap.save(out)
    _summary(cap, f"wrote {out}")


def _capture_corpus(data, out, model, layers, limit, backend, dtype, device, prompt) -> None:
    from tda.activations.capture import capture_to_dir
    from tda.common import distributed
    from tda.common.atomic import check_output_dir, check_output_dir_writable
    from tda.common.data import load_texts
    from tda.common.errors import BadInput

    if prompt is not None:
        raise BadInput("give exactly one of --prompt, --prompt-file or --data")
    if limit is not None and limit < 1:
        raise BadInput(f"limit must be at least 1, got {limit}")
    texts = [t for t in load_texts(data, limit=limit) if t.strip()]
    if not texts:
        raise BadInput(f"{data} holds no texts")
    out_dir = check_output_dir_writable(out)  # created when the set is complete
    lm = load(model, dtype, device)
    with console.status(f"capturing {len(texts)} texts (batch mode)..."):
        if distributed.is_distributed():  # every process writes its share into the one folder
            capture_to_dir(lm, texts, check_output_dir(out), layers=layers, backend=backend)
        else:  # one complete set or the previous one, never a mix
            from tda.common.atomic_dir import atomic_dir

            with atomic_dir(out_dir, command="capture") as tmp_dir:
                capture_to_dir(lm, texts, tmp_dir, layers=layers, backend=backend)
    if distributed.is_main():
        _set_summary(out_dir)


def _set_summary(folder: Path) -> None:
    from tda.activations.capture import Capture, read_index

    index = read_index(folder)
    rows = index["captures"]
    first = Capture.load(folder / rows[0]["file"]) if rows else None
    console.print(
        f"[bold]{folder}[/bold]: capture set of {len(rows)} texts, {sum(r['n_tokens'] for r in rows)} tokens, "
        f"model {index.get('model_id')}"
        + (f", mode {first.mode}, layers {first.layers}, d_ff {first.d_ff}" if first else ""), soft_wrap=True
    )
    for r in rows[:5]:
        console.print(f"  {r['file']}: {r['n_tokens']} tokens  {r['text'][:48]!r}", markup=False, soft_wrap=True)
    if len(rows) > 5:
        console.print(f"  ... and {len(rows) - 5} more")


@app.command()
def info(file: Path = typer.Argument(..., metavar="FILE",
                                    help="a capture file written by `tda capture`, or a capture folder (--data)")) -> None:
    """Print what a capture file (or a capture folder with its index.json) holds."""
    from tda.activations.capture import Capture

    if file.is_dir():
        _set_summary(file)
        return
    cap = Capture.load(file)
    _summary(cap, str(file))
    shown = " ".join(cap.tokens[:24]) + (" ..." if cap.n_tokens > 24 else "")
    console.print(f"tokens: {shown}")
    console.print(f"meta: {cap.meta}")
