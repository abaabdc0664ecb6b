"""Serving workloads: real traces (public formats by their columns, any CSV/JSONL), synthetic arrivals, rescaling.

A `Trace` is arrival times (seconds since the first request, non-decreasing) plus optional
per-request token counts. Loaders validate their input and name the file and column on error.

    trace = load_trace("azure_llm_code")                 # via leanml.data (the data root)
    trace = load_trace("mooncake_trace.jsonl")           # a public format, recognized by its columns
    trace = load_trace("my.csv", timestamp_col="ts")     # any CSV/JSONL, through a field map
    trace = gamma_bursty(rate=20, cv=3.0, n=2000, seed=0)
    fast = scale_to_rate(trace, 50.0)                    # same burst shape, 50 requests/s mean
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leanml.serve.workload.base import Trace, TraceError  # noqa: F401  (re-exported: the workload API)
from leanml.serve.workload.loaders import TraceFields, read_trace_file


# ---------------------------------------------------------------- loading
def load_trace(
    source: str | Path,
    *,
    format: str | None = None,
    timestamp_col: str | None = None,
    context_col: str | None = None,
    generated_col: str | None = None,
    timestamp_unit: str = "s",
) -> Trace:
    """Load a registered trace dataset by name (e.g. ``azure_llm_code``) or a CSV/JSONL file.

    A file's format is recognized by its columns (Azure LLM 2023/2024, Mooncake, BurstGPT: see
    `leanml.serve.workload.loaders`) and named in ``trace.info["format"]``; ``format=`` forces one.
    Any other file needs a field map: ``timestamp_col`` (date-times, or numbers in ``timestamp_unit``,
    ``s`` or ``ms``) and optionally ``context_col`` / ``generated_col``.
    """
    path = Path(source)
    if not path.suffix and not path.exists():
        return _load_registered(str(source))
    fields = (TraceFields(timestamp_col, timestamp_unit, context_col, generated_col)
              if timestamp_col is not None else None)
    return read_trace_file(path, format=format, fields=fields)


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
        info={**split.info, "format": "dataset"},
    )


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
