"""Serving workloads: real traces (Azure LLM format, any CSV/JSONL), synthetic arrivals, rescaling.

A `Trace` is arrival times (seconds since the first request, non-decreasing) plus optional
per-request token counts. Loaders validate their input and name the file and column on error.

    trace = load_trace("azure_llm_code")                 # via leanml.data (the data root)
    trace = load_trace("my.csv", timestamp_col="ts")     # any CSV/JSONL
    trace = gamma_bursty(rate=20, cv=3.0, n=2000, seed=0)
    fast = scale_to_rate(trace, 50.0)                    # same burst shape, 50 requests/s mean
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class TraceError(ValueError):
    """A trace file or parameter is malformed; the message names it and says what to do."""


@dataclass
class Trace:
    """Arrival times (s, from 0, non-decreasing) and optional per-request token counts."""

    arrival_s: np.ndarray
    context_tokens: np.ndarray | None = None
    generated_tokens: np.ndarray | None = None
    name: str = "trace"
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.arrival_s = np.asarray(self.arrival_s, dtype=np.float64)
        n = len(self.arrival_s)
        if self.arrival_s.ndim != 1:
            raise TraceError(f"trace '{self.name}': arrival_s must be 1-D, got shape {self.arrival_s.shape}")
        if n and (not np.all(np.isfinite(self.arrival_s)) or np.any(np.diff(self.arrival_s) < 0)):
            raise TraceError(f"trace '{self.name}': arrival times must be finite and non-decreasing")
        for col in ("context_tokens", "generated_tokens"):
            v = getattr(self, col)
            if v is not None:
                v = np.asarray(v, dtype=np.int64)
                if len(v) != n:
                    raise TraceError(f"trace '{self.name}': {col} has {len(v)} rows, arrivals have {n}")
                setattr(self, col, v)
        for k, v in self.extra.items():
            if len(v) != n:
                raise TraceError(f"trace '{self.name}': column {k} has {len(v)} rows, arrivals have {n}")

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        """Time from the first to the last arrival."""
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) > 1 else 0.0

    @property
    def mean_rate(self) -> float:
        """Requests per second over the trace's span ((n-1)/duration: unbiased for a renewal process)."""
        return (len(self) - 1) / self.duration_s if self.duration_s > 0 else float("nan")

    def select(self, mask_or_idx: np.ndarray, name: str | None = None) -> Trace:
        """A sub-trace of the given rows (arrival times re-based to start at 0)."""
        a = self.arrival_s[mask_or_idx]
        base = a[0] if len(a) else 0.0
        return Trace(
            a - base,
            None if self.context_tokens is None else self.context_tokens[mask_or_idx],
            None if self.generated_tokens is None else self.generated_tokens[mask_or_idx],
            name=name or self.name,
            extra={k: np.asarray(v)[mask_or_idx] for k, v in self.extra.items()},
            info=dict(self.info),
        )

    def head(self, n: int) -> Trace:
        """The first ``n`` requests."""
        return self.select(np.arange(min(int(n), len(self))))

    def busiest(self, duration_s: float) -> Trace:
        """The ``duration_s`` window holding the most requests (e.g. to replay a burst), re-based to 0."""
        if duration_s <= 0:
            raise TraceError(f"duration_s must be positive, got {duration_s}")
        if len(self) == 0:
            return self.select(np.arange(0))
        ends = np.searchsorted(self.arrival_s, self.arrival_s + duration_s, side="left")
        i = int(np.argmax(ends - np.arange(len(self))))
        return self.window(float(self.arrival_s[i]), duration_s)

    def window(self, start_s: float, duration_s: float) -> Trace:
        """Requests arriving in ``[start_s, start_s + duration_s)``, re-based to 0."""
        m = (self.arrival_s >= start_s) & (self.arrival_s < start_s + duration_s)
        return self.select(np.flatnonzero(m))


# ---------------------------------------------------------------- loading
def load_trace(
    source: str | Path,
    *,
    timestamp_col: str = "TIMESTAMP",
    context_col: str | None = "ContextTokens",
    generated_col: str | None = "GeneratedTokens",
    timestamp_unit: str = "s",
) -> Trace:
    """Load a registered trace dataset by name (e.g. ``azure_llm_code``) or a CSV/JSONL file.

    ``timestamp_col`` holds either date-times (ISO-like strings) or numbers in ``timestamp_unit``
    (``s`` or ``ms``); token columns are optional (set to None to skip).
    """
    path = Path(source)
    if not path.suffix and not path.exists():
        return _load_registered(str(source))
    if not path.exists():
        raise TraceError(f"trace file {path} does not exist; give a CSV/JSONL path or a dataset name")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        cols = _read_jsonl(path)
    elif suffix in (".csv", ".tsv", ".txt"):
        cols = _read_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
    else:
        raise TraceError(f"trace file {path}: unknown format '{suffix}'; use .csv, .tsv or .jsonl")
    if timestamp_col not in cols:
        raise TraceError(
            f"trace file {path}: no timestamp column '{timestamp_col}' (columns: {sorted(cols)}); "
            "pass timestamp_col= / --timestamp-col"
        )
    t = _to_seconds(cols[timestamp_col], timestamp_unit, path, timestamp_col)
    order = np.argsort(t, kind="stable")
    if np.any(order != np.arange(len(t))):
        raise TraceError(f"trace file {path}: column '{timestamp_col}' is not sorted; sort the file by time")
    tokens = {}
    for key, col in (("context_tokens", context_col), ("generated_tokens", generated_col)):
        if col is None or col not in cols:
            tokens[key] = None
            continue
        tokens[key] = _to_int(cols[col], path, col)
    extra = {k: np.asarray(v) for k, v in cols.items() if k not in {timestamp_col, context_col, generated_col}}
    return Trace(t - (t[0] if len(t) else 0.0), name=path.stem, extra=extra, info={"path": str(path)}, **tokens)


