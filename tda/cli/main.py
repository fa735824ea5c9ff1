"""Entry point of the ``tda`` command: registers every command module, turns errors into one line.

Exit codes: 0 ok; 2 bad input or a usage error (one line on stderr); 3 unexpected error;
130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 129 hung up (SIGHUP) — one line on stderr.
"""

from __future__ import annotations

import os
import sys

from tda.cli.app import app, echo_err, use_plain_commands

# One module per topic; importing a module registers its commands on ``app``.
COMMAND_MODULES = [
    "tda.cli.capture_cmds",
    "tda.cli.study_cmds",
    "tda.cli.engine_cmds",
    "tda.cli.generate_cmds",
    "tda.cli.methods_cmd",
    "tda.cli.frontier_cmds",
    "tda.cli.neuron_cmd",
    "tda.cli.data_cmd",
    "tda.cli.predictor_cmd",
]


def _register() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(name)
    use_plain_commands()


def _usage_line(e) -> str:
    """One line for a usage error: the message and where to find help."""
    msg = " ".join(str(e.format_message()).split())
    ctx = getattr(e, "ctx", None)
    where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    return f"error: {msg}{where}"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input or usage error, 3 unexpected)."""
    from typer import Abort as TyperAbort
    from typer import Exit as TyperExit
    from typer._click import exceptions as tclick

    from tda.common import distributed, signals
    from tda.common.errors import TDAError

    signals.install()  # SIGTERM/SIGHUP unwind like Ctrl-C: temporary files go, children end
    distributed.quiet_other_ranks()  # under torchrun/accelerate: progress and tables once
    try:
        _register()
        import typer.main

        from tda.cli.placement_opts import add_placement_options

        command = add_placement_options(typer.main.get_command(app))  # + --device-map/--max-memory
        rv = command(args=argv, standalone_mode=False, prog_name="tda")
        # standalone_mode=False: typer turns Ctrl-C into Exit(130) and returns its code (as it
        # does for a command's own `raise typer.Exit(n)`); a command that finished returns None.
        if isinstance(rv, int) and not isinstance(rv, bool) and rv != 0:
            if rv == 130:
                echo_err(signals.describe())
                return signals.exit_code()
            return rv
        return 0
    except TDAError as e:
        distributed.report_error(f"error: {e}", e)  # one line for the whole job
        return 2
    except tclick.NoArgsIsHelpError as e:  # `tda` alone: the help, as with --help
        text = e.format_message()
        if text.strip():
            print(text)
        return 0
    except tclick.UsageError as e:
        echo_err(_usage_line(e))
        return 2
    except tclick.ClickException as e:
        echo_err(f"error: {' '.join(str(e.format_message()).split())}")
        return 2
    except TyperExit as e:
        if e.exit_code == 130:
            echo_err(signals.describe())
            return signals.exit_code()
        return e.exit_code
    except (TyperAbort, KeyboardInterrupt):
        echo_err(signals.describe())
        return signals.exit_code()
    except Exception as e:  # never a traceback for the user; TDA_DEBUG=1 shows it
        if os.environ.get("TDA_DEBUG"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        distributed.report_error(f"error: {type(e).__name__}: {first} (set TDA_DEBUG=1 for a traceback)", e)
        return 3


def _entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _entry()
