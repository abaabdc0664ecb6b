"""Placement: map virtual devices (work items with cost estimates) onto a system's physical devices.

Objective "makespan" minimizes the finish time of the busiest device; "energy" minimizes the sum of
estimated energies (optionally under a makespan deadline). Every device's memory capacity bounds the
bytes of the items placed on it. Small problems are solved exactly as a MILP with
``scipy.optimize.milp`` (HiGHS); larger ones with greedy LPT (longest item first, onto the device
where it would finish earliest). Round-robin is kept as the baseline the others are compared with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from leanml.hw.catalog import get_system
from leanml.hw.errors import HwError
from leanml.hw.predict import predict
from leanml.hw.schema import System
from leanml.hw.trace import Profile

MILP_MAX_VARS = 4000


@dataclass(frozen=True)
class WorkItem:
    """A virtual device: a unit of work with its time (and energy) on each device, and its memory."""

    name: str
    time_s: dict[str, float]  # physical device instance id -> seconds there
    memory_bytes: float = 0.0
    energy_j: dict[str, float] = field(default_factory=dict)  # instance id -> joules (estimate)

    @classmethod
    def from_profile(cls, name: str, profile: Profile | list, system: System | str, *, repeats: int = 1,
                     memory_bytes: float | None = None) -> WorkItem:
        """Cost a traced workload on each of the system's devices with the roofline model."""
        sysm = get_system(system)
        times, energy = {}, {}
        for iid, dev in sysm.instances.items():
            p = predict(profile, dev)
            times[iid], energy[iid] = p.time_s * repeats, p.energy_j * repeats
        mem = memory_bytes if memory_bytes is not None else float(getattr(profile, "param_bytes", 0))
        return cls(name, times, mem, energy)


@dataclass
class Placement:
    """Which device each item runs on, with the resulting makespan, energy and per-device load."""

    assignment: dict[str, str]  # item name -> instance id
    makespan_s: float
    energy_j: float | None
    load_s: dict[str, float]
    memory_bytes: dict[str, float]
    method: str
    optimal: bool = False


def _check(items: Sequence[WorkItem], system: System) -> list[str]:
    if not items:
        raise HwError("place: no work items given")
    names = [it.name for it in items]
    if len(set(names)) != len(names):
        raise HwError(f"place: work item names must be unique, got {names}")
    devs = list(system.instances)
    for it in items:
        missing = [d for d in devs if d not in it.time_s]
        if missing:
            raise HwError(f"place: work item {it.name!r} has no time for device(s) {missing}")
        if it.memory_bytes < 0 or any(v < 0 for v in it.time_s.values()):
            raise HwError(f"place: work item {it.name!r} has a negative time or memory")
    return devs


def _capacity(system: System, dev: str) -> float:
    return system.instances[dev].main_memory.capacity


def evaluate(assignment: dict[str, str], items: Sequence[WorkItem], system: System, method: str,
             optimal: bool = False) -> Placement:
    """Makespan, energy and memory of a given assignment (raises if it breaks a capacity)."""
    devs = list(system.instances)
    load = dict.fromkeys(devs, 0.0)
    mem = dict.fromkeys(devs, 0.0)
    energy: float | None = 0.0
    for it in items:
        d = assignment[it.name]
        load[d] += it.time_s[d]
        mem[d] += it.memory_bytes
        energy = None if (energy is None or d not in it.energy_j) else energy + it.energy_j[d]
    for d in devs:
        if mem[d] > _capacity(system, d) * (1 + 1e-9):
            raise HwError(f"placement {method}: device {d} holds {mem[d]:.3g} B > "
                          f"capacity {_capacity(system, d):.3g} B")
    return Placement(dict(assignment), max(load.values()), energy, load, mem, method, optimal)


def round_robin(items: Sequence[WorkItem], system: System | str) -> Placement:
    """Baseline: item i goes to device i mod n, skipping devices whose memory is full."""
    sysm = get_system(system)
    devs = _check(items, sysm)
    mem = dict.fromkeys(devs, 0.0)
    out, k = {}, 0
    for it in items:
        for step in range(len(devs)):
            d = devs[(k + step) % len(devs)]
            if mem[d] + it.memory_bytes <= _capacity(sysm, d):
                out[it.name], mem[d] = d, mem[d] + it.memory_bytes
                k = (k + step + 1) % len(devs)
                break
        else:
            raise HwError(f"round_robin: item {it.name!r} ({it.memory_bytes:.3g} B) fits on no device")
    return evaluate(out, items, sysm, "round-robin")