def _load_registered(name: str) -> Trace:
    from leanml.data import load

    try:
        split = load(name, "trace")
    except KeyError as e:
        raise TraceError(f"'{name}' is neither a file nor a registered trace dataset: {e}") from None
    meta = split.meta
    if "timestamp_s" not in meta:
        raise TraceError(f"dataset '{name}' has no meta['timestamp_s']; it is not a trace")
    return Trace(
        np.asarray(meta["timestamp_s"], dtype=np.float64),
        meta.get("context_tokens"),
        meta.get("generated_tokens"),
        name=name,
        info=dict(split.info),
    )


def _read_csv(path: Path, delimiter: str) -> dict[str, np.ndarray]:
    import pyarrow.csv as pacsv

    try:
        table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=delimiter))
    except Exception as e:  # pyarrow raises ArrowInvalid with a useful message
        raise TraceError(f"trace file {path}: cannot parse as CSV: {e}") from None
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def _read_jsonl(path: Path) -> dict[str, np.ndarray]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise TraceError(f"trace file {path}, line {i}: invalid JSON ({e.msg})") from None
    keys = sorted({k for r in rows for k in r})
    return {k: np.asarray([r.get(k) for r in rows], dtype=object) for k in keys}


def _to_seconds(col: np.ndarray, unit: str, path: Path, name: str) -> np.ndarray:
    if unit not in ("s", "ms"):
        raise TraceError(f"timestamp_unit must be 's' or 'ms', got '{unit}'")
    col = np.asarray(col)
    if np.issubdtype(col.dtype, np.datetime64):
        ns = col.astype("datetime64[ns]").astype(np.int64)
        return (ns - ns[0]) / 1e9 if len(ns) else ns.astype(np.float64)
    try:
        t = col.astype(np.float64)
    except (TypeError, ValueError):
        try:
            ns = np.array([np.datetime64(str(v).replace(" ", "T")) for v in col], dtype="datetime64[ns]")
        except ValueError as e:
            raise TraceError(
                f"trace file {path}: column '{name}' is neither numbers nor date-times ({e})"
            ) from None
        ns = ns.astype(np.int64)
        return (ns - ns[0]) / 1e9 if len(ns) else ns.astype(np.float64)
    if np.any(~np.isfinite(t)):
        raise TraceError(f"trace file {path}: column '{name}' has missing or non-finite values")
    return t / 1000.0 if unit == "ms" else t


def _to_int(col: np.ndarray, path: Path, name: str) -> np.ndarray:
    try:
        f = np.asarray(col, dtype=np.float64)
    except (TypeError, ValueError):
        raise TraceError(f"trace file {path}: column '{name}' must hold integers") from None
    if np.any(~np.isfinite(f)) or np.any(f != np.round(f)) or np.any(f < 0):
        raise TraceError(f"trace file {path}: column '{name}' must hold non-negative integers")
    return f.astype(np.int64)


# ---------------------------------------------------------------- synthetic arrivals
def _check_pos(name: str, v: float) -> None:
    if not (np.isfinite(v) and v > 0):
        raise TraceError(f"{name} must be a positive number, got {v}")


def _count(n: int | None, duration_s: float | None, rate: float) -> int:
    if n is None and duration_s is None:
        raise TraceError("give n (requests) or duration_s")
    if n is not None and n < 1:
        raise TraceError(f"n must be >= 1, got {n}")
    return int(n) if n is not None else max(1, int(np.ceil(rate * float(duration_s) * 1.2 + 10)))


def _from_gaps(gaps: np.ndarray, n: int | None, duration_s: float | None, name: str, info: dict) -> Trace:
    t = np.concatenate([[0.0], np.cumsum(gaps)])
    t = t[:n] if n is not None else t[t < float(duration_s)]
    return Trace(t, name=name, info=info)


def poisson(rate: float, *, n: int | None = None, duration_s: float | None = None, seed: int = 0) -> Trace:
    """Poisson arrivals at ``rate`` per second (exponential gaps, CV 1)."""
    return gamma_bursty(rate, 1.0, n=n, duration_s=duration_s, seed=seed, name="poisson")


