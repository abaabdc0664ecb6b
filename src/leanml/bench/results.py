"""The study's result table: one Parquet file, appended atomically, keyed by (suite, method, budget, seed)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from leanml.io import atomic_write_bytes

KEY = ("suite", "method", "budget", "seed")
REQUIRED = ("suite", "method", "budget", "seed", "metric", "accuracy",
            "select_wall_s", "train_wall_s", "total_wall_s")


class ResultsError(ValueError):
    """The results file is unreadable or lacks the study's columns."""


class ResultTable:
    """Rows of a study in ``path`` (Parquet). ``append`` rewrites the file atomically (temp + rename),
    so a crash leaves the previous complete file; ``done`` says which cells can be skipped."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        try:
            table = pq.read_table(self.path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise ResultsError(f"results file {self.path} is not readable Parquet ({e}); "
                               "move it away to start a new study") from None
        missing = [c for c in REQUIRED if c not in table.column_names]
        if missing:
            raise ResultsError(f"results file {self.path} lacks columns {missing}; it is not a leanml study table")
        return table.to_pylist()

    def done(self) -> set[tuple]:
        return {key_of(r) for r in self.rows()}

    def append(self, new: list[dict[str, Any]]) -> None:
        if not new:
            return
        for r in new:
            missing = [c for c in REQUIRED if c not in r]
            if missing:
                raise ResultsError(f"result row lacks {missing}: {r}")
        rows = self.rows() + new
        cols: list[str] = []
        for r in rows:
            cols += [c for c in r if c not in cols]
        table = pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in rows])
        buf = io.BytesIO()
        pq.write_table(table, buf)
        atomic_write_bytes(self.path, buf.getvalue())


def key_of(row: dict[str, Any]) -> tuple:
    return (row["suite"], row["method"], round(float(row["budget"]), 6), int(row["seed"]))
