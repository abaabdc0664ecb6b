"""`leanml store ...`: inspect, verify and query a gradient store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True)
err = Console(stderr=True)


def _open(path: Path):  # noqa: ANN202
    from leanml.store import GradientStore, StoreError

    try:
        return GradientStore.open(path)
    except StoreError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None


def _query(store, task: str | None, row: int, query_file: Path | None):  # noqa: ANN001, ANN202
    if (task is None) == (query_file is None):
        err.print("[red]error:[/red] give exactly one of --task NAME (with --row) or --query-file FILE.npy")
        raise typer.Exit(2)
    if task is not None:
        if task not in store.manifest.tasks:
            err.print(f"[red]error:[/red] no task {task!r}; tasks: {sorted(store.manifest.tasks)}")
            raise typer.Exit(2)
        return (task, row)
    return np.load(query_file)


def _features(store, query):  # noqa: ANN001, ANN202
    """Query features per checkpoint: a task row, or a file's [d], [n, d] or [C, n, d] array."""
    from leanml.store.query.lookups import query_features as task_row
    from leanml.store.search import as_per_checkpoint

    if isinstance(query, tuple):
        return list(task_row(store, query)[0])
    try:
        return as_per_checkpoint(store, query)
    except ValueError as e:
        err.print(f"[red]error:[/red] --query-file: {e}")
        raise typer.Exit(2) from None


def plan_table(plan) -> Table:  # noqa: ANN001
    """The plan's candidates, cheapest first, the chosen one marked; times are predictions."""
    from leanml.hw.units import fmt_si

    t = Table(title=f"query plan: {plan.n_queries} queries, top-{plan.k}, {plan.n_rows} rows "
              "(predicted by leanml.hw's cost model)", title_justify="left",
              caption="; ".join(plan.notes), caption_justify="left")
    for c in ("plan", "device", "predicted", "breakdown", "memory", "recall", "params", "status"):
        t.add_column(c, overflow="fold")
    for c in plan.candidates:
        rec = "not measured" if c.recall is None else f"{c.recall:.3f} ({c.recall_source})"
        status = "[bold green]chosen[/bold green]" if c is plan.choice else ("eligible" if c.eligible else c.why_not)
        t.add_row(c.name, c.device, fmt_si(c.time_s, "s"), ", ".join(f"{k} {fmt_si(v, 's')}"
                  for k, v in c.breakdown.items()), fmt_si(c.memory_bytes, "B"), rec,
                  ", ".join(f"{k}={v}" for k, v in c.params.items()), status)
    return t


