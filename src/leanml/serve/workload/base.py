"""The trace type every workload module shares: arrival times plus optional per-request token counts."""

from __future__ import annotations

from dataclasses import dataclass, field
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
