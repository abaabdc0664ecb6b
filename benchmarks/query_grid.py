"""The planner grid of `query_bench.py`: selectivity x filter kind x k x codec x queries per call; in each
cell every runnable plan is timed (interleaved) and its recall measured over 32 queries, and the
planner's choice is compared with the best plan that meets recall (`grid_summary`)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from leanml.store.query import IVF, as_source
from leanml.store.query.calibration import operator_costs
from leanml.store.query.physical import APPROX, choose, plan_nearest, run_nearest, walk_facts
from query_fixtures import (
    SELECTIVITY,
    brute,
    calibration_queries,
    filter_rows,
    make_store,
    norm,
    recall,
    timed,
    timed_best,
)

RECALL_QUERIES = 32


PLAN_IVF, PLAN_NONE = "planning with the index", "planning without it"  # timed beside the plans


def planner_grid(tmp: Path, X: np.ndarray, lab: np.ndarray, host, quick: bool) -> list[dict]:
    """selectivity x filter kind x k x codec x queries; every runnable candidate timed (module docstring)."""
    cells = []
    rng = np.random.default_rng(2)
    for codec in ("fp32", "int8"):
        st = make_store(tmp / f"grid-{codec}", X, codec)
        src = as_source(st)
        Xn = norm(st.features()[1])  # the reference is the exact answer over the stored (decoded) rows
        ivf = IVF.build(src, nprobe=16, queries=[calibration_queries(X)])
        cal = operator_costs(src, ivf, host)
        for kind in ("uncorrelated", "correlated"):
            for sel in SELECTIVITY:
                for k in (10, 100):
                    for nq in (1, 32):
                        q0 = int(rng.integers(len(X)))
                        pool = np.flatnonzero(lab == lab[q0]) if kind == "correlated" else np.arange(len(X))
                        qi = np.concatenate([[q0], rng.choice(pool, RECALL_QUERIES - 1)])
                        pos = filter_rows(lab, int(lab[q0]), sel, kind, rng)
                        Qall = norm(X[qi] + 0.3 * rng.standard_normal((len(qi), X.shape[1])).astype(np.float32))
                        qs = [Qall[:nq]]
                        kk = min(k, len(pos))
                        ref = brute(Xn, Qall, pos, kk)
                        t_plan = min(timed(plan_nearest, src, pos, qs, kk, host=host, recall=0.95, ivf=ivf,
                                           calibration=cal)[1] for _ in range(3))
                        cands, _ = plan_nearest(src, pos, qs, kk, host=host, recall=0.95, ivf=ivf, calibration=cal)
                        chosen = choose(cands).name
                        _, facts = plan_nearest(src, pos, qs, kk, host=host, recall=0.95, ivf=ivf, calibration=cal,
                                                cost_all=True)
                        fns = {c.name: partial(_ids_of, c.name, src, pos, qs, kk, facts, ivf)
                               for c in cands if c.runnable}
                        # recall of each plan at this cell over 32 queries (one query's recall is too noisy)
                        _, rfacts = plan_nearest(src, pos, [Qall], kk, host=host, recall=0.95, ivf=ivf,
                                                 calibration=cal, cost_all=True)
                        if "Iq" in rfacts and rfacts["probes"] != facts["probes"]:  # the timed plan's probes
                            rfacts.update(walk_facts(ivf, rfacts["Q"], rfacts["mask_lists"], kk, facts["k_walk"],
                                                     facts["probes"]))
                        # the planning only the IVF plans need (coarse assignment, walk facts) is part of
                        # their cost: planning with the index minus planning without it, timed in the same
                        # interleaved rotation as the plans (back to back it ran from warm caches: 0.16 against
                        # 0.39 ms after other work, one query at 1% of 10^5 rows)
                        fns[PLAN_IVF] = partial(plan_nearest, src, pos, qs, kk, host=host, recall=0.95, ivf=ivf,
                                                calibration=cal, cost_all=True)
                        fns[PLAN_NONE] = partial(plan_nearest, src, pos, qs, kk, host=host, recall=0.95, ivf=None,
                                                 calibration=cal)
                        times = timed_best(fns)
                        ivf_plan_s = max(0.0, times.pop(PLAN_IVF)[1] - times.pop(PLAN_NONE)[1])
                        meas = {}
                        for name, (ids, t) in times.items():
                            rids = _ids_of(name, src, pos, [Qall], kk, rfacts, ivf)
                            rec = recall(rids, ref)  # the grid's stores hold id i at row position i
                            ids = rids  # the grid's stores hold id i at row position i
                            extra = ivf_plan_s if name in APPROX else 0.0
                            meas[name] = {"s": t + extra, "s_exec": t, "recall": rec,
                                          "ok": bool(rec >= 0.95 and (ids >= 0).all()),
                                          "predicted_s": next(c.predicted_s for c in cands if c.name == name)}
                        ok = sorted(v["s"] for v in meas.values() if v["ok"])
                        best = ok[0] if ok else np.nan
                        ok_exec = sorted(v["s_exec"] for v in meas.values() if v["ok"])
                        cells.append({"codec": codec, "filter": kind, "selectivity": sel, "k": k, "queries": nq,
                                      "chosen": chosen, "chosen_ok": meas[chosen]["ok"], "chosen_s": meas[chosen]["s"],
                                      "best_s": best, "ratio": meas[chosen]["s"] / best, "planning_s": t_plan,
                                      "ivf_planning_s": ivf_plan_s,
                                      "ratio_exec_only": meas[chosen]["s_exec"] / (ok_exec[0] if ok_exec else np.nan),
                                      "ratio_with_planning": (meas[chosen]["s"] + t_plan) / best,
                                      "chosen_recall": meas[chosen]["recall"], "candidates": meas})
    return cells


def _ids_of(*args) -> np.ndarray:  # noqa: ANN002
    return run_nearest(*args)[0]


def grid_summary(grid: list[dict]) -> dict:
    def share(cs: list[dict]) -> float:
        return float(np.mean([c["chosen_ok"] and c["ratio"] <= 1.1 for c in cs])) if cs else float("nan")

    def decisive(c: dict) -> bool:  # the runner-up that meets recall is > 10% slower: a wrong choice costs
        ok = sorted(v["s"] for v in c["candidates"].values() if v["ok"])
        return len(ok) < 2 or ok[1] > 1.1 * ok[0]

    ratios = np.array([c["ratio"] if c["chosen_ok"] else np.inf for c in grid])
    dec = [c for c in grid if decisive(c)]
    return {"cells": len(grid), "planner_within_10pct_share": share(grid),
            "planner_worst_ratio": float(ratios.max()), "decisive_cells": len(dec),
            "planner_within_10pct_share_decisive": share(dec),
            "planner_worst_ratio_decisive": float(max((c["ratio"] for c in dec), default=np.nan)),
            "planner_within_10pct_share_with_planning": float(np.mean([c["chosen_ok"] and c["ratio_with_planning"]
                                                                       <= 1.1 for c in grid])),
            "planner_within_10pct_share_exec_only": float(np.mean([c["chosen_ok"] and c.get("ratio_exec_only", np.inf)
                                                                   <= 1.1 for c in grid])),
            "planner_worst_ratio_exec_only": float(max(c.get("ratio_exec_only", np.inf) if c["chosen_ok"] else np.inf
                                                       for c in grid)),
            "planning_overhead_p50_ms": 1e3 * float(np.median([c["planning_s"] for c in grid])),
            "chosen_recall_min": float(min(c["chosen_recall"] for c in grid)),
            "choices": {n: sum(c["chosen"] == n for c in grid) for n in sorted({c["chosen"] for c in grid})}}
