"""`leanml meter -- CMD ARGS...`: meter a whole command and print its cost table."""

from __future__ import annotations

import subprocess
from pathlib import Path

import typer
from rich.console import Console

from leanml.cli.app import app
from leanml.meter import Meter


@app.command(
    "meter",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def meter(
    ctx: typer.Context,
    json_out: Path | None = typer.Option(None, "--json", help="Also write the cost as JSON to this file."),
) -> None:
    """Run a command (after `--`) and print its wall/CPU time, energy, peak memory.

    Example: leanml meter -- python -c "sum(range(10**7))"
    """
    cmd = list(ctx.args)
    if not cmd:
        raise typer.BadParameter("give the command to meter after `--`, e.g. leanml meter -- sleep 1")
    console = Console(stderr=True)
    with Meter(children_only=True) as m:
        try:
            rc = subprocess.call(cmd)
        except FileNotFoundError:
            console.print(f"[red]leanml meter: command not found: {cmd[0]}[/red]")
            raise typer.Exit(127) from None
    console.print(m.cost.table(title=f"cost of: {' '.join(cmd)}"))
    for field, why in m.cost.notes.items():
        console.print(f"  [dim]{field}: {why}[/dim]")
    if json_out is not None:
        from leanml.io import atomic_write_text

        atomic_write_text(json_out, m.cost.to_json())
    raise typer.Exit(rc)
