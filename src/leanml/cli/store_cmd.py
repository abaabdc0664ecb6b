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
    q = np.load(query_file)
    return q


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
    query_file: Path = typer.Option(None, help="Query features .npy: [d], [n, d] or [C, n, d]."),
    k: int = typer.Option(10, help="Neighbours per query."),
    metric: str = typer.Option("cosine", help="cosine | ip."),
    faiss: str = typer.Option(None, help="Approximate search with a FAISS index: ivf | hnsw | flat."),
) -> None:
    """Top-k stored examples per query (exact by default, in memory-bounded blocks)."""
    from leanml.store import FaissIndex, StoreError, topk
    from leanml.store.tasks import _query as as_features

    store = _open(path)
    q, _ = as_features(store, _query(store, task, row, query_file))
    try:
        if faiss:
            ids, scores = FaissIndex(store, faiss).search(list(q), k)
        else:
            ids, scores = topk(store, list(q), k, metric=metric)
    except (ValueError, StoreError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    Console().print_json(json.dumps({"ids": ids.tolist(), "scores": np.round(scores, 6).tolist()}))


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
