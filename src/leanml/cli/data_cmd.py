"""`leanml data ...`: what datasets exist, which are available under the data root, and whether they load."""

from __future__ import annotations

import time

import typer
from rich.console import Console
from rich.table import Table

from leanml.data import DatasetError, data_root, get_spec, list_specs, load
from leanml.meter.cost import _human_bytes

app = typer.Typer(no_args_is_help=True, help="Datasets: list them, check that they load.")


def _rows(splits: dict[str, int]) -> str:
    return "\n".join(f"{k} {v:,}" for k, v in splits.items())


@app.command("list")
def list_cmd(
    wide: bool = typer.Option(False, "--wide", "-w", help="Also show kind, description and where each is published."),
) -> None:
    """Show each dataset: availability under the data root, size, rows per split, licence."""
    root = data_root()
    t = Table(title=f"datasets under {root}", title_justify="left")
    t.add_column("name", no_wrap=True)
    if wide:
        t.add_column("kind")
    t.add_column("available", no_wrap=True)
    t.add_column("size", justify="right", no_wrap=True)
    t.add_column("rows", justify="right", no_wrap=True)
    t.add_column("licence", overflow="fold")
    if wide:
        t.add_column("description", overflow="fold")
        t.add_column("source", overflow="fold")
    for spec in sorted(list_specs(), key=lambda s: (not s.bundled, s.name)):
        size = spec.size_bytes(root)
        avail = "[green]bundled[/green]" if spec.bundled else (
            "[green]yes[/green]" if spec.available(root) else "[red]missing[/red]")
        cells = [spec.name, *([spec.kind] if wide else []), avail,
                 "-" if size is None else _human_bytes(size), _rows(spec.splits), spec.license]
        if wide:
            cells += [spec.description, spec.source]
        t.add_row(*cells)
    Console().print(t)
    if not root.exists():
        Console(stderr=True).print(f"[yellow]data root {root} does not exist; set LEANML_DATA[/yellow]")
    elif not wide:
        Console().print("[dim]--wide shows where each dataset is published[/dim]")


@app.command("check")
def check_cmd(
    names: list[str] = typer.Argument(None, help="Datasets to check (default: all)."),
) -> None:
    """Load every split of each dataset and validate it (decodes and caches CIFAR-10 on first use)."""
    specs = [get_spec(n) for n in names] if names else sorted(list_specs(), key=lambda s: (not s.bundled, s.name))
    t = Table(title=f"dataset check under {data_root()}", title_justify="left")
    for col in ("name", "split", "rows", "seconds", "status"):
        t.add_column(col, overflow="fold")
    failed = 0
    for spec in specs:
        for split, expected in spec.splits.items():
            start = time.perf_counter()
            try:
                n = len(load(spec.name, split))
                status = "[green]ok[/green]" if n == expected else f"[red]{n:,} rows, expected {expected:,}[/red]"
                failed += n != expected
            except DatasetError as e:
                n, status, failed = 0, f"[red]{e.problem}[/red]\n{e.path}", failed + 1
            t.add_row(spec.name, split, f"{n:,}", f"{time.perf_counter() - start:.1f}", status)
    Console().print(t)
    if failed:
        raise typer.Exit(code=1)
