"""Trace file loaders: one per public format, recognized by its columns, and a field map for any CSV/JSONL.

Every loader subclasses `TraceLoader` and declares its format's columns (`TraceFields`: the arrival
time, its unit, the prompt and generated token counts) and any other columns that identify it. A
file is read once (CSV through PyArrow, JSONL line by line), then the registered loader whose
required columns it has is chosen (the most specific if several match) and named in
``trace.info["format"]``:

=============  ======  ==================================================================  =========
loader         file    columns (documented by the publisher)                               time unit
=============  ======  ==================================================================  =========
``azure_llm``  CSV     ``TIMESTAMP``, ``ContextTokens``, ``GeneratedTokens`` (2023 and       date-time
                       2024 releases; 2024 stamps carry a UTC offset)
``mooncake``   JSONL   ``timestamp`` (ms since the first request), ``input_length``,        ms
                       ``output_length`` (``hash_ids`` kept as an extra column)
``burstgpt``   CSV     ``Timestamp``, ``Model``, ``Request tokens``, ``Response tokens``,    s
                       ``Total tokens``, ``Log Type``
``fields``     either  an explicit `TraceFields` map (never chosen by columns)             s or ms
=============  ======  ==================================================================  =========

A malformed file raises `TraceError` naming the file and the column (missing, not numbers or
date-times, not sorted, negative or fractional token counts).
"""

from __future__ import annotations

import json
import re
from abc import ABC
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from leanml.serve.workload.base import Trace, TraceError

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
_ZONE = re.compile(r"(Z|[+-]\d\d:?\d\d)$")


@dataclass(frozen=True)
class TraceFields:
    """Which columns hold what: arrival times (date-times, or numbers in ``unit``) and optional token counts."""

    timestamp: str
    unit: str = "s"  # s | ms, for numeric timestamps
    context: str | None = None
    generated: str | None = None

    def __post_init__(self) -> None:
        if self.unit not in ("s", "ms"):
            raise TraceError(f"timestamp_unit must be 's' or 'ms', got '{self.unit}'")

    def columns(self) -> tuple[str, ...]:
        return tuple(c for c in (self.timestamp, self.context, self.generated) if c is not None)


class TraceLoader(ABC):
    """A trace format: its columns, how to recognize it, and how its columns become a `Trace`."""

    name: ClassVar[str]
    description: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]  # file kinds it comes in
    fields: TraceFields
    identifying: ClassVar[tuple[str, ...]] = ()  # other columns the format always has
    autodetect: ClassVar[bool] = True  # False: used only when asked for (the field map)

    def required(self) -> tuple[str, ...]:
        """Every column a file of this format must have."""
        return self.fields.columns() + self.identifying

    def recognizes(self, columns: set[str], suffix: str) -> bool:
        return self.autodetect and suffix in self.suffixes and set(self.required()) <= columns

    def to_trace(self, cols: dict[str, np.ndarray], path: Path) -> Trace:
        """The columns of one file as a `Trace` (arrivals re-based to 0; other columns kept in ``extra``)."""
        missing = [c for c in self.required() if c not in cols]
        if missing:
            raise TraceError(f"trace file {path}: the {self.name} format needs column(s) {missing}; "
                             f"the file has {sorted(cols)}")
        f = self.fields
        t = to_seconds(cols[f.timestamp], f.unit, path, f.timestamp)
        if np.any(np.diff(t) < 0):
            raise TraceError(f"trace file {path}: column '{f.timestamp}' is not sorted; sort the file by time")
        tokens = {key: to_count(cols[c], path, c) if c is not None else None
                  for key, c in (("context_tokens", f.context), ("generated_tokens", f.generated))}
        extra = {k: np.asarray(v) for k, v in cols.items() if k not in f.columns()}
        info = {"path": str(path), "format": self.name, "format_note": self.note()}
        return Trace(t - (t[0] if len(t) else 0.0), name=path.stem, extra=extra, info=info, **tokens)

    def note(self) -> str:
        """What was chosen, in words (printed by the CLI)."""
        return f"{self.name}: {self.description} (columns {', '.join(self.required())})"


class AzureLLMLoader(TraceLoader):
    name = "azure_llm"
    description = "Azure LLM inference trace, 2023 or 2024 release"
    suffixes = CSV_SUFFIXES
    fields = TraceFields("TIMESTAMP", "s", "ContextTokens", "GeneratedTokens")


class MooncakeLoader(TraceLoader):
    name = "mooncake"
    description = "Mooncake (FAST'25) trace, timestamps in ms"
    suffixes = JSONL_SUFFIXES
    fields = TraceFields("timestamp", "ms", "input_length", "output_length")


class BurstGPTLoader(TraceLoader):
    name = "burstgpt"
    description = "BurstGPT trace, timestamps in s"
    suffixes = CSV_SUFFIXES
    fields = TraceFields("Timestamp", "s", "Request tokens", "Response tokens")
    identifying = ("Model", "Total tokens", "Log Type")


class FieldMapLoader(TraceLoader):
    """Any CSV/JSONL, through an explicit field map (the caller says which column is which)."""

    name = "fields"
    description = "explicit field map"
    suffixes = CSV_SUFFIXES + JSONL_SUFFIXES
    autodetect = False

    def __init__(self, fields: TraceFields) -> None:
        self.fields = fields


_LOADERS: dict[str, TraceLoader] = {}


def register_loader(loader: TraceLoader) -> None:
    """Add a format: its ``name`` becomes a ``format=`` value and its columns are recognized."""
    if not isinstance(loader, TraceLoader):
        raise TypeError(f"register_loader: {type(loader).__name__} is not a TraceLoader")
    _LOADERS[loader.name] = loader


