"""``tda neuron``: why one FFN neuron fires (prompt activations, corpus contexts, cut-offs, vocabulary, masks)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tda.cli.app import (
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    PromptFileOpt,
    app,
    echo_err,
    load,
    progress_printer,
)


@app.command("neuron")
def neuron_cmd(
    layer: int = typer.Option(..., "--layer", "-l", help="the neuron's layer, 0..n_layers-1 (negative counts from the end)"),
    neuron: int = typer.Option(None, "--neuron", "-i",
                               help="the neuron's index in its layer, 0..d_ff-1 (required; no default)"),
    old_n: str = typer.Option(None, "-n", hidden=True,
                              help="not an option here: -n is --max-new-tokens in `tda generate`; refused "
                                   "with a line naming --neuron/-i (default: not given)"),
    prompt: str = typer.Option(None, "--prompt", "-p", metavar="TEXT",
                               help="prompt text; - reads it from standard input (default: --prompt-file)"),
    prompt_file: Path = PromptFileOpt,
    model: str = ModelOpt,
    cett: float = typer.Option(0.2, "--cett", help="CETT target of the calibrated thresholds t_L (TDA, TT)"),
    density: float = typer.Option(0.5, "--density", help="density of GRIFFIN, static, TEAL and CATS, in (0, 1]"),
    top: int = typer.Option(10, "--top", help="promoted/suppressed tokens to list"),
    contexts: int = typer.Option(5, "--contexts", help="top/bottom corpus contexts to list (at most 16)"),
    json_out: Path = typer.Option(None, "--json", help="also write the whole profile as JSON (default: not written)"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """One neuron's profile: a = act(gate)·up on the prompt's tokens, its top-activating corpus
    contexts, each method's cut-off against its corpus distribution, the tokens it promotes and
    suppresses, and which masks keep it. The corpus pass runs once per model (cached)."""
    from analysis.neuron import check_neuron, neuron_profile
    from tda.activations.neuron_corpus import TOP_K
    from tda.cli import checks
    from tda.common.errors import BadInput
    from tda.masks.build import check_density
    from tda.masks.cett import check_target

    if old_n is not None:
        raise BadInput("-n is not an option of tda neuron (in tda generate it is --max-new-tokens): "
                       "give the neuron as --neuron or -i")
    if neuron is None:
        raise BadInput("missing --neuron (-i): the neuron's index in its layer")
    text = checks.read_prompt(prompt, prompt_file)
    shape = checks.check_model_args(model, dtype, device)
    if shape is not None:
        if -shape.n_layers <= layer < 0:  # negative layers count from the end, as everywhere
            layer += shape.n_layers
        check_neuron(layer, neuron, shape.n_layers, shape.d_ff)
    check_target(cett)
    check_density(density)
    if top < 1 or not 1 <= contexts <= TOP_K:
        raise BadInput(f"need --top >= 1 and --contexts in 1..{TOP_K}")
    checks.check_out_file(json_out)
    lm = load(model, dtype, device)
    if -lm.ffn.n_layers <= layer < 0:
        layer += lm.ffn.n_layers

    def progress(done: int, total: int) -> None:
        if done == 1 or done == total or done % 20 == 0:
            progress_printer(f"corpus activations (one time per model): step {done}/{total}")

    prof = neuron_profile(lm, layer, neuron, text, cett_target=cett, density=density, k_tokens=top,
                          k_contexts=contexts, progress=progress)
    print(neuron_report(prof))
    if json_out is not None:
        from tda.common.atomic import write_text_atomic

        write_text_atomic(json_out, json.dumps(prof, indent=1))
        echo_err(f"wrote {json_out}")


def _context(row: dict) -> str:
    return f"{row['before']}[[{row['token']}]]{row['after']}"


def neuron_report(prof: dict) -> str:
    """The profile as readable tables (plain text)."""
    L, i = prof["layer"], prof["neuron"]
    cuts, corpus, masks = prof["cutoffs"], prof["corpus"], prof["masks"]
    p = prof["prompt"]
    lines = [f"=== neuron {i} of layer {L} ({prof['model_id']}, d_ff {prof['d_ff']}, {prof['activation_fn']})",
             "", "a = act(gate)·up on the prompt:" if prof["gated"] else "a = act(in) on the prompt:",
             f"  {'#':>3}  {'token':16} {'a':>10}" + (f" {'act(gate)':>10}" if p["gate"] else "")]
    for t, tok in enumerate(p["tokens"]):
        g = f" {p['gate'][t]:10.4f}" if p["gate"] else ""
        lines.append(f"  {t:>3}  {tok[:16]!r:16} {p['activation'][t]:10.4f}{g}")
    lines += ["", f"cut-offs (fraction of the {corpus['n_tokens']} corpus tokens beyond it):"]
    beyond = corpus["fraction_beyond"]
    for name, label in (("cett", f"CETT/TT t_L/|W_down[:,i]| (target {prof['cett_target']:g})"),
                        ("teal", f"TEAL tau at density {prof['density']:g}"),
                        ("cats", f"CATS tau_L at density {prof['density']:g}")):
        c = cuts.get(name)
        if c:
            lines.append(f"  {label:44} {c['on']:12} >= {c['value']:.4g}   ({beyond.get(name, float('nan')):.3f})")
    for name in ("top", "bottom"):
        lines += ["", f"{name}-activating corpus contexts:"]
        for row in corpus[name]:
            lines.append(f"  {row['activation']:10.4f}  text {row['text']:>3} pos {row['position']:>3}  {_context(row)!r}")
    lines += ["", "vocabulary (W_U · gamma ⊙ W_down[:, i]):"]
    for name in ("promoted", "suppressed"):
        lines.append(f"  {name:10} " + "  ".join(f"{r['token']!r} {r['logit']:+.3f}" for r in prof["vocab"][name]))
    lines += ["", "masks for this prompt:"]
    for name in ("tda", "griffin", "static"):
        m = masks[name]
        lines.append(f"  {name:8} {'keeps' if m['keeps'] else 'drops'} it (rank {m['rank']} of {prof['d_ff']})")
    for name in ("tt", "teal", "cats"):
        if masks.get(name):
            lines.append(f"  {name:8} active on {masks[name]['fraction']:.0%} of the prompt's tokens")
    return "\n".join(lines)
