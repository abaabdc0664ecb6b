"""Where datasets live: ``$LEANML_DATA``, else ``~/.cache/leanml/data``; caches beside it."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "LEANML_DATA"


def data_root() -> Path:
    """The data root: ``$LEANML_DATA`` if set, else ``~/.cache/leanml/data``."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "leanml" / "data"


def cache_dir(*parts: str) -> Path:
    """A writable cache folder (``$LEANML_CACHE`` or ``~/.cache/leanml/cache``), never the repository."""
    base = os.environ.get("LEANML_CACHE")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "leanml" / "cache"
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
