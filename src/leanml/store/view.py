"""`StoreView`: what the query modules need of a gradient store, so they need not import `store.py`.

`GradientStore` (``leanml.store.store``) offers ``search``/``explain``/``nshot``/``add_task``/
``select``/``add_metadata``/``sql`` as a façade over ``search``, ``plan``, ``tasks`` and ``metadata``.
Those modules take the store as an argument typed by this protocol, so the dependency points one way:
``store.py`` imports them; they import this module, never ``store.py``. `GradientStore` satisfies it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from leanml.store.manifest import Manifest


@runtime_checkable
class StoreView(Protocol):
    """The reading side of a gradient store, plus its one manifest-change hook."""

    root: Path
    manifest: Manifest

    def checkpoint_names(self) -> list[str]: ...

    def weights(self) -> np.ndarray: ...

    def n_rows(self, checkpoint: str | None = None) -> int: ...

    def iter_blocks(self, checkpoint: str | None = None, block_rows: int = 65536, *,
                    reuse: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...

    def features(self, checkpoint: str | None = None) -> tuple[np.ndarray, np.ndarray]: ...

    def has_one_minus_p(self) -> bool: ...

    def one_minus_p(self, checkpoint: str | None = None) -> np.ndarray | None: ...

    def check_compatible(self, *, dim: int | None = None, spec: dict[str, Any] | None = None,
                         model: str | None = None, codec: str | None = None,
                         grad_type: str | None = None) -> None: ...

    def _commit_manifest_change(self, change: Callable[[Manifest], None]) -> None: ...


def check_name(kind: str, name: str) -> str:
    """``name`` if it is safe as a file name (checkpoints, tasks), else a ValueError naming ``kind``."""
    if not name or not all(c.isalnum() or c in "_.-" for c in name) or name.startswith("."):
        raise ValueError(f"{kind} name {name!r}: use letters, digits, '_', '-', '.' only")
    return name
