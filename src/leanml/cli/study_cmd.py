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


def summary_table(rows: list[dict], title: str, cost: str = "wall") -> Table:
    """A Rich table of the study summary (mean over seeds) in wall or CPU seconds, Pareto-optimal cells marked."""
    from leanml.bench.report import check_cost, pareto_front
    from leanml.bench.study import summarize

    c = check_cost(cost)
    summ = summarize(rows)
    front = set(pareto_front([(r[f"total_{c}_s"] or 0.0, r["accuracy"]) for r in summ]))
    from leanml.bench.suites import VARIANTS

    t = Table(title=title, title_justify="left")
    multi = any(r["seeds"] > 1 for r in summ)
    t.add_column("method", no_wrap=True)
    variants = any(r["method"] in VARIANTS for r in summ)
    if variants:
        t.add_column("variant", no_wrap=True)
    unit = "s" if c == "wall" else "cpu s"
    for col in ("budget", "acc", *(("sd", "seeds") if multi else ()), f"select {unit}", f"train {unit}",
                f"total {unit}"):
        t.add_column(col, justify="right", no_wrap=True)
    t.add_column("front", justify="center")

    def f(v):
        return "unavailable" if v is None else f"{v:.2f}"
    for i, r in enumerate(summ):
        spread = (f"{r['accuracy_sd']:.3f}", str(r["seeds"])) if multi else ()
        var = (VARIANTS.get(r["method"], ""),) if variants else ()
        t.add_row(r["method"], *var, f"{r['budget']:g}", f"{r['accuracy']:.4f}", *spread, f(r[f"select_{c}_s"]),
                  f(r[f"train_{c}_s"]), f(r[f"total_{c}_s"]), "*" if i in front else "")
    return t


def projection_table(prows: list[dict], ratios: dict, device: str, from_device: str) -> Table:
    """A Rich table of a study projected onto ``device`` (mean over seeds); energy is an estimate."""
    from leanml.bench.projection import summarize_projection

    t = Table(title=f"projected onto {device} (measured on {from_device})", title_justify="left",
              caption="time ratios: " + ", ".join(f"{k} {r.ratio:.3g}" for k, r in sorted(ratios.items()))
              + "; host work ('other') kept at its measured time; energy: power-model estimate",
              caption_justify="left")
    t.add_column("method", no_wrap=True)
    for c in ("budget", "select", "proj", "other", "train", "proj", "total", "J (est)"):
        t.add_column(c, justify="right", no_wrap=True)

    def f(v, nd=3):
        return "unavailable" if v is None else f"{v:.{nd}f}"
    for r in summarize_projection(prows):
        t.add_row(r["method"], f"{r['budget']:g}", f(r["measured_select_s"]), f(r["select_s"]),
                  f(r["select_other_s"]), f(r["measured_train_s"]), f(r["train_s"]), f(r["total_s"]),
                  f(r["energy_est_j"], 2))
    return t


def run_and_report(suite: str, methods=None, budgets=None, seeds=None, sizes=None, out: Path | None = None,
                   report: bool = True, console: Console | None = None, project_to: list[str] | None = None,
                   project_from: str = "local", cost: str = "wall") -> tuple[list[dict], Path]:
    """Plan, run (resuming), print the table (and projections), write the report; shared by `study` and `demo`."""
    from leanml.bench import plan_study, run_study, write_report
    from leanml.bench.projection import ProjectionError, check_devices, project_rows, projection_markdown
    from leanml.bench.report import check_cost

    console = console or Console()
    out = out or Path("benchmarks/results") / f"study-{suite}"
    try:
        check_cost(cost)
        plan = plan_study(suite, methods=methods, budgets=budgets, seeds=seeds, sizes=sizes, out=out)
        for dev in project_to or []:  # fail before a long run, not after it
            check_devices(dev, project_from)
        if project_to and plan.suite.workload is None:
            raise ProjectionError(f"--project-to: suite '{suite}' provides no model workload to trace; "
                                  "projectable suites: quick, cifar10, sst2-frozen")
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    rows = run_study(plan, log=lambda s: console.print(s, markup=False, highlight=False))
    rows = [r for r in rows if r["suite"] == suite]
    if not rows:
        console.print(f"[red]no results for suite {suite}[/red]")
        raise typer.Exit(1)
    console.print(summary_table(rows, f"study {suite} (scenario: {plan.suite.scenario}): {plan.suite.description}",
                                cost))
    sections = []
    for dev in project_to or []:
        prows, ratios = project_rows(rows, plan.suite, dev, from_device=project_from, sizes=plan.sizes)
        console.print(projection_table(prows, ratios, dev, project_from))
        sections.append(projection_markdown(prows, ratios, dev, project_from))
    if report:
        cmd = "leanml " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        path = write_report(rows, out, title=suite, command=cmd, projections=sections, cost=cost)
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
    project_to: str = typer.Option(
        "", "--project-to",
        help="Comma-separated catalog device ids (see `leanml hw list`), e.g. h200,a100_80gb: project each "
             "cell's selection (per stage) and training time onto them with the roofline cost model, print the "
             "tables and add them to report.md. Host work stays at its measured time; energy is an estimate."),
    project_from: str = typer.Option(
        "local", "--project-from",
        help="Device the study ran on, as a catalog id: 'local' (this machine, after `leanml hw calibrate`) "
             "or e.g. dev_vm."),
    cost: str = typer.Option(
        "wall", "--cost",
        help="Seconds for the table, plots and Pareto front: wall, or cpu (CPU seconds of the study process: "
             "the work done, stable when other jobs share the machine; wall totals are still shown)."),
) -> None:
    """Run a data selection study: every (method, budget, seed) cell selects, trains, evaluates;
    selection and training costs are metered separately. Re-running skips finished cells, so
    re-running a finished study with --project-to only adds the projections."""
    run_and_report(suite, _split(methods, str, "--methods"), _split(budgets, float, "--budgets"),
                   _split(seeds, int, "--seeds"), _sizes(size), out, report,
                   project_to=_split(project_to, str, "--project-to"), project_from=project_from, cost=cost)
