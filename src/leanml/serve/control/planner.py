"""The serving planner: a MILP (scipy.optimize.milp, HiGHS) over routing, batch size and workers.

For request classes k, variants v, devices d, and options o = (v, d, batch b, workers w) from
discrete sets, each option run in a *tier* t (meeting class t's latency SLO, hence every looser one):

- ``y[o,t]`` binary: variant v runs on d with batch b and w workers, tuned for tier t (at most one
  option and tier per (v, d));
- ``z[k,o,t] >= 0``: requests/s of class k (SLO no tighter than tier t) served by o within the SLO.

Maximize ``sum z`` (goodput) subject to
- demand:      sum z[k,.,.] <= rate_k;
- SLO:         sum_k z[k,o,t] <= cap(o, t) y[o,t], where cap(o, t) is the largest rate at which the
  queueing model (`leanml.serve.control.queueing`) predicts p99 latency <= SLO_t for option o, under the
  largest CV of the classes it may carry (precomputed: this is what makes the p99 constraint linear);
- accuracy:    sum (acc_v - A) z >= 0 (mean delivered accuracy over served requests >= A), globally
  and per class when the class states a minimum accuracy;
- energy:      sum (e_o - E) z <= 0 (energy per request <= budget);
- capacity:    sum w_o cores_v y[o,t] <= slots_d per device.

This is a capacitated facility-location shape (no big-M), so its LP relaxation is tight and HiGHS
solves realistic sizes in well under a second. It is solved lexicographically: first the most
goodput; then, at that goodput, the most *headroom*: every class served in proportion to its rate,
scaled by the largest factor theta the configuration carries within its SLO capacities, so the
routing fractions absorb the largest uniform burst before the next re-plan (accuracy, then fewer
cores break ties); idle cores are then handed out as further headroom. On a solver timeout with
no incumbent, `greedy_plan` (the INFaaS rule at plan level) is returned.
"""

from __future__ import annotations

import time

import numpy as np

from leanml.serve.control.planner_options import build_options, energy_at  # noqa: F401  (build_options re-exported)
from leanml.serve.control.planner_types import (  # noqa: F401  (re-exported: the planner API)
    Option,
    Plan,
    PlannerConfig,
    PlannerDevice,
    RequestClass,
    devices_from_system,
    local_device,
)
from leanml.serve.control.queueing import latency_quantile_ms
from leanml.serve.types import VariantProfile


