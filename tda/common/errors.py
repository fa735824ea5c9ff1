"""Errors that carry a one-line, user-facing message.

Anything raised as a :class:`TDAError` is printed by the CLI (and shown by the app) as a single
line, without a traceback. Raise it for every bad argument or bad input the user can fix.
"""


class TDAError(Exception):
    """Base class: a problem the user can fix, described in one line."""


class BadInput(TDAError, ValueError):
    """An argument or input file is invalid (empty prompt, layer out of range, ...)."""


class ModelLoadError(TDAError):
    """A model spec could not be resolved or loaded."""


class UnsupportedArchitecture(ModelLoadError):
    """The model's architecture has no FFN adapter."""
