"""Where a model folder typed into the app may come from: the allowed roots.

The app's "Local model folder" box reads only folders under the cache (``TDA_CACHE_DIR``), the
working directory, or a root listed in ``TDA_MODEL_ROOTS`` (paths separated by ``:``). Anything
else — and anything missing or not a model folder — gets the same one message, so the box cannot
be used to learn which paths exist on the server.
"""

from __future__ import annotations

import os
from pathlib import Path

from tda.common.errors import BadInput

ENV = "TDA_MODEL_ROOTS"
REFUSED = "model folder not allowed or not found"


def allowed_roots() -> list[Path]:
    """The cache, the working directory and ``$TDA_MODEL_ROOTS``, resolved (symlinks followed)."""
    from tda.common.paths import cache_dir

    roots = []
    try:
        roots.append(cache_dir())
    except BadInput:
        pass
    roots.append(Path.cwd())
    roots += [Path(r).expanduser() for r in os.environ.get(ENV, "").split(os.pathsep) if r.strip()]
    return [Path(os.path.realpath(r)) for r in roots]


def check_model_folder(text: str) -> str:
    """The resolved folder for ``text`` when it is a model folder (``config.json``) under an
    allowed root; else BadInput with the one message :data:`REFUSED` (the same for every cause)."""
    raw = (text or "").strip()
    if not raw or "\x00" in raw:
        raise BadInput(f"{REFUSED}: '{raw}'")
    p = Path(os.path.realpath(Path(raw).expanduser()))  # symlinks and .. resolved before the check
    inside = any(p == r or r in p.parents for r in allowed_roots())
    try:
        ok = inside and p.is_dir() and (p / "config.json").is_file()
    except OSError:
        ok = False
    if not ok:
        raise BadInput(f"{REFUSED}: '{raw}'")
    return str(p)