def gamma_bursty(
    rate: float, cv: float, *, n: int | None = None, duration_s: float | None = None, seed: int = 0,
    name: str = "gamma",
) -> Trace:
    """Renewal arrivals with Gamma gaps: mean 1/rate, coefficient of variation ``cv`` (>1 = bursty)."""
    _check_pos("rate", rate)
    _check_pos("cv", cv)
    m = _count(n, duration_s, rate)
    shape = 1.0 / cv**2
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape, 1.0 / (rate * shape), size=m)
    while n is None and gaps.sum() < float(duration_s):  # bursty gaps: keep drawing until the span is covered
        gaps = np.concatenate([gaps, rng.gamma(shape, 1.0 / (rate * shape), size=m)])
    return _from_gaps(gaps, n, duration_s, name, {"rate": rate, "cv": cv, "seed": seed})


def diurnal(
    mean_rate: float, *, period_s: float, amplitude: float = 0.5, duration_s: float, seed: int = 0,
) -> Trace:
    """Non-homogeneous Poisson with rate ``mean*(1 + amplitude*sin(2 pi t/period))`` (thinning)."""
    _check_pos("mean_rate", mean_rate)
    _check_pos("period_s", period_s)
    _check_pos("duration_s", duration_s)
    if not 0 <= amplitude < 1:
        raise TraceError(f"amplitude must be in [0, 1), got {amplitude}")
    rng = np.random.default_rng(seed)
    peak = mean_rate * (1 + amplitude)
    k = rng.poisson(peak * duration_s)
    cand = np.sort(rng.uniform(0, duration_s, size=k))
    keep = rng.uniform(size=k) * peak < mean_rate * (1 + amplitude * np.sin(2 * np.pi * cand / period_s))
    t = cand[keep]
    t = t - t[0] if len(t) else t
    return Trace(t, name="diurnal", info={"mean_rate": mean_rate, "period_s": period_s, "amplitude": amplitude})


# ---------------------------------------------------------------- rescaling and mapping
def compress(trace: Trace, factor: float) -> Trace:
    """Divide every arrival time by ``factor`` (>1 = faster); the CV and burst shape are unchanged."""
    _check_pos("factor", factor)
    out = trace.select(np.arange(len(trace)))
    out.arrival_s = trace.arrival_s / factor
    out.info = {**trace.info, "compressed_by": factor}
    return out


def scale_to_rate(trace: Trace, target_rate: float) -> Trace:
    """Rescale time so the mean rate becomes ``target_rate`` requests/s, keeping the burst shape."""
    _check_pos("target_rate", target_rate)
    if len(trace) < 2 or trace.duration_s <= 0:
        raise TraceError(f"trace '{trace.name}' needs at least two distinct arrival times to rescale")
    return compress(trace, target_rate / trace.mean_rate)


@dataclass(frozen=True)
class FieldMap:
    """How trace columns become request properties (LLM: prompt length and max new tokens)."""

    input_size_from: str | None = "context_tokens"
    max_new_tokens_from: str | None = "generated_tokens"
    input_size_cap: int | None = None
    max_new_tokens_cap: int | None = None


def request_properties(trace: Trace, fmap: FieldMap = FieldMap()) -> list[dict[str, Any]]:
    """Per request: ``arrival_s``, and ``input_size``/``max_new_tokens`` from the mapped columns."""

    def col(name: str | None) -> np.ndarray | None:
        if name is None:
            return None
        v = getattr(trace, name, None) if name in ("context_tokens", "generated_tokens") else trace.extra.get(name)
        if v is None:
            raise TraceError(f"trace '{trace.name}' has no column '{name}' to map")
        return np.asarray(v)

    size, new = col(fmap.input_size_from), col(fmap.max_new_tokens_from)
    out = []
    for i, t in enumerate(trace.arrival_s):
        row: dict[str, Any] = {"index": i, "arrival_s": float(t)}
        if size is not None:
            s = int(size[i])
            row["input_size"] = min(s, fmap.input_size_cap) if fmap.input_size_cap else s
        if new is not None:
            g = max(1, int(new[i]))
            row["max_new_tokens"] = min(g, fmap.max_new_tokens_cap) if fmap.max_new_tokens_cap else g
        out.append(row)
    return out


def max_new_tokens(trace: Trace, cap: int, default: int = 16) -> np.ndarray:
    """Tokens each request of ``trace`` generates in a replay: its ``generated_tokens`` mapped as
    `request_properties` maps them (at least 1, at most ``cap``); ``default`` (capped) where the trace
    has no such column."""
    if trace.generated_tokens is None:
        return np.full(len(trace), min(default, cap), dtype=np.int64)
    rows = request_properties(trace, FieldMap(input_size_from=None, max_new_tokens_cap=cap))
    return np.array([r["max_new_tokens"] for r in rows], dtype=np.int64)
