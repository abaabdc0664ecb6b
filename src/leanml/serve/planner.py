"""The serving planner: a MILP (scipy.optimize.milp, HiGHS) over routing, batch size and workers.

For request classes k, variants v, devices d, and options o = (v, d, batch b, workers w) from
discrete sets, each option run in a *tier* t (meeting class t's latency SLO, hence every looser one):

- ``y[o,t]`` binary: variant v runs on d with batch b and w workers, tuned for tier t (at most one
  option and tier per (v, d));
- ``z[k,o,t] >= 0``: requests/s of class k (SLO no tighter than tier t) served by o within the SLO.

Maximize ``sum z`` (goodput) subject to
- demand:      sum z[k,.,.] <= rate_k;
- SLO:         sum_k z[k,o,t] <= cap(o, t) y[o,t], where cap(o, t) is the largest rate at which the
  queueing model (`leanml.serve.queueing`) predicts p99 latency <= SLO_t for option o, under the
  largest CV of the classes it may carry (precomputed: this is what makes the p99 constraint linear);
- accuracy:    sum (acc_v - A) z >= 0 (mean delivered accuracy over served requests >= A), globally
  and per class when the class states a minimum accuracy;
- energy:      sum (e_o - E) z <= 0 (energy per request <= budget);
- capacity:    sum w_o cores_v y[o,t] <= slots_d per device.

This is a capacitated facility-location shape (no big-M), so its LP relaxation is tight and HiGHS
solves realistic sizes in well under a second. Small tie-breakers prefer accurate variants, then
fewer cores; idle cores are then handed out as burst headroom. On a solver timeout with no
incumbent, `greedy_plan` (the INFaaS rule at plan level) is returned.
"""

from __future__ import annotations

import functools
import time

import numpy as np

from leanml.serve.planner_types import (  # noqa: F401  (re-exported: the planner API)
    Device,
    Option,
    Plan,
    PlannerConfig,
    RequestClass,
    devices_from_system,
    local_device,
)
from leanml.serve.queueing import latency_quantile_ms, max_rate_for_slo
from leanml.serve.types import VariantProfile


# ---------------------------------------------------------------- options
def _energy(p: VariantProfile, batch: int) -> float | None:
    by_batch = p.extra.get("energy_j_by_batch") if p.extra else None
    if by_batch:
        sizes = sorted(int(k) for k in by_batch)
        near = min(sizes, key=lambda s: abs(s - batch))
        return float(by_batch[near] if near in by_batch else by_batch[str(near)])
    return p.energy_j_per_request


