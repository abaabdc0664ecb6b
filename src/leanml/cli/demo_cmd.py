"""`leanml demo`: the out-of-the-box tour, as a list of sections (each a function)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console
from rich.rule import Rule

from leanml.cli.app import app


def section_selection_study(console: Console, out: Path) -> None:
    """Data selection: every method on digits, selection cost beside training cost, in two scenarios:
    in-distribution (target = the pool's own distribution) and targeted (pool from four sources, target
    and test from one, LESS's intended use)."""
    from leanml.cli.study_cmd import run_and_report

    console.print("Scenario 1, in-distribution: pool, target and test all plain digits.")
    run_and_report("quick", out=out / "study", console=console)
    console.print("Scenario 2, targeted: pool from four digit sources, target and test from one (inverted).")
    run_and_report("quick-targeted", out=out / "study-targeted", console=console)


def section_roofline(console: Console, out: Path) -> None:
    """This machine's calibrated roofline and where the demo's workloads sit on it."""
    from leanml.hw.demo import roofline_section

    roofline_section(out, console)


def section_serving_replay(console: Console, out: Path) -> None:
    """Serving: the Azure code trace through five policies in the simulator, with the shipped CIFAR profiles."""
    from leanml.serve.demo import replay_section
    from leanml.serve.demo_llm import llm_replay_section

    replay_section(out, console)
    llm_replay_section(console)


def section_store_query(console: Console, out: Path) -> None:
    """The gradient store: one cross-algebra query (SQL filter, LESS scores, dedup, join) and its plan."""
    from leanml.store.query.demo import query_section

    query_section(out / "store_query", console)


# (title, function). Each section writes its files under its own part of --out.
SECTIONS: list[tuple[str, Callable[[Console, Path], None]]] = [
    ("Data selection: what does choosing the data cost? (study --suite quick, quick-targeted)",
     section_selection_study),
    ("Hardware: this machine's calibrated roofline (hw calibrate)", section_roofline),
    ("Serving: a bursty trace through five routing policies (serve replay, simulated)", section_serving_replay),
    ("Gradient store: a cross-algebra query and its plan (store query --explain)", section_store_query),
]


@app.command("demo")
def demo(
    only: str = typer.Option("", "--only", help="Run only sections whose title contains this text."),
    out: Path = typer.Option(Path("demo-output"), "--out", help="Folder for the demo's tables, reports and plots."),
) -> None:
    """Run the demo sections end to end and print their tables."""
    console = Console()
    out.mkdir(parents=True, exist_ok=True)
    ran = 0
    for title, fn in SECTIONS:
        if only and only.lower() not in title.lower():
            continue
        console.print(Rule(title))
        fn(console, out)
        ran += 1
    if not ran:
        raise typer.BadParameter(f"--only {only!r} matches no section; sections: {[t for t, _ in SECTIONS]}")
    console.print(f"\nReports and plots: {out.resolve()}")
