"""Errors raised by dataset loaders: they name the file, what was expected, and where to get it."""

from __future__ import annotations

from pathlib import Path


class DatasetError(Exception):
    """A dataset file is missing or malformed."""

    def __init__(self, dataset: str, path: Path | str, problem: str, expected: str, source: str) -> None:
        self.dataset, self.path, self.problem = dataset, Path(path), problem
        super().__init__(
            f"dataset '{dataset}': {problem}\n"
            f"  file:     {path}\n"
            f"  expected: {expected}\n"
            f"  get it:   {source} (place it under the data root, set by $LEANML_DATA)"
        )


class UnknownDatasetError(KeyError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown dataset '{name}'; known datasets: {', '.join(sorted(known))}")