def greedy_lpt(items: Sequence[WorkItem], system: System | str) -> Placement:
    """Longest processing time first onto the device where the item would finish earliest (within capacity)."""
    sysm = get_system(system)
    devs = _check(items, sysm)
    load, mem, out = dict.fromkeys(devs, 0.0), dict.fromkeys(devs, 0.0), {}
    for it in sorted(items, key=lambda i: -min(i.time_s.values())):
        fits = [d for d in devs if mem[d] + it.memory_bytes <= _capacity(sysm, d)]
        if not fits:
            raise HwError(f"greedy_lpt: item {it.name!r} ({it.memory_bytes:.3g} B) fits on no device")
        d = min(fits, key=lambda d: (load[d] + it.time_s[d], it.time_s[d]))
        out[it.name] = d
        load[d] += it.time_s[d]
        mem[d] += it.memory_bytes
    return evaluate(out, items, sysm, "greedy-LPT")


def milp(items: Sequence[WorkItem], system: System | str, objective: str = "makespan",
         deadline_s: float | None = None, time_limit_s: float = 10.0) -> Placement:
    """Exact placement with HiGHS: binary x[i, d], sum_d x = 1, memory per device <= capacity."""
    from scipy.optimize import Bounds, LinearConstraint
    from scipy.optimize import milp as _milp

    sysm = get_system(system)
    devs = _check(items, sysm)
    if objective not in ("makespan", "energy"):
        raise HwError(f"milp: objective must be 'makespan' or 'energy', got {objective!r}")
    n, m = len(items), len(devs)
    nv = n * m + 1  # last variable: makespan T
    t = np.array([[it.time_s[d] for d in devs] for it in items])
    rows, lo, hi = [], [], []
    for i in range(n):  # each item on exactly one device
        r = np.zeros(nv)
        r[i * m:(i + 1) * m] = 1
        rows.append(r)
        lo.append(1)
        hi.append(1)
    for j, d in enumerate(devs):  # memory capacity
        r = np.zeros(nv)
        r[j:n * m:m] = [it.memory_bytes for it in items]
        rows.append(r)
        lo.append(-np.inf)
        hi.append(_capacity(sysm, d))
    for j in range(m):  # load_j - T <= 0
        r = np.zeros(nv)
        r[j:n * m:m] = t[:, j]
        r[-1] = -1
        rows.append(r)
        lo.append(-np.inf)
        hi.append(0.0)
    c = np.zeros(nv)
    if objective == "makespan":
        c[-1] = 1.0
        upper_t = np.inf
    else:
        missing = [it.name for it in items if any(d not in it.energy_j for d in devs)]
        if missing:
            raise HwError(f"milp: objective 'energy' needs energy_j on every device; missing for {missing}")
        c[:-1] = np.array([[it.energy_j[d] for d in devs] for it in items]).ravel()
        upper_t = deadline_s if deadline_s is not None else np.inf
    integrality = np.ones(nv)
    integrality[-1] = 0
    res = _milp(c, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=integrality,
                bounds=Bounds(np.r_[np.zeros(nv - 1), 0.0], np.r_[np.ones(nv - 1), upper_t]),
                options={"time_limit": time_limit_s})
    if res.x is None:
        raise HwError(f"milp: no feasible placement ({res.message}); check capacities"
                      + (f" and the deadline {deadline_s} s" if deadline_s is not None else ""))
    x = res.x[:-1].reshape(n, m)
    assignment = {it.name: devs[int(np.argmax(x[i]))] for i, it in enumerate(items)}
    return evaluate(assignment, items, sysm, f"MILP-{objective} (HiGHS)", optimal=res.status == 0)


def place(items: Sequence[WorkItem], system: System | str, objective: str = "makespan",
          deadline_s: float | None = None) -> Placement:
    """Best placement: exact MILP when small (<= MILP_MAX_VARS variables), else greedy LPT (makespan)."""
    sysm = get_system(system)
    if len(items) * len(sysm.instances) <= MILP_MAX_VARS:
        return milp(items, sysm, objective, deadline_s)
    if objective != "makespan":
        raise HwError(f"place: objective {objective!r} on a large problem needs the MILP; split it into "
                      f"<= {MILP_MAX_VARS} item x device pairs")
    return greedy_lpt(items, sysm)
