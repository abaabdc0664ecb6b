"""Run a study grid: suites x methods x budgets x seeds, selection and training metered separately.

Per cell: the selector's own cost (``Selection.cost``, plus the per-batch hook of online methods),
the training cost (`Learner.fit`'s meter, minus the online hook's share), the suite's metric on
test data, and total = select + train. The selection's wall time is also split by stage
(``select_stage_{train,infer,grads,other}_s``, see `leanml.bench.projection`). Rows are appended to
Parquet after every cell; cells already in the file are skipped, so an interrupted study resumes
where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leanml.bench.projection import STAGE_COLUMNS, stage_seconds
from leanml.bench.results import ResultTable, key_of
from leanml.bench.suites import Suite, SuiteData, get_suite
from leanml.meter import Cost, Meter
from leanml.select import SelectionError, get_selector, list_methods

_FIELDS = ("wall_s", "cpu_s", "energy_cpu_j", "energy_gpu_j", "peak_rss_bytes", "peak_gpu_bytes", "flops")


@dataclass
class StudyPlan:
    suite: Suite
    methods: list[str]
    budgets: list[float]
    seeds: list[int]
    sizes: dict[str, Any]
    out: Path

    @property
    def results_path(self) -> Path:
        return self.out / "results.parquet"


def plan_study(suite: str, *, methods: Sequence[str] | None = None, budgets: Sequence[float] | None = None,
               seeds: Sequence[int] | None = None, sizes: dict[str, Any] | None = None,
               out: str | Path = "study") -> StudyPlan:
    """Validate a grid against the suite (methods it runs, budgets in (0, 1], size parameters)."""
    s = get_suite(suite)
    known = set(list_methods())
    methods = list(methods) if methods else list(s.methods)
    bad = [m for m in methods if m not in known]
    if bad:
        raise ValueError(f"--methods: unknown method(s) {bad}; known: {', '.join(list_methods())}")
    budgets = [float(b) for b in (budgets or s.budgets)]
    if any(not 0 < b <= 1 for b in budgets):
        raise ValueError(f"--budgets: each budget is a fraction of the pool in (0, 1], got {budgets}")
    seeds = [int(x) for x in (seeds if seeds is not None and len(seeds) else s.seeds)]
    return StudyPlan(s, methods, sorted(set(budgets)), seeds, s.resolve_sizes(sizes), Path(out))


def _sub(a: Cost, b: Cost) -> Cost:
    """a - b field by field (None stays None): training cost with the online hook's share removed."""
    out = Cost()
    for f in ("wall_s", "cpu_s", "energy_cpu_j", "energy_gpu_j", "flops"):
        x, y = getattr(a, f), getattr(b, f)
        setattr(out, f, None if x is None or y is None else max(0.0, x - y))
    out.peak_rss_bytes, out.peak_gpu_bytes = a.peak_rss_bytes, a.peak_gpu_bytes
    return out


