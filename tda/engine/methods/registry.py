"""The one table of sparse methods: name -> the module and class that implement it.

Adding a method = one new file in this folder (a :class:`~tda.engine.methods.base.Method`
subclass) and one line in :data:`BUILTIN`. Third-party code can call :func:`register`.
Combinations ``"<prompt>+<token-wise>"`` (e.g. ``griffin+tt``) are built from two registered
methods by :class:`~tda.engine.methods.combo.Combo`.
"""

from __future__ import annotations

import importlib

from tda.common.errors import BadInput

# name -> "module:Class" (imported on first use)
BUILTIN: dict[str, str] = {
    "dense": "tda.engine.methods.dense:Dense",
    "tt": "tda.engine.methods.tt:TT",
    "griffin": "tda.engine.methods.griffin:Griffin",
    "tda": "tda.engine.methods.tda_mask:TDA",
    "static": "tda.engine.methods.static:Static",
    "random": "tda.engine.methods.random_mask:Random",
    "cats": "tda.engine.methods.cats:CATS",
    "teal": "tda.engine.methods.teal:TEAL",
    "wina": "tda.engine.methods.wina:WINA",
    "chess": "tda.engine.methods.chess:CHESS",
    "scap": "tda.engine.methods.scap:SCAP",
    "rsparse": "tda.engine.methods.rsparse:RSparse",
    "predictor": "tda.engine.methods.predictor:Predictor",
}
COMBO_INNER = ("tt",)  # token-wise methods that run inside a prompt-fixed slice
_EXTRA: dict[str, type] = {}
_LOADED: dict[str, type] = {}


def register(cls: type) -> type:
    """Register a :class:`~tda.engine.methods.base.Method` subclass under ``cls.name``."""
    name = getattr(cls, "name", "")
    if not name or "+" in name:
        raise ValueError("a method class needs a non-empty .name without '+'")
    _EXTRA[name] = cls
    return cls


def method_names(*, combos: bool = False) -> tuple[str, ...]:
    """Registered method names (with ``combos``: also each prompt-fixed + token-wise pair)."""
    names = (*BUILTIN, *(n for n in _EXTRA if n not in BUILTIN))
    if not combos:
        return names
    prompt = [n for n in names if get_method(n).kind == "prompt"]
    return (*names, *(f"{p}+{t}" for p in prompt for t in COMBO_INNER))


def _load(name: str) -> type:
    if name in _EXTRA:
        return _EXTRA[name]
    if name not in _LOADED:
        mod, cls = BUILTIN[name].split(":")
        _LOADED[name] = getattr(importlib.import_module(mod), cls)
    return _LOADED[name]


def get_method(name: str) -> type:
    """The class implementing ``name`` (a combination class for ``a+b``); one-line error if unknown."""
    if not isinstance(name, str):
        raise BadInput(f"method must be a name, got {type(name).__name__}")
    known = method_names()
    if "+" in name:
        first, _, second = name.partition("+")
        if first not in known or second not in known:
            raise BadInput(f"unknown method '{name}'; use one of {', '.join(known)} or PROMPT+TOKENWISE "
                           "(e.g. griffin+tt)")
        from tda.engine.methods.combo import combo_class

        return combo_class(_load(first), _load(second))
    if name not in known:
        raise BadInput(f"unknown method '{name}'; use one of {', '.join(known)} or PROMPT+TOKENWISE "
                       "(e.g. griffin+tt)")
    return _load(name)