def build_options(
    profiles: dict[str, VariantProfile], classes: list[RequestClass], devices: list[Device], cfg: PlannerConfig,
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
                    out.append(Option(v, d.name, b, w, w * cores, wait, p50, p99, _energy(p, b), cap))
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


# ---------------------------------------------------------------- MILP
def plan(
    profiles: dict[str, VariantProfile],
    classes: list[RequestClass],
    cfg: PlannerConfig | None = None,
    devices: list[Device] | None = None,
) -> Plan:
    """Solve the MILP; fall back to `greedy_plan` when HiGHS finds no solution in time."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import lil_matrix

    cfg = cfg or PlannerConfig()
    devices = devices or [local_device()]
    t0 = time.perf_counter()
    _check_energy(profiles, classes, cfg)
    opts = build_options(profiles, classes, devices, cfg)
    acc = {v: p.accuracy for v, p in profiles.items()}
    K, n_opt = len(classes), len(opts)
    if n_opt == 0:
        return _empty_plan(profiles, classes, "no option meets any SLO", time.perf_counter() - t0)
    # Tier formulation: option o run in tier t (meeting class t's SLO, hence every looser one) has
    # capacity cap(o, t); y[o,t] binary; z[k,o,t] >= 0 for classes k no tighter than t. A capacitated
    # facility-location shape: no big-M, a tight LP relaxation, fast for HiGHS.
    tiers = [k for k in range(K) if not any(classes[j].latency_ms == classes[k].latency_ms for j in range(k))]
    ys = [(o, t) for o in range(n_opt) for t in tiers if opts[o].cap[classes[t].name] > 0]
    yi = {key: i for i, key in enumerate(ys)}
    zs = [(k, o, t) for (o, t) in ys for k in range(K) if classes[k].latency_ms >= classes[t].latency_ms]
    zi = {key: len(ys) + i for i, key in enumerate(zs)}
    n = len(ys) + len(zs)
    rows: list[tuple[dict[int, float], float, float]] = []  # (coefs, lb, ub)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, (o, _) in enumerate(ys):
        groups.setdefault((opts[o].variant, opts[o].device), []).append(i)
    for idx in groups.values():  # one option (and tier) per (variant, device)
        rows.append(({i: 1.0 for i in idx}, -np.inf, 1.0))
    for d in devices:  # device capacity
        coef = {i: opts[o].cores for i, (o, _) in enumerate(ys) if opts[o].device == d.name}
        if coef:
            rows.append((coef, -np.inf, float(d.slots)))
    by_y: dict[int, list[int]] = {}
    for (_k, o, t), j in zi.items():
        by_y.setdefault(yi[(o, t)], []).append(j)
    for (o, t), i in yi.items():  # the option's load within its tier's capacity
        cap = opts[o].cap[classes[t].name]
        rows.append(({**{j: 1.0 for j in by_y.get(i, [])}, i: -cap}, -np.inf, 0.0))
    for k, c in enumerate(classes):
        mine = {j: 1.0 for (k2, _, _), j in zi.items() if k2 == k}
        rows.append((mine, -np.inf, c.rate_rps))  # demand
        if c.min_accuracy is not None:
            rows.append(({j: acc[opts[o].variant] - c.min_accuracy for (k2, o, _), j in zi.items() if k2 == k},
                         0.0, np.inf))
        if c.max_energy_j is not None:
            rows.append(({j: opts[o].energy_j - c.max_energy_j for (k2, o, _), j in zi.items() if k2 == k},
                         -np.inf, 0.0))
    if cfg.accuracy_target is not None:
        rows.append(({j: acc[opts[o].variant] - cfg.accuracy_target for (_, o, _), j in zi.items()}, 0.0, np.inf))
    if cfg.energy_budget_j is not None:
        rows.append(({j: opts[o].energy_j - cfg.energy_budget_j for (_, o, _), j in zi.items()}, -np.inf, 0.0))
    A = lil_matrix((len(rows), n))
    lb, ub = np.empty(len(rows)), np.empty(len(rows))
    for r, (coef, lo, hi) in enumerate(rows):
        for j, val in coef.items():
            A[r, j] = val
        lb[r], ub[r] = lo, hi
    # objective (milp minimizes): goodput; tie-breakers prefer accuracy, then fewer cores
    total = sum(c.rate_rps for c in classes)
    c_obj = np.zeros(n)
    upper = np.ones(n)
    for (k, o, t), j in zi.items():
        c_obj[j] = -(1.0 + 1e-3 * acc[opts[o].variant])
        upper[j] = min(classes[k].rate_rps, opts[o].cap[classes[t].name])
    for (o, _), i in yi.items():
        c_obj[i] = 1e-6 * total * opts[o].cores
    integrality = np.concatenate([np.ones(len(ys)), np.zeros(len(zs))])
    res = milp(
        c_obj, constraints=LinearConstraint(A.tocsr(), lb, ub), integrality=integrality,
        bounds=Bounds(np.zeros(n), upper),
        options={"time_limit": cfg.time_limit_s, "mip_rel_gap": cfg.mip_rel_gap, "disp": False},
    )
    solve_s = time.perf_counter() - t0
    if res.x is None:
        g = greedy_plan(profiles, classes, cfg, devices, options=opts)
        g.status = f"milp: {res.message.strip()}; greedy fallback"
        g.solve_s = time.perf_counter() - t0
        return g
    x = res.x
    on = {o for (o, t), i in yi.items() if x[i] > 0.5}
    z: dict[tuple[int, int], float] = {}
    for (k, o, _t), j in zi.items():
        if o in on and x[j] > 1e-9:
            z[(k, o)] = z.get((k, o), 0.0) + float(x[j])
    used = sorted(o for o in on if any((k, o) in z for k in range(K)))
    used, z = _spread_spare_cores(opts, used, z, devices)
    return _assemble(profiles, classes, opts, used, z, "milp",
                     "optimal" if res.status == 0 else res.message.strip(), solve_s)


def _spread_spare_cores(opts: list[Option], used: list[int], z: dict, devices: list[Device]):
    """Give cores the plan leaves idle to its options, one worker at a time (burst headroom).

    An option is only swapped for one of the same variant with more cores, no more energy and at
    least its capacity for every class, so every constraint stays satisfied; the option with the
    least spare capacity goes first.
    """
    free = {d.name: float(d.slots) for d in devices}
    for o in used:
        free[opts[o].device] -= opts[o].cores
    used = list(used)
    while True:
        best = None
        for pos, o in enumerate(used):
            op = opts[o]
            load = sum(r for (_, o2), r in z.items() if o2 == o)
            spare = min(op.cap.values()) - load
            ups = [i for i, q in enumerate(opts) if q.variant == op.variant and q.device == op.device
                   and q.cores > op.cores and q.cores - op.cores <= free[op.device] + 1e-9
                   and (q.energy_j or 0.0) <= (op.energy_j or 0.0) and all(q.cap[k] >= op.cap[k] for k in op.cap)]
            if ups and (best is None or spare < best[0]):
                nxt = max(ups, key=lambda i: (min(opts[i].cap.values()), -opts[i].cores))
                best = (spare, pos, nxt)
        if best is None:
            break
        _, pos, nxt = best
        o = used[pos]
        free[opts[o].device] -= opts[nxt].cores - opts[o].cores
        used[pos] = nxt
        z = {((k, nxt) if o2 == o else (k, o2)): r for (k, o2), r in z.items()}
    return used, z


def _check_energy(profiles: dict[str, VariantProfile], classes: list[RequestClass], cfg: PlannerConfig) -> None:
    if cfg.energy_budget_j is None and all(c.max_energy_j is None for c in classes):
        return
    missing = [v for v, p in profiles.items() if _energy(p, 1) is None]
    if missing:
        raise ValueError(
            f"an energy budget was set but variants {missing} have no measured energy per request "
            "(energy unavailable on this machine?); drop the budget or profile energy first"
        )


def _assemble(profiles, classes, opts, used, z, solver, status, solve_s) -> Plan:
    served: dict[str, dict[str, float]] = {c.name: {} for c in classes}
    for (k, o), r in z.items():
        v = opts[o].variant
        served[classes[k].name][v] = served[classes[k].name].get(v, 0.0) + r
    fractions = {}
    for c in classes:
        tot = sum(served[c.name].values())
        fractions[c.name] = {v: r / tot for v, r in served[c.name].items()} if tot > 0 else {}
    batch, workers, wait = {}, {v: {} for v in profiles}, {}
    for o in used:
        opt = opts[o]
        batch[opt.variant] = max(batch.get(opt.variant, 0), opt.batch)
        workers[opt.variant][opt.device] = opt.workers
        wait[opt.variant] = opt.max_wait_ms
    good = sum(z.values())
    mean_acc = sum(profiles[opts[o].variant].accuracy * r for (_, o), r in z.items()) / good if good else float("nan")
    energies = [(opts[o].energy_j, r) for (_, o), r in z.items()]
    energy = (sum(e * r for e, r in energies) / good) if good and all(e is not None for e, _ in energies) else None
    per_opt = [{classes[k].name: r for (k, o2), r in z.items() if o2 == o} for o in used]
    return Plan(fractions, served, batch, workers, wait, good, mean_acc, energy, solver, status, solve_s,
                options=opts, chosen=[opts[o] for o in used], chosen_rps=per_opt)


def _empty_plan(profiles, classes, status, solve_s) -> Plan:
    return Plan({c.name: {} for c in classes}, {c.name: {} for c in classes}, {}, {v: {} for v in profiles}, {},
                0.0, float("nan"), None, "none", status, solve_s)


# ---------------------------------------------------------------- greedy (fallback and baseline)
def greedy_plan(
    profiles: dict[str, VariantProfile],
    classes: list[RequestClass],
    cfg: PlannerConfig | None = None,
    devices: list[Device] | None = None,
    options: list[Option] | None = None,
) -> Plan:
    """INFaaS's rule at plan level: per class, the cheapest variant meeting its accuracy and SLO.

    Cheapest = lowest p50 latency per request at batch 1. Every request of the class must meet the
    accuracy need on its own (no mixing), so the need is ``max(class min, global target)``. Each
    chosen variant gets the option with the most capacity that still fits the free cores.
    """
    cfg = cfg or PlannerConfig()
    devices = devices or [local_device()]
    t0 = time.perf_counter()
    opts = options if options is not None else build_options(profiles, classes, devices, cfg)
    free = {d.name: float(d.slots) for d in devices}
    used: dict[tuple[str, str], int] = {}
    load: dict[int, float] = {}
    z: dict[tuple[int, int], float] = {}
    for k, c in sorted(enumerate(classes), key=lambda kc: -kc[1].rate_rps):
        need = max(x for x in (c.min_accuracy, cfg.accuracy_target, 0.0) if x is not None)
        ok = [v for v, p in profiles.items() if p.accuracy >= need - 1e-12 and
              (c.max_energy_j is None or (_energy(p, 1) or np.inf) <= c.max_energy_j)]
        ok.sort(key=lambda v: profiles[v].latency.at(1, "p50"))
        left = c.rate_rps
        for v in ok:
            if left <= 1e-12:
                break
            for d in devices:
                o = used.get((v, d.name))
                if o is None:
                    cands = [i for i, op in enumerate(opts) if op.variant == v and op.device == d.name
                             and op.cores <= free[d.name] and op.cap[c.name] > 0]
                    if not cands:
                        continue
                    o = max(cands, key=lambda i: (opts[i].cap[c.name], -opts[i].cores))
                    used[(v, d.name)] = o
                    free[d.name] -= opts[o].cores
                take = min(left, max(0.0, opts[o].cap[c.name] - load.get(o, 0.0)))
                if take > 0:
                    z[(k, o)] = z.get((k, o), 0.0) + take
                    load[o] = load.get(o, 0.0) + take
                    left -= take
            break  # INFaaS: the single cheapest eligible variant serves the class
    return _assemble(profiles, classes, opts, sorted(set(used.values())), z, "greedy", "heuristic",
                     time.perf_counter() - t0)


# ---------------------------------------------------------------- verification
def check_plan(
    plan_: Plan, profiles: dict[str, VariantProfile], classes: list[RequestClass], cfg: PlannerConfig,
    devices: list[Device] | None = None, tol: float = 1e-6,
) -> list[str]:
    """Every constraint the plan was given, re-checked from scratch; returns the violations (empty = ok)."""
    devices = devices or [local_device()]
    bad = []
    cls = {c.name: c for c in classes}
    for c in classes:
        s = sum(plan_.served_rps[c.name].values())
        if s > c.rate_rps * (1 + tol) + tol:
            bad.append(f"class {c.name}: serves {s:.3f} > demand {c.rate_rps:.3f}")
    per_dev = {d.name: 0.0 for d in devices}
    for o, by_class in zip(plan_.chosen, plan_.chosen_rps, strict=True):
        per_dev[o.device] += o.cores
        users = [k for k, r in by_class.items() if r > tol]
        rate = sum(by_class.values())
        if users:  # the shared queue must meet the tightest user's SLO under the burstiest user's CV
            slo = min(cls[k].latency_ms for k in users)
            lat = latency_quantile_ms(rate, batch=o.batch, workers=o.workers, service_p50_ms=o.p50_ms,
                                      service_p99_ms=o.p99_ms, ca=max(max(cls[k].cv for k in users), 1e-3),
                                      max_wait_ms=o.max_wait_ms, q=cfg.quantile)
            if lat > slo * (1 + 1e-2):
                bad.append(f"{o.variant}: p99 {lat:.1f} ms > SLO {slo} ms of its classes {users}")
    for d in devices:
        if per_dev[d.name] > d.slots + tol:
            bad.append(f"device {d.name}: {per_dev[d.name]} cores > {d.slots}")
    good = sum(sum(s.values()) for s in plan_.served_rps.values())
    if good > 0:
        accs = sum(profiles[v].accuracy * r for s in plan_.served_rps.values() for v, r in s.items()) / good
        if cfg.accuracy_target is not None and accs < cfg.accuracy_target - 1e-6:
            bad.append(f"mean accuracy {accs:.4f} < target {cfg.accuracy_target}")
        for c in classes:
            s = plan_.served_rps[c.name]
            tot = sum(s.values())
            if c.min_accuracy is not None and tot > 0:
                a = sum(profiles[v].accuracy * r for v, r in s.items()) / tot
                if a < c.min_accuracy - 1e-6:
                    bad.append(f"class {c.name}: accuracy {a:.4f} < {c.min_accuracy}")
        if cfg.energy_budget_j is not None and plan_.energy_per_request_j is not None \
                and plan_.energy_per_request_j > cfg.energy_budget_j * (1 + 1e-6):
            bad.append(f"energy/request {plan_.energy_per_request_j:.4f} J > budget {cfg.energy_budget_j}")
    return bad
