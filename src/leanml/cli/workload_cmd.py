"""`leanml workload ...`: describe serving traces (rate, burstiness, token sizes) with plots."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True, help="Serving workloads and traces.")
console = Console()


@app.callback()
def _group() -> None:
    """Serving workloads and traces."""


@app.command("describe")
def describe_command(
    trace: str = typer.Argument(..., help="A trace dataset name (e.g. azure_llm_code) or a CSV/JSONL file."),
    timestamp_col: str = typer.Option("TIMESTAMP", help="Column holding arrival times (date-times or numbers)."),
    timestamp_unit: str = typer.Option("s", help="Unit of numeric timestamps: s or ms."),
    context_col: str = typer.Option("ContextTokens", help="Column with prompt/context tokens ('' to skip)."),
    generated_col: str = typer.Option("GeneratedTokens", help="Column with generated tokens ('' to skip)."),
    bin_s: float = typer.Option(1.0, help="Bin width (s) for the rate series and count CV."),
    plots: Path | None = typer.Option(None, help="Folder to write PNG plots into."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Rate over time, CV of inter-arrival times and of per-bin counts, token percentiles."""
    from leanml.serve.workload.describe import describe, plot
    from leanml.serve.workload.traces import TraceError, load_trace

    try:
        tr = load_trace(
            trace, timestamp_col=timestamp_col, timestamp_unit=timestamp_unit,
            context_col=context_col or None, generated_col=generated_col or None,
        )
        summary = describe(tr, bin_s=bin_s)
        written = plot(tr, plots, bin_s=bin_s) if plots is not None else []
    except TraceError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps({**summary, "plots": [str(p) for p in written]}))
        return
    table = Table(title=f"workload: {tr.name}")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for k, v in summary.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    console.print(table)
    for p in written:
        console.print(f"plot: {p}")