# ---------------------------------------------------------------- MILP
def plan(
    profiles: dict[str, VariantProfile],
    classes: list[RequestClass],
    cfg: PlannerConfig | None = None,
    devices: list[PlannerDevice] | None = None,
) -> Plan:
    """Solve the MILP; fall back to `greedy_plan` when HiGHS finds no solution in time."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

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
    demand: list[tuple[int, int]] = []  # (row, class) of the demand rows
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
        demand.append((len(rows), k))
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
    total = sum(c.rate_rps for c in classes)
    slots = sum(d.slots for d in devices)
    integrality = np.concatenate([np.ones(len(ys)), np.zeros(len(zs) + 1)])
    upper = np.ones(n + 1)
    c_obj = np.zeros(n + 1)  # milp minimizes: goodput; tie-breakers prefer accuracy, then fewer cores
    for (k, o, t), j in zi.items():
        upper[j] = min(classes[k].rate_rps, opts[o].cap[classes[t].name])
        c_obj[j] = -(1.0 + 1e-3 * acc[opts[o].variant])
    for (o, _), i in yi.items():
        c_obj[i] = 1e-6 * total * opts[o].cores / slots

    def solve(rows_, upper_, limit_s):
        ri = [r for r, (coef, _, _) in enumerate(rows_) for _ in coef]
        ci = [j for coef, _, _ in rows_ for j in coef]
        vals = [v for coef, _, _ in rows_ for v in coef.values()]
        A = coo_matrix((vals, (ri, ci)), shape=(len(rows_), n + 1)).tocsr()
        lb, ub = np.array([lo for _, lo, _ in rows_]), np.array([hi for _, _, hi in rows_])
        return milp(c_obj, constraints=LinearConstraint(A, lb, ub), integrality=integrality,
                    bounds=Bounds(np.zeros(n + 1), upper_),
                    options={"time_limit": limit_s, "mip_rel_gap": cfg.mip_rel_gap, "disp": False})

    upper[n] = 0.0  # column n is the burst factor theta of stage 2 (unused in stage 1)
    t1 = time.perf_counter()
    res = solve(rows, upper, cfg.time_limit_s)  # stage 1: the most goodput at the given rates
    # both stages share the time limit (stage 2 gets at least a quarter of it: its incumbent is used)
    limit2 = max(0.25 * cfg.time_limit_s, cfg.time_limit_s - (time.perf_counter() - t1))
    if res.x is None:
        g = greedy_plan(profiles, classes, cfg, devices, options=opts)
        g.status = f"milp: {res.message.strip()}; greedy fallback"
        g.solve_s = time.perf_counter() - t0
        return g
    # Stage 2, headroom: keep that goodput and serve every class in proportion to its rate, scaled by
    # the largest theta the configuration can carry: sum_o z[k,o,.] = theta rate_k, theta as large as
    # possible. The plan's fractions are then those of the largest uniform burst it absorbs within the
    # SLO capacities (1/theta is the least peak utilization over the chosen options), and the served
    # rates are z / theta. Accuracy above the target earns nothing in the objective; headroom keeps
    # goodput when the rate the plan was given is exceeded before the next re-plan (bursts). (Breaking
    # the ties of stage 1 by accuracy instead planned a slow accurate variant whenever the period's mean
    # rate fit it, and the bursts found it full.) The same facility-location shape: a tight relaxation.
    good1 = float(sum(res.x[j] for j in zi.values()))
    scale = 1.0
    if total > 0 and good1 > 0:
        rows2 = list(rows)
        for r, k in demand:
            rows2[r] = ({**rows[r][0], n: -classes[k].rate_rps}, 0.0, 0.0)
        upper2 = upper.copy()
        for (_k, o, t), j in zi.items():
            upper2[j] = opts[o].cap[classes[t].name]
        upper2[n] = np.inf
        rows2.append(({n: 1.0}, good1 / total * (1 - 1e-4), np.inf))  # at least stage 1's goodput
        res2 = solve(rows2, upper2, limit2)
        if res2.x is not None:
            res, scale = res2, 1.0 / max(1.0, float(res2.x[n]))
    solve_s = time.perf_counter() - t0
    x = res.x
    on = {o for (o, t), i in yi.items() if x[i] > 0.5}
    z: dict[tuple[int, int], float] = {}
    for (k, o, _t), j in zi.items():
        if o in on and x[j] > 1e-9:
            z[(k, o)] = z.get((k, o), 0.0) + float(x[j]) * scale
    used = sorted(o for o in on if any((k, o) in z for k in range(K)))
    used, z = _spread_spare_cores(opts, used, z, devices)
    return _assemble(profiles, classes, opts, used, z, "milp",
                     "optimal" if res.status == 0 else res.message.strip(), solve_s)


def _spread_spare_cores(opts: list[Option], used: list[int], z: dict, devices: list[PlannerDevice]):
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
    missing = [v for v, p in profiles.items() if energy_at(p, 1) is None]
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
    slo = {c.name: c.latency_ms for c in classes}
    util = max((sum(by.values()) / opts[o].cap[min(by, key=slo.__getitem__)]
                for o, by in zip(used, per_opt, strict=True) if by), default=0.0)
    return Plan(fractions, served, batch, workers, wait, good, mean_acc, energy, solver, status, solve_s,
                utilization=util, options=opts, chosen=[opts[o] for o in used], chosen_rps=per_opt)


def _empty_plan(profiles, classes, status, solve_s) -> Plan:
    return Plan({c.name: {} for c in classes}, {c.name: {} for c in classes}, {}, {v: {} for v in profiles}, {},
                0.0, float("nan"), None, "none", status, solve_s)


# ---------------------------------------------------------------- greedy (fallback and baseline)
def greedy_plan(
    profiles: dict[str, VariantProfile],
    classes: list[RequestClass],
    cfg: PlannerConfig | None = None,
    devices: list[PlannerDevice] | None = None,
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
              (c.max_energy_j is None or (energy_at(p, 1) or np.inf) <= c.max_energy_j)]
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
    devices: list[PlannerDevice] | None = None, tol: float = 1e-6,
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
