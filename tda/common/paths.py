"""Where the workbench keeps its cache and finds its shipped data."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "data"
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"


def cache_dir() -> Path:
    """The cache root: ``$TDA_CACHE_DIR`` or ``~/.cache/tda-workbench`` (created on demand)."""
    root = Path(os.environ.get("TDA_CACHE_DIR") or Path.home() / ".cache" / "tda-workbench")
    root = root.expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not os.access(root, os.W_OK | os.X_OK):
            raise PermissionError(13, "not writable")
    except OSError as e:
        from tda.common.errors import BadInput

        where = "TDA_CACHE_DIR" if os.environ.get("TDA_CACHE_DIR") else "the cache folder"
        raise BadInput(f"{where} {root} cannot be used: {e.strerror or e}") from None
    return root
