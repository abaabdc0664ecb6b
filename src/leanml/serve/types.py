"""The serving contract shared by the runtime, the policies, the planner and the simulator.

Kept small and dependency-free (no FastAPI, no torch) so the planner and the simulator use
exactly the types the live runtime uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


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

    @property
    def generation(self) -> dict[str, Any] | None:
        """For text generators: ``{"tokens": N, "first_token_ms": {b: ms}, "step_ms": {b: ms}}``, the latency
        tables being for exactly N generated tokens per request; None for classifiers."""
        g = self.extra.get("generation")
        return g if isinstance(g, dict) and g.get("first_token_ms") and g.get("step_ms") else None

    def generation_scale(self, batch: int, tokens: float | None) -> float:
        """How much longer (or shorter) a batch of ``batch`` takes when it generates ``tokens`` tokens instead
        of the length the tables hold: (first + (tokens - 1) step) / (first + (N - 1) step), p50 fits per
        batch size. 1.0 for classifiers or when ``tokens`` is None."""
        g = self.generation
        if g is None or tokens is None:
            return 1.0
        by_b = g.get("tokens_by_batch")  # set by `at_tokens`: the length the tables hold per batch size
        held = interpolate({int(k): float(v) for k, v in by_b.items()}, batch) if by_b else float(g["tokens"])
        ref = generation_ms(g, batch, held)
        return generation_ms(g, batch, float(tokens)) / ref if ref > 0 else 1.0

    def at_tokens(self, tokens: float | dict[int, float]) -> VariantProfile:
        """This profile with its latency and throughput tables moved to ``tokens`` generated tokens per request
        (classifiers: unchanged): what a planner or router sees when requests generate that many. ``tokens``
        may be given per batch size (``{b: tokens}``, e.g. the expected longest of b requests, since a batch
        decodes until its longest row is done). The per-step fits are unchanged; the lengths the tables now
        hold are kept per batch size (``tokens_by_batch``; ``tokens`` is batch 1's) for `generation_scale`."""
        g = self.generation
        if g is None:
            return self
        per_b = {int(k): float(v) for k, v in tokens.items()} if isinstance(tokens, dict) else None
        sizes = sorted(set(self.latency.p50_ms) | set(self.latency.p99_ms) | set(self.throughput_rps))
        held = {b: interpolate(per_b, b) if per_b else float(tokens) for b in [1, *sizes]}  # type: ignore[arg-type]
        sc = {b: self.generation_scale(b, held[b]) for b in sizes}
        lat = LatencyProfile({b: v * sc[b] for b, v in self.latency.p50_ms.items()},
                             {b: v * sc[b] for b, v in self.latency.p99_ms.items()})
        thr = {b: v / sc[b] for b, v in self.throughput_rps.items()}
        gen = {**g, "tokens": held[1], "tokens_by_batch": {str(b): held[b] for b in sizes}}
        return replace(self, latency=lat, throughput_rps=thr, extra={**self.extra, "generation": gen})


def profile_to_dict(p: VariantProfile) -> dict[str, Any]:
    """A profile as JSON-ready data (the profile file's entry, ``GET /v1/deployments``)."""
    return {
        "name": p.name, "accuracy": p.accuracy,
        "latency": {"p50_ms": {str(k): v for k, v in p.latency.p50_ms.items()},
                    "p99_ms": {str(k): v for k, v in p.latency.p99_ms.items()}},
        "memory_bytes": p.memory_bytes, "energy_j_per_request": p.energy_j_per_request,
        "throughput_rps": {str(k): v for k, v in p.throughput_rps.items()}, "extra": p.extra,
    }


def profile_from_dict(d: dict[str, Any]) -> VariantProfile:
    """The inverse of `profile_to_dict`; ValueError naming the entry when it is malformed."""
    try:
        lat = LatencyProfile({int(k): float(v) for k, v in d["latency"]["p50_ms"].items()},
                             {int(k): float(v) for k, v in d["latency"]["p99_ms"].items()})
        if not lat.p50_ms or set(lat.p50_ms) != set(lat.p99_ms):
            raise ValueError("latency tables empty or with different batch sizes")
        return VariantProfile(
            name=str(d["name"]), accuracy=float(d["accuracy"]), latency=lat,
            memory_bytes=d.get("memory_bytes"), energy_j_per_request=d.get("energy_j_per_request"),
            throughput_rps={int(k): float(v) for k, v in (d.get("throughput_rps") or {}).items()},
            extra=dict(d.get("extra") or {}),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"profile entry {d.get('name', '?')!r} is malformed: {e}") from None


def interpolate(table: dict[int, float], batch: int) -> float:
    """A per-batch-size table at ``batch``, linearly interpolated (`LatencyProfile.at`'s rule)."""
    return LatencyProfile(table, table).at(batch, "p50")


def expected_longest(tokens: list[int] | Any, batch_sizes: list[int]) -> dict[int, float]:
    """Expected largest of b requests' token counts drawn at random from ``tokens``, per batch size b:
    sum_k k (F(k)^b - F(k-1)^b) over the empirical distribution F (a batch's decoding time follows it)."""
    import numpy as np

    t = np.sort(np.asarray(tokens, dtype=np.float64))
    vals, counts = np.unique(t, return_counts=True)
    cdf = np.cumsum(counts) / len(t)
    prev = np.concatenate([[0.0], cdf[:-1]])
    return {int(b): float(np.sum(vals * (cdf ** b - prev ** b))) for b in batch_sizes}


def generation_ms(gen: dict[str, Any], batch: int, tokens: float) -> float:
    """p50 model time (ms) of a batch of ``batch`` requests each generating ``tokens`` tokens: the time to
    the first token plus ``tokens - 1`` decoding steps, both interpolated over the measured batch sizes."""
    first = {int(k): float(v) for k, v in gen["first_token_ms"].items()}
    step = {int(k): float(v) for k, v in gen["step_ms"].items()}
    return interpolate(first, batch) + max(float(tokens) - 1.0, 0.0) * interpolate(step, batch)


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


# Why a policy refused a request (`leanml.serve.policy.Policy.refusal_kind`):
# "impossible" = no variant meets the SLO even when idle (HTTP 503); "overloaded" = one would, but
# not with the current queues (HTTP 429, retry later).
REFUSE_IMPOSSIBLE = "impossible"
REFUSE_OVERLOADED = "overloaded"


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