for _l in (AzureLLMLoader(), MooncakeLoader(), BurstGPTLoader(), FieldMapLoader(TraceFields("timestamp"))):
    register_loader(_l)


def trace_loaders() -> dict[str, TraceLoader]:
    """Every registered loader by name (``fields`` holds a placeholder map: give yours to `read_trace_file`)."""
    return dict(_LOADERS)


def detect(columns: set[str], suffix: str, path: Path | str = "") -> TraceLoader:
    """The registered format whose required columns ``columns`` has (the most specific of several)."""
    hits = [ld for ld in _LOADERS.values() if ld.recognizes(columns, suffix)]
    if not hits:
        known = "; ".join(f"{ld.name} ({', '.join(ld.required())})" for ld in _LOADERS.values() if ld.autodetect)
        raise TraceError(f"trace file {path}: its columns {sorted(columns)} match no known trace format ({known}); "
                         "name the timestamp column (timestamp_col= / --timestamp-col) to load it through a field map")
    hits.sort(key=lambda ld: -len(ld.required()))
    if len(hits) > 1 and len(hits[0].required()) == len(hits[1].required()):
        raise TraceError(f"trace file {path}: columns match several formats {[h.name for h in hits]}; pass format=")
    return hits[0]


def read_trace_file(path: Path, *, format: str | None = None, fields: TraceFields | None = None) -> Trace:
    """Load a CSV/JSONL trace: through ``fields`` if given, else the format named, else the one its columns show."""
    path = Path(path)
    if not path.exists():
        raise TraceError(f"trace file {path} does not exist; give a CSV/JSONL path or a dataset name")
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        cols = read_jsonl(path)
    elif suffix in CSV_SUFFIXES:
        cols = read_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
    else:
        raise TraceError(f"trace file {path}: unknown format '{suffix}'; use .csv, .tsv or .jsonl")
    if fields is not None:
        loader: TraceLoader = FieldMapLoader(fields)
    elif format is not None:
        if format not in _LOADERS or format == "fields":
            raise TraceError(f"unknown trace format {format!r}; known: {sorted(set(_LOADERS) - {'fields'})} "
                             "(or give a field map)")
        loader = _LOADERS[format]
    else:
        loader = detect(set(cols), suffix, path)
    return loader.to_trace(cols, path)


# ---------------------------------------------------------------- reading and converting columns
def read_csv(path: Path, delimiter: str = ",") -> dict[str, np.ndarray]:
    import pyarrow.csv as pacsv

    try:
        table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=delimiter))
    except Exception as e:  # pyarrow raises ArrowInvalid with a useful message
        raise TraceError(f"trace file {path}: cannot parse as CSV: {e}") from None
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def read_jsonl(path: Path) -> dict[str, np.ndarray]:
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise TraceError(f"trace file {path}, line {i}: invalid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise TraceError(f"trace file {path}, line {i}: each line must be a JSON object")
                rows.append(row)
    keys = sorted({k for r in rows for k in r})
    out = {}
    for k in keys:
        col = np.empty(len(rows), dtype=object)
        col[:] = [r.get(k) for r in rows]  # element-wise: list values (hash_ids) stay one cell each
        out[k] = col
    return out


def to_seconds(col: np.ndarray, unit: str, path: Path, name: str) -> np.ndarray:
    """Arrival times in seconds: date-times (naive or with a UTC offset) or numbers in ``unit``."""
    col = np.asarray(col)
    if np.issubdtype(col.dtype, np.datetime64):
        return _from_ns(col.astype("datetime64[ns]").astype(np.int64))
    if any(v is None for v in col.ravel()):
        raise TraceError(f"trace file {path}: column '{name}' has missing values")
    try:
        t = col.astype(np.float64)
    except (TypeError, ValueError):
        return _from_ns(_parse_datetimes(col, path, name))
    if np.any(~np.isfinite(t)):
        raise TraceError(f"trace file {path}: column '{name}' has missing or non-finite values")
    return t / 1000.0 if unit == "ms" else t


def _from_ns(ns: np.ndarray) -> np.ndarray:
    return (ns - ns[0]) / 1e9 if len(ns) else ns.astype(np.float64)


def _parse_datetimes(col: np.ndarray, path: Path, name: str) -> np.ndarray:
    import pyarrow as pa

    text = [str(v) for v in col.ravel()]
    try:
        if any(_ZONE.search(s) for s in text):  # offsets: PyArrow converts to UTC (numpy would only warn)
            arr = pa.array(text).cast(pa.timestamp("ns", tz="UTC")).to_numpy(zero_copy_only=False)
        else:
            arr = np.array([np.datetime64(s.replace(" ", "T")) for s in text], dtype="datetime64[ns]")
    except (ValueError, pa.ArrowInvalid) as e:
        raise TraceError(f"trace file {path}: column '{name}' is neither numbers nor date-times "
                         f"({str(e).splitlines()[0][:160]})") from None
    return arr.astype("datetime64[ns]").astype(np.int64)


def to_count(col: np.ndarray, path: Path, name: str) -> np.ndarray:
    """Token counts: non-negative integers (a clear error naming the column otherwise)."""
    try:
        f = np.asarray(col, dtype=np.float64)
    except (TypeError, ValueError):
        raise TraceError(f"trace file {path}: column '{name}' must hold integers") from None
    if np.any(~np.isfinite(f)) or np.any(f != np.round(f)) or np.any(f < 0):
        raise TraceError(f"trace file {path}: column '{name}' must hold non-negative integers")
    return f.astype(np.int64)
