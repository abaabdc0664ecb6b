"""Shared checks for file-backed loaders: files exist, parse cleanly, row counts match the spec."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from leanml.data.errors import DatasetError
from leanml.data.types import SPLIT_BASE

# Errors that mean "the file's content is bad" (as opposed to a bug in a loader).
PARSE_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, KeyError, TypeError, IndexError, EOFError, OSError, UnicodeDecodeError,
    json.JSONDecodeError, zlib.error, gzip.BadGzipFile,
)


class Source:
    """Who a loader is: dataset name and where it is published, for error messages."""

    def __init__(self, dataset: str, source: str) -> None:
        self.dataset, self.source = dataset, source

    def error(self, path: Path | str, problem: str, expected: str) -> DatasetError:
        """A DatasetError naming the file, the problem, what was expected and where to get it."""
        return DatasetError(self.dataset, path, problem, expected, self.source)

    def require(self, path: Path, expected: str) -> Path:
        """Return ``path`` if it is a readable file, else raise a DatasetError saying what is missing."""
        if not path.exists():
            root_hint = "" if path.parent.exists() else f" (its folder {path.parent} does not exist either)"
            raise self.error(path, f"file not found{root_hint}", expected)
        if not path.is_file():
            raise self.error(path, "not a regular file", expected)
        return path

    def require_glob(self, folder: Path, pattern: str, expected: str) -> list[Path]:
        """Sorted files matching ``pattern`` in ``folder``; a DatasetError if there are none."""
        if not folder.is_dir():
            raise self.error(folder, "folder not found", expected)
        files = sorted(p for p in folder.glob(pattern) if p.is_file())
        if not files:
            raise self.error(folder / pattern, "no files match", expected)
        return files

    @contextmanager
    def parsing(self, path: Path, expected: str) -> Iterator[None]:
        """Turn any parse failure inside the block into a DatasetError naming ``path``."""
        try:
            yield
        except DatasetError:
            raise
        except PARSE_ERRORS as e:
            raise self.error(path, f"malformed content: {type(e).__name__}: {e}", expected) from e

    def read_text(self, path: Path, expected: str) -> str:
        """The whole file as UTF-8 text (gzip-decompressed if it ends with .gz)."""
        self.require(path, expected)
        with self.parsing(path, expected):
            if path.suffix == ".gz":
                with gzip.open(path, "rb") as f:
                    data = f.read()
            else:
                data = path.read_bytes()
            return data.decode("utf-8")

    def read_json(self, path: Path, expected: str) -> Any:
        text = self.read_text(path, expected)
        with self.parsing(path, expected):
            return json.loads(text)

    def read_jsonl(self, path: Path, expected: str, keys: tuple[str, ...]) -> list[dict[str, Any]]:
        """One JSON object per non-empty line, each with string values for ``keys``."""
        text = self.read_text(path, expected)
        numbered = [(i, ln) for i, ln in enumerate(text.split("\n"), 1) if ln.strip()]  # not splitlines: U+2028
        try:  # one parse of the whole file is several times faster than one per line
            objs = json.loads("[" + ",".join(ln for _, ln in numbered) + "]")
            if len(objs) != len(numbered):  # a line holding two values, e.g. '1, 2'
                raise json.JSONDecodeError("more than one value on a line", "", 0)
        except json.JSONDecodeError:
            objs = []
            for lineno, line in numbered:  # find the bad line to name it
                try:
                    objs.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise self.error(path, f"line {lineno} is not valid JSON ({e})", expected) from e
        return [self.check_record(path, obj, keys, expected, where=f"line {lineno}")
                for (lineno, _), obj in zip(numbered, objs, strict=True)]

    def check_record(self, path: Path, obj: Any, keys: tuple[str, ...], expected: str, where: str) -> dict:
        """``obj`` must be a dict whose ``keys`` are all strings; returns it."""
        if not isinstance(obj, dict):
            raise self.error(path, f"{where} is a {type(obj).__name__}, not an object", expected)
        for k in keys:
            if not isinstance(obj.get(k), str):
                got = "missing" if k not in obj else type(obj[k]).__name__
                raise self.error(path, f"{where}: field '{k}' is {got}, not a string", expected)
        return obj

    def check_rows(self, path: Path | str, split: str, found: int, expected_rows: int) -> None:
        """A full split must have exactly the row count the data README states."""
        if found != expected_rows:
            raise self.error(
                path, f"split '{split}' has {found:,} rows, expected {expected_rows:,}",
                f"the unmodified published file(s) with {expected_rows:,} rows",
            )


def split_ids(split: str, n: int) -> np.ndarray:
    """Stable ids: the split's base plus the row index in the canonical order."""
    return SPLIT_BASE[split] + np.arange(n, dtype=np.int64)


def column(records: list[dict[str, Any]], key: str) -> list[Any]:
    return [r[key] for r in records]
