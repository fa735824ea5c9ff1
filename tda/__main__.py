"""``python -m tda`` — the same as the ``tda`` command."""

from tda.cli.main import _entry

_entry()
