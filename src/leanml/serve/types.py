"""The serving contract shared by the runtime, the policies, the planner and the simulator.

Kept small and dependency-free (no FastAPI, no torch) so the planner and the simulator use
exactly the types the live runtime uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class SLO:
    """What one request needs; ``None`` means "use the deployment default"."""

    latency_ms: float | None = None
    min_accuracy: float | None = None
    max_energy_j: float | None = None


@dataclass
class LatencyProfile:
    """Measured latency of one variant by batch size (milliseconds per batch)."""

    p50_ms: dict[int, float]
    p99_ms: dict[int, float]

    def at(self, batch: int, quantile: str = "p99") -> float:
        """Latency of a batch of ``batch``, linearly interpolated between measured sizes."""
        table = self.p99_ms if quantile == "p99" else self.p50_ms
        sizes = sorted(table)
        if batch <= sizes[0]:
            return table[sizes[0]] * batch / sizes[0] if batch < sizes[0] else table[sizes[0]]
        for lo, hi in zip(sizes, sizes[1:], strict=False):
            if batch <= hi:
                f = (batch - lo) / (hi - lo)
                return table[lo] + f * (table[hi] - table[lo])
        last, prev = sizes[-1], sizes[-2] if len(sizes) > 1 else sizes[-1]
        slope = (table[last] - table[prev]) / (last - prev) if last != prev else table[last] / last
        return table[last] + slope * (batch - last)


@dataclass
class VariantProfile:
    """A variant's measured profile: accuracy on validation data and resource use."""

    name: str
    accuracy: float
    latency: LatencyProfile
    memory_bytes: int | None = None
    energy_j_per_request: float | None = None  # None where energy is not measurable
    throughput_rps: dict[int, float] = field(default_factory=dict)  # by batch size
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Request:
    """One inference request as the router sees it."""

    id: int
    deployment: str
    inputs: Any
    slo: SLO
    arrival_s: float  # monotonic clock
    request_class: str = "default"
    label: Any = None  # ground truth, when the client sends it (online profiling)
    n_examples: int = 1  # examples in ``inputs`` (what batch limits and latency predictions count)
    knobs: dict[str, Any] = field(default_factory=dict)  # generation knobs (max_new_tokens, kv_cache_cap)


@dataclass
class ServeState:
    """What a routing policy may look at: profiles, queue depths, the current plan."""

    profiles: dict[str, VariantProfile]  # variant name -> profile
    queue_depth: dict[str, int]  # variant name -> requests waiting
    max_batch: dict[str, int]  # variant name -> configured max batch size
    now_s: float = 0.0
    plan: Any = None  # set by the planner: per request class, variant -> fraction
    # Added by the runtime (defaults keep older callers valid): examples in model calls now, the
    # batching wait bound, and model calls in flight per variant (used to predict queueing delay).
    in_flight: dict[str, int] = field(default_factory=dict)
    max_wait_ms: dict[str, float] = field(default_factory=dict)
    concurrency: dict[str, int] = field(default_factory=dict)


# Why a policy refused a request (optional ``refusal_kind()`` on a policy; "impossible" if absent):
# "impossible" = no variant meets the SLO even when idle (HTTP 503); "overloaded" = one would, but
# not with the current queues (HTTP 429, retry later).
REFUSE_IMPOSSIBLE = "impossible"
REFUSE_OVERLOADED = "overloaded"


class RoutingPolicy(Protocol):
    """Chooses the variant for a request, or returns None to refuse it (with ``reason``)."""

    name: str

    def route(self, request: Request, state: ServeState) -> str | None: ...

    def reason(self) -> str: ...


@dataclass
class Outcome:
    """The one answer to one request."""

    status: int  # HTTP status: 200, 429, 503, 500
    output: Any = None
    variant: str | None = None
    outcome: str = "ok"  # ok | refused_slo | refused_overload | expired | error
    reason: str | None = None
    queue_ms: float = 0.0
    model_ms: float = 0.0
    batch_size: int = 0
