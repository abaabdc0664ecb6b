"""Planner data: request classes, devices, configuration, options and the resulting plan."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RequestClass:
    """A stream of requests with one SLO: its rate, latency SLO, and optional accuracy/energy needs."""

    name: str
    rate_rps: float
    latency_ms: float
    min_accuracy: float | None = None
    max_energy_j: float | None = None
    cv: float = 1.0  # coefficient of variation of its inter-arrival times (measured)


@dataclass(frozen=True)
class PlannerDevice:
    """Where workers run: ``slots`` cores (or accelerator slots), ``speed`` relative to the profiled machine."""

    name: str
    slots: int
    speed: float = 1.0


def local_device() -> PlannerDevice:
    """This machine as one device (its cores as worker slots)."""
    return PlannerDevice("local", slots=os.cpu_count() or 1)


def devices_from_system(system: Any, reference: Any = None, precision: str = "fp32") -> list[PlannerDevice]:
    """Planner devices from a `leanml.hw.System`: one per instance, its compute units as worker slots
    for CPUs (one slot per accelerator otherwise), and its speed relative to ``reference`` (the
    `leanml.hw.Device` the variant profiles were measured on) by peak FLOP/s at ``precision``."""
    out = []
    for inst, dev in system.instances.items():
        slots = int(dev.compute_units) if dev.cls == "cpu" else 1
        speed = 1.0
        if reference is not None:
            mine, ref = dev.peak_flops.get(precision), reference.peak_flops.get(precision)
            if mine and ref:
                speed = float(mine) / float(ref)
        out.append(PlannerDevice(str(inst), max(1, slots), speed))
    return out


@dataclass
class PlannerConfig:
    """Knobs of the planner; validated on construction."""

    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    max_workers: int = 4
    accuracy_target: float | None = None
    energy_budget_j: float | None = None
    time_limit_s: float = 0.5
    quantile: float = 0.99
    max_wait_cap_ms: float = 20.0
    mip_rel_gap: float = 1e-2

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise ValueError(f"batch_sizes must be positive integers, got {self.batch_sizes}")
        if self.max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {self.max_workers}")
        if self.accuracy_target is not None and not 0 <= self.accuracy_target <= 1:
            raise ValueError(f"accuracy_target must be in [0, 1], got {self.accuracy_target}")
        if self.time_limit_s <= 0:
            raise ValueError(f"time_limit_s must be positive, got {self.time_limit_s}")
        if not 0.5 < self.quantile < 1:
            raise ValueError(f"quantile must be in (0.5, 1), got {self.quantile}")


@dataclass(frozen=True)
class Option:
    """One (variant, device, batch, workers) configuration with its precomputed per-class capacity."""

    variant: str
    device: str
    batch: int
    workers: int
    cores: float
    max_wait_ms: float
    p50_ms: float
    p99_ms: float
    energy_j: float | None
    cap: dict[str, float]  # class name -> largest rate meeting that class's SLO


@dataclass
class Plan:
    """The planner's output: routing fractions per class, and per variant its batch and workers."""

    fractions: dict[str, dict[str, float]]  # class -> variant -> fraction of the class's requests
    served_rps: dict[str, dict[str, float]]  # class -> variant -> planned goodput
    batch: dict[str, int]  # variant -> max batch size
    workers: dict[str, dict[str, int]]  # variant -> device -> workers
    max_wait_ms: dict[str, float]
    goodput_rps: float
    mean_accuracy: float
    energy_per_request_j: float | None
    solver: str  # "milp" | "greedy"
    status: str
    solve_s: float
    # peak load / SLO capacity over the chosen options: the plan's routing absorbs a burst of 1/utilization
    # times the planned demand before a queue passes its capacity
    utilization: float = float("nan")
    options: list[Option] = field(default_factory=list, repr=False)
    chosen: list[Option] = field(default_factory=list, repr=False)
    chosen_rps: list[dict[str, float]] = field(default_factory=list, repr=False)  # per chosen option, by class

    def variants(self) -> list[str]:
        """Variants with at least one worker."""
        return sorted(v for v, d in self.workers.items() if sum(d.values()) > 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "fractions": self.fractions, "batch": self.batch, "workers": self.workers,
            "max_wait_ms": self.max_wait_ms, "goodput_rps": self.goodput_rps,
            "mean_accuracy": self.mean_accuracy, "energy_per_request_j": self.energy_per_request_j,
            "solver": self.solver, "status": self.status, "solve_s": self.solve_s,
            "utilization": self.utilization,
        }


def _plan_text(plan: Any) -> str:
    """A plan's per-class fractions in one line (for reconfiguration logs); anything else as a short string."""
    if not isinstance(plan, Plan) or not plan.fractions:
        return str(plan)[:200]
    return "; ".join(f"{k}: " + ", ".join(f"{v} {f:.2f}" for v, f in sorted(d.items()))
                     for k, d in plan.fractions.items())
