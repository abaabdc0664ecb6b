"""`leanml study`: run a data selection study grid, print its table, write Parquet + report."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from leanml.cli.app import app


def _split(text: str | None, cast, name: str) -> list | None:
    if not text:
        return None
    try:
        return [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{name}: expected a comma-separated list, got {text!r}") from None


def _sizes(items: list[str]) -> dict[str, str]:
    out = {}
    for it in items:
        if "=" not in it:
            raise typer.BadParameter(f"--size: expected KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def summary_table(rows: list[dict], title: str) -> Table:
    """A Rich table of the study summary (mean over seeds), Pareto-optimal cells marked."""
    from leanml.bench.report import pareto_front
    from leanml.bench.study import summarize

    summ = summarize(rows)
    front = set(pareto_front([(r["total_wall_s"] or 0.0, r["accuracy"]) for r in summ]))
    t = Table(title=title, title_justify="left")
    multi = any(r["seeds"] > 1 for r in summ)
    t.add_column("method", no_wrap=True)
    for c in ("budget", "acc", *(("sd", "seeds") if multi else ()), "select s", "train s", "total s"):
        t.add_column(c, justify="right", no_wrap=True)
    t.add_column("front", justify="center")

    def f(v):
        return "unavailable" if v is None else f"{v:.2f}"
    for i, r in enumerate(summ):
        spread = (f"{r['accuracy_sd']:.3f}", str(r["seeds"])) if multi else ()
        t.add_row(r["method"], f"{r['budget']:g}", f"{r['accuracy']:.4f}", *spread, f(r["select_wall_s"]),
                  f(r["train_wall_s"]), f(r["total_wall_s"]), "*" if i in front else "")
    return t


def run_and_report(suite: str, methods=None, budgets=None, seeds=None, sizes=None, out: Path | None = None,
                   report: bool = True, console: Console | None = None) -> tuple[list[dict], Path]:
    """Plan, run (resuming), print the table, write the report; shared by `study` and `demo`."""
    from leanml.bench import plan_study, run_study, write_report

    console = console or Console()
    out = out or Path("benchmarks/results") / f"study-{suite}"
    try:
        plan = plan_study(suite, methods=methods, budgets=budgets, seeds=seeds, sizes=sizes, out=out)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    rows = run_study(plan, log=lambda s: console.print(s, markup=False, highlight=False))
    rows = [r for r in rows if r["suite"] == suite]
    if not rows:
        console.print(f"[red]no results for suite {suite}[/red]")
        raise typer.Exit(1)
    console.print(summary_table(rows, f"study {suite}: {plan.suite.description}"))
    if report:
        cmd = "leanml " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        path = write_report(rows, out, title=suite, command=cmd)
        console.print(f"results: {plan.results_path}\nreport:  {path}")
    return rows, out


@app.command("study")
def study(
    suite: str = typer.Option("quick", "--suite", help="quick | cifar10 | sst2 | sst2-frozen | instruct"),
    methods: str = typer.Option("", "--methods", help="Comma-separated method ids (default: the suite's)."),
    budgets: str = typer.Option("", "--budgets", help="Comma-separated fractions of the pool, e.g. 0.05,0.1."),
    seeds: str = typer.Option("", "--seeds", help="Comma-separated seeds, e.g. 0,1."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default benchmarks/results/study-SUITE)."),
    size: list[str] = typer.Option([], "--size", help="Suite size parameter KEY=VALUE (repeatable)."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write report.md and plots."),
) -> None:
    """Run a data selection study: every (method, budget, seed) cell selects, trains, evaluates;
    selection and training costs are metered separately. Re-running skips finished cells."""
    run_and_report(suite, _split(methods, str, "--methods"), _split(budgets, float, "--budgets"),
                   _split(seeds, int, "--seeds"), _sizes(size), out, report)
