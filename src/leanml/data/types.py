"""What a loader returns: arrays or text records, each row with a stable integer id."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Stable ids: split base + row index in the file's canonical order (documented per loader).
SPLIT_BASE = {"train": 0, "trace": 0, "dev": 1_000_000_000, "val": 1_000_000_000, "test": 2_000_000_000}


@dataclass
class Split:
    """One split of a dataset.

    ``X``/``y`` for array data (images as float32 NCHW in [0, 1], tabular as float32),
    ``records`` for text data (one dict per example). ``meta`` holds per-row columns
    (e.g. ``source``, ``task``) as equal-length lists or arrays.
    """

    dataset: str
    split: str
    ids: np.ndarray
    X: np.ndarray | None = None
    y: np.ndarray | None = None
    records: list[dict[str, Any]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # class names, feature names, ...

    def __len__(self) -> int:
        return len(self.ids)

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name, col in (("X", self.X), ("y", self.y), ("records", self.records), *self.meta.items()):
            if col is not None and len(col) != n:
                raise ValueError(f"{self.dataset}/{self.split}: column {name} has {len(col)} rows, ids has {n}")
        if len(np.unique(self.ids)) != n:
            raise ValueError(f"{self.dataset}/{self.split}: example ids are not unique")


Loader = Callable[[Path, str], Split]


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: files under the data root (or bundled), row counts, licence, loader."""

    name: str
    kind: str  # tabular | image | text | instruct | trace
    description: str
    splits: dict[str, int]  # split -> expected rows
    files: tuple[str, ...]  # paths relative to the data root; empty when bundled
    license: str
    source: str  # where the data is published
    loader: Loader
    bundled: bool = False

    def paths(self, root: Path) -> list[Path]:
        return [root / f for f in self.files]

    def available(self, root: Path) -> bool:
        return self.bundled or all(p.exists() for p in self.paths(root))

    def size_bytes(self, root: Path) -> int | None:
        if self.bundled:
            return None
        total = 0
        for p in self.paths(root):
            if not p.exists():
                return None
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
        return total
