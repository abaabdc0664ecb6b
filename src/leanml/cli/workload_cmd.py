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
    format: str | None = typer.Option(None, "--format", help="Force a trace format (azure_llm, mooncake, burstgpt); "
                                      "default: recognized by the file's columns."),
    timestamp_col: str | None = typer.Option(None, help="Field map for any other file: the column holding arrival "
                                             "times (date-times or numbers). Not needed for the public formats."),
    timestamp_unit: str = typer.Option("s", help="Field map: unit of numeric timestamps, s or ms."),
    context_col: str | None = typer.Option(None, help="Field map: column with prompt/context tokens."),
    generated_col: str | None = typer.Option(None, help="Field map: column with generated tokens."),
    bin_s: float = typer.Option(1.0, help="Bin width (s) for the rate series and count CV."),
    plots: Path | None = typer.Option(None, help="Folder to write PNG plots into."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Rate over time, CV of inter-arrival times and of per-bin counts, token percentiles."""
    from leanml.serve.workload.describe import describe, plot
    from leanml.serve.workload.traces import TraceError, load_trace

    try:
        tr = load_trace(
            trace, format=format, timestamp_col=timestamp_col or None, timestamp_unit=timestamp_unit,
            context_col=context_col or None, generated_col=generated_col or None,
        )
        if not as_json:
            console.print(f"trace format: {tr.info.get('format_note') or tr.info.get('format', 'dataset')}")
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
