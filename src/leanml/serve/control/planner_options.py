"""Planner options: every (variant, device, batch, workers) configuration with its SLO capacities.

``cap(o, t)`` is the largest arrival rate at which the queueing model (`leanml.serve.control.queueing`)
predicts the option's latency quantile within class t's SLO; precomputing it per option is what makes
the planner's p99 constraint linear. Capacities are memoized on inputs rounded to 3 significant
digits (re-plans see slowly moving profiles); options another option of the same variant beats on
cost and capacity are pruned.
"""

from __future__ import annotations

import functools

import numpy as np

from leanml.serve.control.planner_types import Option, PlannerConfig, PlannerDevice, RequestClass
from leanml.serve.control.queueing import max_rate_for_slo
from leanml.serve.types import VariantProfile


def energy_at(p: VariantProfile, batch: int) -> float | None:
    """Energy per request at ``batch`` (the nearest measured batch size), or None where unmeasured."""
    by_batch = p.extra.get("energy_j_by_batch") if p.extra else None
    if by_batch:
        sizes = sorted(int(k) for k in by_batch)
        near = min(sizes, key=lambda s: abs(s - batch))
        return float(by_batch[near] if near in by_batch else by_batch[str(near)])
    return p.energy_j_per_request


def build_options(
    profiles: dict[str, VariantProfile], classes: list[RequestClass], devices: list[PlannerDevice], cfg: PlannerConfig,
) -> list[Option]:
    """Enumerate (variant, device, batch, workers) options and precompute their SLO capacities."""
    if not profiles:
        raise ValueError("no variant profiles to plan over")
    if not classes:
        raise ValueError("no request classes to plan for")
    tightest = min(c.latency_ms for c in classes)
    # a queue run to class k's SLO may also carry every class with a looser SLO: plan it for the
    # burstiest of them (the tier's CV)
    ca = {c.name: max(max(o.cv for o in classes if o.latency_ms >= c.latency_ms), 1e-3) for c in classes}
    out = []
    for v, p in profiles.items():
        cores = float(p.extra.get("cores_per_worker", 1)) if p.extra else 1.0
        for d in devices:
            for b in cfg.batch_sizes:
                p50 = p.latency.at(b, "p50") / d.speed
                p99 = max(p.latency.at(b, "p99") / d.speed, p50)
                if p99 > tightest and all(p99 > c.latency_ms for c in classes):
                    continue
                # wait for a batch to fill at most a quarter of the slack the tightest SLO leaves
                wait = 0.0 if b == 1 else float(np.clip(0.25 * (tightest - p99), 0.0, cfg.max_wait_cap_ms))
                for w in range(1, cfg.max_workers + 1):
                    if w * cores > d.slots:
                        break
                    cap = {c.name: _cap(c.latency_ms, b, w, p50, p99, ca[c.name], wait, cfg.quantile)
                           for c in classes}
                    if max(cap.values()) <= 0:
                        continue
                    out.append(Option(v, d.name, b, w, w * cores, wait, p50, p99, energy_at(p, b), cap))
    return _prune_dominated(out)


def _r(x: float) -> float:
    """Round to 3 significant digits (cache key: re-plans see slowly moving profiles and CVs)."""
    return float(f"{x:.3g}")


@functools.lru_cache(maxsize=65536)
def _cap_cached(slo: float, b: int, w: int, p50: float, p99: float, ca: float, wait: float, q: float) -> float:
    return max_rate_for_slo(slo, batch=b, workers=w, service_p50_ms=p50, service_p99_ms=p99, ca=ca,
                            max_wait_ms=wait, q=q)


def _cap(slo: float, b: int, w: int, p50: float, p99: float, ca: float, wait: float, q: float) -> float:
    """SLO capacity of one option (memoized on inputs rounded to 3 significant digits: the rounding
    moves a latency by < 0.5%, well inside the profiles' own measurement noise)."""
    return _cap_cached(_r(slo), b, w, _r(p50), _r(p99), _r(ca), _r(wait), q)


def _prune_dominated(opts: list[Option]) -> list[Option]:
    """Drop options another option of the same variant and device beats: no more cores or energy,
    at least the capacity for every class (the MILP's optimum never needs a dominated option)."""
    keep = []
    for i, o in enumerate(opts):
        dominated = False
        for j, p in enumerate(opts):
            if j == i or p.variant != o.variant or p.device != o.device:
                continue
            le_cost = p.cores <= o.cores and (p.energy_j or 0.0) <= (o.energy_j or 0.0)
            ge_cap = all(p.cap[k] >= o.cap[k] for k in o.cap)
            strict = p.cores < o.cores or (p.energy_j or 0) < (o.energy_j or 0) or any(
                p.cap[k] > o.cap[k] for k in o.cap)
            if le_cost and ge_cap and (strict or j < i):
                dominated = True
                break
        if not dominated:
            keep.append(o)
    return keep