def run_cell(data: SuiteData, selector: Any, method: str, budget: float, seed: int, base_epochs: int,
             suite: str) -> dict[str, Any]:
    """Select, train on the selection, evaluate; one result row."""
    learner, pool = data.learner, data.pool
    sel = selector.select(pool, budget, target=data.target)
    model = learner.new_model(seed)
    if sel.online is not None:
        plan = sel.online
        # As many backward passes as training on a budget-sized subset: each step back-propagates
        # plan.batch_size examples picked from a full presample (each epoch's short last presample is
        # skipped, or a step there would pick fewer), so stop after that many steps; the row records the
        # examples actually back-propagated.
        steps = max(1, int(round(base_epochs * budget * len(pool) / plan.batch_size)))
        per_epoch = max(1, len(pool) // plan.presample)
        epochs = -(-steps // per_epoch)
        res = learner.fit(model, pool.X, pool.y, epochs=epochs, batch_size=plan.presample, seed=seed,
                          batch_hook=plan.hook, loss_norm=plan.loss_norm, max_steps=steps, drop_last=True)
        hook = plan.hook_cost()
        select_cost, train_cost = sel.cost + hook, _sub(res.cost, hook)
        n_train = int(res.examples)  # examples back-propagated
        epochs_run = epochs
    else:
        X, y = pool.take(sel.indices)
        res = learner.fit(model, X, y, weights=sel.weights, seed=seed)
        select_cost, train_cost = sel.cost, res.cost
        n_train = len(sel) * base_epochs
        epochs_run = base_epochs
    with Meter() as m:
        acc = learner.evaluate(model, data.test_X, data.test_y)
    total = select_cost.without_stages() + train_cost.without_stages()
    row: dict[str, Any] = {
        "suite": suite, "method": method, "budget": float(budget), "seed": int(seed),
        "metric": learner.metric, "accuracy": float(acc),
        "n_selected": int(len(sel)) if sel.online is None else int(round(len(pool) * budget)),
        "n_pool": len(pool), "examples_trained": n_train, "epochs": epochs_run,
        "weighted": sel.weights is not None, "online": sel.online is not None,
        "eval_wall_s": m.cost.wall_s, "finished_at": time.time(),
    }
    for prefix, c in (("select_", select_cost), ("train_", train_cost), ("total_", total)):
        for f in _FIELDS:
            v = getattr(c, f)
            row[prefix + f] = None if v is None else float(v)
    for s, secs in stage_seconds(select_cost).items():
        row[STAGE_COLUMNS[s]] = secs
    row["select_notes"] = "; ".join(f"{k}: {v}" for k, v in sorted(select_cost.notes.items()))
    return row


def _preload() -> None:
    """Pay one-time import costs (torch.optim pulls in torch._dynamo, seconds on a loaded CPU) before
    the first cell, so they are not billed to whichever cell happens to run first."""
    import torch
    import torch.func  # noqa: F401

    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])


def run_study(plan: StudyPlan, *, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run every unfinished cell of the plan; returns all rows of the results file."""
    import torch

    _preload()
    table = ResultTable(plan.results_path)
    done = table.done()
    s = plan.suite
    old_threads = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    try:
        for seed in plan.seeds:
            todo = [(m, b) for m in plan.methods for b in (plan.budgets if m != "full" else [1.0])
                    if key_of({"suite": s.name, "method": m, "budget": b, "seed": seed}) not in done]
            if not todo:
                log(f"[{s.name}] seed {seed}: every cell already in {plan.results_path}")
                continue
            t0 = time.perf_counter()
            data = s.build(plan.sizes, seed)
            log(f"[{s.name}] seed {seed}: pool {len(data.pool)}, test {len(data.test_X)} "
                f"(built in {time.perf_counter() - t0:.1f}s); {len(todo)} cells to run")
            for method in plan.methods:
                cells = [b for m, b in todo if m == method]
                if not cells:
                    continue
                params = dict(s.method_params.get(method, {}))
                selector = get_selector(method, seed=seed, **params)
                why = selector.applicable(data.pool, data.target)
                if why:
                    log(f"  skip {method}: {why}")
                    continue
                data.pool.cache.clear()  # every method pays for its own warm-ups and features
                for b in cells:
                    try:
                        row = run_cell(data, selector, method, b, seed, s.build_epochs(plan.sizes), s.name)
                    except SelectionError as e:
                        log(f"  {method} @ {b:g}: not run: {e}")
                        continue
                    table.append([row])
                    log(f"  {method:>16} @ {b:<5g} {row['metric']}={row['accuracy']:.4f}  "
                        f"select {row['select_wall_s']:.2f}s  train {row['train_wall_s']:.2f}s")
    finally:
        torch.set_num_threads(old_threads)
    return table.rows()


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean (and spread) over seeds per (suite, method, budget)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["suite"], r["method"], float(r["budget"])), []).append(r)
    out = []
    for (suite, method, budget), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        acc = np.array([r["accuracy"] for r in rs])

        def mean(k: str, rs=rs) -> float | None:
            v = [r.get(k) for r in rs]
            return None if any(x is None for x in v) else float(np.mean(v))
        out.append({"suite": suite, "method": method, "budget": budget, "metric": rs[0]["metric"],
                    "seeds": len(rs), "accuracy": float(acc.mean()), "accuracy_sd": float(acc.std()),
                    "select_wall_s": mean("select_wall_s"), "train_wall_s": mean("train_wall_s"),
                    "total_wall_s": mean("total_wall_s"), "select_cpu_s": mean("select_cpu_s"),
                    "train_cpu_s": mean("train_cpu_s"), "total_cpu_s": mean("total_cpu_s"),
                    "total_energy_cpu_j": mean("total_energy_cpu_j")})
    return out