def _plan(store, n_queries: int, k: int, metric: str, host: str, device: str | None, recall: float | None,
          ivf_recall: float | None, memory_budget: str | None):  # noqa: ANN001, ANN202
    from leanml.hw import HwError
    from leanml.hw.units import parse_quantity
    from leanml.store.plan import PlanError, plan_search

    try:
        budget = None if memory_budget is None else parse_quantity(memory_budget, "bytes", "--memory-budget")
        return plan_search(store, n_queries, k, host=host, device=device, recall=recall, ivf_recall=ivf_recall,
                           memory_budget=budget, metric=metric)
    except (PlanError, HwError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None


_HOST = typer.Option("local", "--host", help="Cost-model id of this machine's CPU ('local' after `leanml hw "
                     "calibrate`, or a catalog id such as dev_vm).")
_GPU = typer.Option(None, "--plan-device", help="GPU catalog id to cost an exact GPU scan on (default: the GPU "
                    "present, if any; one not present is listed as a what-if, never chosen).")
_RECALL = typer.Option(None, "--recall", help="Recall@k target below 1 to allow IVF (default: exact).")
_IVF_RECALL = typer.Option(None, "--ivf-recall", help="Measured IVF recall@k (e.g. from store_bench); IVF is "
                           "chosen only if it is >= --recall. Recall is never predicted.")
_BUDGET = typer.Option(None, "--memory-budget", help="Memory budget, e.g. '2 GiB': exact scans shrink their "
                       "blocks to fit, IVF must fit.")


@app.command("info")
def info_cmd(path: Path = typer.Argument(..., help="Store directory."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Dimension, codec, projection, checkpoints with rows, bytes per example, tasks."""
    info = _open(path).info()
    if as_json:
        Console().print_json(json.dumps(info, default=str))
        return
    t = Table(title=f"gradient store {path}", show_header=False)
    for k, v in info.items():
        t.add_row(k, json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v))
    Console().print(t)


@app.command("verify")
def verify_cmd(path: Path = typer.Argument(..., help="Store directory.")) -> None:
    """Recompute every shard's sha256 against the manifest; exit 1 on any problem."""
    problems = _open(path).verify()
    if problems:
        for p in problems:
            err.print(f"[red]{p}[/red]")
        raise typer.Exit(1)
    Console().print("[green]ok[/green]: every shard matches its checksum")


@app.command("search")
def search_cmd(
    path: Path = typer.Argument(..., help="Store directory."),
    task: str = typer.Option(None, help="Query with a stored task's example (see --row)."),
    row: int = typer.Option(0, help="Row of the task to query with."),
    query_file: Path = typer.Option(None, help="Query features .npy: \\[d], \\[n, d] or \\[C, n, d]."),
    k: int = typer.Option(10, help="Neighbours per query."),
    metric: str = typer.Option("cosine", help="cosine | ip."),
    faiss: str = typer.Option(None, help="Approximate search with a FAISS index: ivf | hnsw | flat."),
    plan: bool = typer.Option(False, "--plan", help="Choose exact CPU / exact GPU / IVF with the cost model "
                              "(leanml.store.plan), print the plan to stderr, run the chosen one."),
    host: str = _HOST, plan_device: str = _GPU, recall: float = _RECALL, ivf_recall: float = _IVF_RECALL,
    memory_budget: str = _BUDGET,
) -> None:
    """Top-k stored examples per query (exact by default, in memory-bounded blocks)."""
    from leanml.store import FaissIndex, StoreError, topk
    from leanml.store.plan import PlanError, execute

    store = _open(path)
    q = _features(store, _query(store, task, row, query_file))
    if plan and faiss:
        err.print("[red]error:[/red] give --plan or --faiss, not both (the plan chooses the index)")
        raise typer.Exit(2)
    try:
        if plan:
            p = _plan(store, q[0].shape[0], k, metric, host, plan_device, recall, ivf_recall, memory_budget)
            err.print(plan_table(p))
            ids, scores = execute(store, p, q, k)
        elif faiss:
            ids, scores = FaissIndex(store, faiss).search(q, k)
        else:
            ids, scores = topk(store, q, k, metric=metric)
    except (ValueError, StoreError, PlanError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    Console().print_json(json.dumps({"ids": ids.tolist(), "scores": np.round(scores, 6).tolist()}))


@app.command("plan")
def plan_cmd(
    path: Path = typer.Argument(..., help="Store directory."),
    queries: int = typer.Option(16, "--queries", help="Queries per call."),
    k: int = typer.Option(10, help="Neighbours per query."),
    metric: str = typer.Option("cosine", help="cosine | ip."),
    host: str = _HOST, plan_device: str = _GPU, recall: float = _RECALL, ivf_recall: float = _IVF_RECALL,
    memory_budget: str = _BUDGET,
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Predicted time of every way to answer a top-k query on this store, and the one the planner picks."""
    p = _plan(_open(path), queries, k, metric, host, plan_device, recall, ivf_recall, memory_budget)
    if as_json:
        print(json.dumps(p.to_dict(), default=str))
        return
    Console().print(plan_table(p))


@app.command("explain")
def explain_cmd(
    path: Path = typer.Argument(..., help="Store directory."),
    task: str = typer.Option(None, help="Stored task holding the example to explain."),
    row: int = typer.Option(0, help="Row of the task."),
    query_file: Path = typer.Option(None, help="Or: the example's features (.npy)."),
    k: int = typer.Option(10, help="How many training examples."),
) -> None:
    """The most influential training examples for one example, with scores and metadata."""
    from leanml.store import StoreError

    store = _open(path)
    try:
        rows = store.explain(_query(store, task, row, query_file), k)
    except (ValueError, StoreError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    t = Table(title="most influential training examples")
    cols = list(dict.fromkeys(c for r in rows for c in r))
    for c in cols:
        t.add_column(c, overflow="fold", max_width=60)
    for r in rows:
        t.add_row(*[f"{r.get(c):.4f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols])
    Console().print(t)


@app.command("query")
def query_cmd(
    path: Path = typer.Argument(..., help="Store directory."),
    steps: Path = typer.Option(None, "--steps", help="Steps as TOML ([[step]] tables with op = \"where\", ...) or "
                               "JSON ({\"steps\": [{\"op\": ...}]}); .npy paths for queries/target."),
    where: str = typer.Option(None, "--where", help="SQL predicate over the metadata (DuckDB)."),
    nearest: Path = typer.Option(None, "--nearest", help="Query features .npy (\\[d], \\[n, d] or \\[C, n, d])."),
    k: int = typer.Option(10, "--k", help="Neighbours per query for --nearest."),
    recall: float = typer.Option(None, "--recall", help="Allow approximate nearest plans at this recall (< 1)."),
    score: str = typer.Option(None, "--score", help="less | trak | inner, against --target."),
    target: str = typer.Option(None, "--target", help="Stored task name (or a .npy of target features)."),
    top: int = typer.Option(None, "--top", help="Keep the n best by score."),
    top_fraction: float = typer.Option(None, "--top-fraction", help="Keep this fraction, best by score."),
    dedup: float = typer.Option(None, "--dedup", help="Collapse near-duplicates above this cosine."),
    diversify: int = typer.Option(None, "--diversify", help="Then keep n, one per component first."),
    explain: bool = typer.Option(False, "--explain", help="Print the plan (predicted times) and do not run."),
    analyze: bool = typer.Option(False, "--analyze", help="Run, then print the plan with measured times (stderr)."),
    limit: int = typer.Option(50, "--limit", help="Rows of the result to print."),
    host: str = typer.Option(None, "--host", help="Cost-model device (default: local if calibrated, else dev_vm)."),
) -> None:
    """A cross-algebra query: --steps FILE, or flags applied in the order where, nearest, score, top, dedup,
    diversify. Prints the result rows as JSON; --explain prints the plan instead."""
    from leanml.store import StoreError
    from leanml.store.query import Query, QueryError, load_spec

    store = _open(path)
    try:
        q = Query(store, host=host)
        if steps is not None:
            if any(v is not None for v in (where, nearest, score, top, top_fraction, dedup, diversify)):
                raise QueryError("spec", "give --steps or step flags, not both")
            q.add_steps(load_spec(steps))
        else:
            if where:
                q.where(where)
            if nearest is not None:
                q.nearest(np.load(nearest), k, recall=recall)
            if score:
                tgt = np.load(target) if target and target.endswith(".npy") else target
                q.score(score, target=tgt)
            if top is not None:
                q.top(top)
            if top_fraction is not None:
                q.top_fraction(top_fraction)
            if dedup is not None:
                q.dedup(dedup)
            if diversify is not None:
                q.diversify(diversify)
        if recall is not None and nearest is None and steps is None:
            raise QueryError("spec", "--recall applies to --nearest only")
        if explain:
            print(q.explain())
            return
        t = q.run()
    except (QueryError, StoreError, ValueError, OSError) as e:
        err.print(f"[red]error:[/red] {e}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    if analyze:
        err.print(q.explain(), markup=False, highlight=False, soft_wrap=True)
    rows = t.slice(0, limit).to_pylist()
    print(json.dumps({"rows": rows, "n_rows": t.num_rows, "columns": t.column_names}, default=str))
