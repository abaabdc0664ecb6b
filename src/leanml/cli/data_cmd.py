"""`leanml data ...`: what datasets exist and which are available under the data root."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from leanml.data import data_root, list_specs
from leanml.meter.cost import _human_bytes

app = typer.Typer(no_args_is_help=True)


@app.command("list")
def list_cmd() -> None:
    """Show each dataset: availability under the data root, size, rows per split, licence."""
    root = data_root()
    t = Table(title=f"datasets (data root: {root})")
    for col in ("name", "kind", "available", "size", "rows", "licence", "source"):
        t.add_column(col, overflow="fold")
    for spec in list_specs():
        ok = spec.available(root)
        size = spec.size_bytes(root)
        t.add_row(
            spec.name, spec.kind,
            "[green]bundled[/green]" if spec.bundled else ("[green]yes[/green]" if ok else "[red]missing[/red]"),
            "-" if size is None else _human_bytes(size),
            ", ".join(f"{k} {v:,}" for k, v in spec.splits.items()),
            spec.license, spec.source,
        )
    Console().print(t)
    if not root.exists():
        Console(stderr=True).print(f"[yellow]data root {root} does not exist; set LEANML_DATA[/yellow]")
