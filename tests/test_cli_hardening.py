"""CLI hardening (issue #11): checks before the model loads, exit codes and one-line messages,
a fast start (no torch for help, `models` and argument errors), complete help, prompts from files."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs the CLI in a fresh interpreter and reports the exit code and whether torch was imported.
_PROBE = """
import json, sys
from tda.cli.main import main
code = main(sys.argv[1:])
print("\\n" + json.dumps({"code": code, "torch": "torch" in sys.modules}))
"""


def run_fresh(*args, stdin: str | None = None) -> tuple[int, bool, str, str]:
    """(exit code, torch imported?, stdout without the probe line, stderr) of ``tda ARGS`` in a subprocess."""
    p = subprocess.run([sys.executable, "-c", _PROBE, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                       input=stdin, timeout=300)
    *out, last = p.stdout.rstrip("\n").split("\n")
    info = json.loads(last)
    return info["code"], info["torch"], "\n".join(out), p.stderr


def _one_line(err: str) -> bool:
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err


# ----- start-up: no torch for help, models and argument errors -------------------------------------------
@pytest.mark.parametrize("args", [["--help"], ["capture", "--help"], ["generate", "--help"], ["models"]])
def test_help_and_models_do_not_import_torch(args):
    code, torch_imported, out, err = run_fresh(*args)
    assert code == 0, err
    assert not torch_imported, f"`tda {' '.join(args)}` imported torch"
    assert "Usage" in out or "gemma-3-270m" in out


def test_python_m_tda_help_imports_no_torch():
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "tda", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and "Usage: tda" in p.stdout
    imported = {line.split("|")[-1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported and "transformers" not in imported and "rich.console" not in imported


@pytest.mark.parametrize("args, message", [
    (["capture", "--model", "tiny-llama", "-p", "hi", "--layers", "a,b", "--out", "OUT/x.st"], "comma-separated"),
    (["capture", "--model", "tiny-llama", "-p", "hi", "--layers", "0,7", "--out", "OUT/x.st"], "layer 7 out of range"),
    (["capture", "--model", "tiny-llama", "-p", "hi", "--out", "/proc/x.safetensors"], "cannot write /proc/x.safetensors"),
    (["capture", "--model", "no-such-model", "-p", "hi", "--out", "OUT/x.st"], "unknown model spec"),
    (["capture", "--model", "tiny-llama", "-p", "hi", "--dtype", "fp8", "--out", "OUT/x.st"], "unknown dtype"),
    (["inertia", "--model", "tiny-llama", "-p", "hi there", "--layer", "99"], "layer 99 out of range"),
    (["generate", "--model", "tiny-llama", "--json", "/proc/g.json", "-p", "hi"], "cannot write /proc/g.json"),
    (["recall", "--model", "tiny-llama", "-p", "hi", "--out", "/proc/recall"], "/proc"),
])
def test_bad_arguments_answer_before_loading(tmp_path, args, message):
    args = [a.replace("OUT", str(tmp_path)) for a in args]
    code, torch_imported, _, err = run_fresh(*args)
    assert code == 2 and message in err and _one_line(err), err
    assert not torch_imported, "the error came after importing torch (and loading the model)"
    assert ".tmp" not in err and list(tmp_path.iterdir()) == []


def test_inertia_layer_range_of_the_embedded_model_from_its_config():
    from tda.models import embedded

    if not embedded.cache_is_valid():
        pytest.skip("the embedded model is not cached here")
    code, torch_imported, _, err = run_fresh("inertia", "-p", "hello there", "--layer", "99")
    assert code == 2 and "layer 99 out of range: the model has layers 0..17" in err and not torch_imported


# ----- exit codes and messages ---------------------------------------------------------------------------
def test_no_arguments_prints_help_without_error(run_cli):
    code, out, err = run_cli()
    assert code == 0 and "Usage" in out and "capture" in out and err == ""


@pytest.mark.parametrize("args", [["capture", "--bogus"], ["nosuchcommand"], ["info"]])
def test_usage_errors_are_one_line_exit_2(run_cli, args):
    code, _, err = run_cli(*args)
    assert code == 2 and _one_line(err) and err.startswith("error: ")


def test_failed_write_names_the_users_path(tmp_path):
    from tda.common.atomic import atomic_path
    from tda.common.errors import BadInput

    target = tmp_path / "x.safetensors"
    with pytest.raises(BadInput) as e, atomic_path(target) as tmp:
        raise OSError(28, "No space left on device", str(tmp))
    assert str(e.value) == f"cannot write {target}: No space left on device"
    assert list(tmp_path.iterdir()) == []


def test_negative_layers_are_documented_and_count_from_the_end(run_cli, tmp_path):
    from tda.activations.capture import Capture

    code, out, _ = run_cli("capture", "--help")
    assert "negative" in out and "-1 is the last layer" in out
    code, _, err = run_cli("capture", "-m", "tiny-llama", "-p", "one two three", "--layers", "-1",
                           "--out", tmp_path / "c.st")
    assert code == 0, err
    assert Capture.load(tmp_path / "c.st").layers == [2]
    readme = (ROOT / "README.md").read_text()
    assert "negative" in readme and "-1" in readme


def test_inertia_says_how_many_tokens_it_used(run_cli):
    code, out, err = run_cli("inertia", "-m", "tiny-llama", "-p", "one two three four", "--tokens", "16",
                             "--rule", "topp")
    assert code == 0, err
    import re

    used = re.search(r"note: used (\d+) prompt token\(s\) and \d+ random tokens, fewer than --tokens 16", err)
    assert used and int(used[1]) < 16


# ----- help texts ----------------------------------------------------------------------------------------
def _commands():
    import typer

    from tda.cli.app import app
    from tda.cli.main import _register
    from tda.cli.placement_opts import add_placement_options

    _register()
    group = add_placement_options(typer.main.get_command(app))  # as the CLI builds it
    return group, group.commands


def test_every_option_has_a_description_and_a_default():
    group, commands = _commands()
    missing = []
    for name, cmd in {"tda": group, **commands}.items():
        for p in cmd.params:
            if p.param_type_name != "option":
                if not p.help:
                    missing.append(f"{name} {p.name}: no help")
                continue
            if not (p.help or "").strip():
                missing.append(f"{name} {p.opts[0]}: no help")
            elif not (p.required or getattr(p, "is_flag", False) or p.default is not None
                      or "default" in p.help.lower()):
                missing.append(f"{name} {p.opts[0]}: default not shown")
    assert not missing, "\n".join(missing)


def test_help_shows_flags_as_flags_and_argument_names(run_cli):
    _, commands = _commands()
    for name in ["", *commands]:
        code, out, _ = run_cli(*([name] if name else []), "--help")
        assert code == 0 and "<bool>" not in out, name
    _, out, _ = run_cli("info", "--help")
    assert "Usage: tda info [OPTIONS] FILE" in out and "{file}" not in out
    _, out, _ = run_cli("generate", "--help")
    assert "calibrated" in out and "CETT" in out and "--sample " in out
    _, out, _ = run_cli("capture", "--help")
    assert "acts[layer, token, neuron]" in out  # no markup eats the brackets


def test_generate_prints_prompt_and_continuation_apart(run_cli):
    code, out, err = run_cli("generate", "-m", "tiny-llama", "-p", "the cat sat on", "-n", "4", "--min-new-tokens", "4")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "=== prompt" and lines[1] == "the cat sat on" and lines[2].startswith("=== continuation")


# ----- prompts from files and standard input --------------------------------------------------------------
def test_prompt_file_and_stdin_give_the_same_capture(run_cli, tmp_path, monkeypatch):
    from tda.activations.capture import Capture

    text = "Almost one million people visited the city"
    f = tmp_path / "p.txt"
    f.write_text(text, encoding="utf-8")
    assert run_cli("capture", "-m", "tiny-llama", "-p", text, "--out", tmp_path / "a.st")[0] == 0
    assert run_cli("capture", "-m", "tiny-llama", "--prompt-file", f, "--out", tmp_path / "b.st")[0] == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    assert run_cli("capture", "-m", "tiny-llama", "-p", "-", "--out", tmp_path / "c.st")[0] == 0
    a, b, c = (Capture.load(tmp_path / n) for n in ("a.st", "b.st", "c.st"))
    assert a.token_ids == b.token_ids == c.token_ids and a.text == b.text == c.text == text


def test_prompt_file_beyond_a_shell_argument(run_cli, tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("word " * 40_000, encoding="utf-8")  # 200 KB: more than one shell argument may hold
    code, _, err = run_cli("capture", "-m", "tiny-llama", "--prompt-file", big, "--out", tmp_path / "o.st")
    assert code == 2 and "the prompt has 120001 tokens; the limit is 512" in err  # read whole, then checked
    code, _, err = run_cli("generate", "-m", "tiny-llama", "--prompt-file", big, "-n", "2")
    assert code == 2 and "120001" in err and _one_line(err)


@pytest.mark.parametrize("cmd", [["capture", "--out", "OUT/o.st"], ["inertia"], ["recall", "--out", "OUT/r"],
                                 ["generate"]])
def test_every_prompt_command_takes_prompt_files(run_cli, tmp_path, cmd):
    cmd = [c.replace("OUT", str(tmp_path)) for c in cmd]
    code, out, _ = run_cli(cmd[0], "--help")
    assert "--prompt-file" in out and "standard input" in out
    code, _, err = run_cli(*cmd, "-m", "tiny-llama", "--prompt-file", tmp_path / "missing.txt")
    assert code == 2 and "prompt file" in err and "does not exist" in err and _one_line(err)
    if cmd[0] != "generate":  # generate takes both: a batch of prompts
        f = tmp_path / "p.txt"
        f.write_text("hello")
        code, _, err = run_cli(*cmd, "-m", "tiny-llama", "--prompt-file", f, "-p", "hello")
        assert code == 2 and _one_line(err) and "--prompt-file" in err
