"""``--device-map`` and ``--max-memory`` on every command that takes ``--device``.

Added to the click commands when the CLI starts (no command declares them), so each command
that loads a model can place it with accelerate's big-model inference: layers spread over the
GPUs, the rest offloaded to CPU RAM and disk (:mod:`tda.models.placement`). The values are
validated as they are parsed and read by :func:`tda.cli.app.load`.
"""

from __future__ import annotations

import copy

import click
import typer

PLACEMENT: dict = {"device_map": None, "max_memory": None}


def _options_source(
    device_map: str = typer.Option(
        None, "--device-map",
        help="place the model with accelerate (replaces --device): auto, balanced, sequential, or a .json "
             "{module: device} file; layers spread over the GPUs, the rest offloaded to CPU RAM/disk "
             "(default: not set, --device places the whole model)"),
    max_memory: str = typer.Option(None, "--max-memory",
                                   help="with --device-map: memory per device, e.g. 0=20GiB,1=20GiB,cpu=60GiB "
                                        "(default: what accelerate finds free; the budget of the work itself is "
                                        "tda --memory-budget)"),
) -> None:
    """Only here so that typer builds the two options (help panel and all) like every other option."""


def _store(key: str):
    def callback(ctx, param, value):
        from tda.models import placement

        if value is not None:
            PLACEMENT[key] = placement.check_device_map(value) if key == "device_map" \
                else placement.parse_max_memory(value)
        return value
    return callback


def add_placement_options(group: click.Group) -> click.Group:
    """Add the two options to every subcommand of ``group`` that has a ``--device`` option."""
    PLACEMENT.update(device_map=None, max_memory=None)  # one invocation's values only
    source = typer.main.get_command_from_info(
        typer.models.CommandInfo(callback=_options_source), pretty_exceptions_short=True,
        rich_markup_mode=None)
    for cmd in group.commands.values():
        names = {p.name for p in cmd.params}
        if "device" in names and "device_map" not in names:
            for opt in source.params:
                opt = copy.copy(opt)
                opt.expose_value, opt.callback = False, _store(opt.name)
                cmd.params.append(opt)
    return group
