"""`leanml demo`: the out-of-the-box tour, as a list of sections (each a function)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console
from rich.rule import Rule

from leanml.cli.app import app


def section_selection_study(console: Console) -> None:
    """Data selection: every method on digits, selection cost beside training cost."""
    from leanml.cli.study_cmd import run_and_report

    out = Path(tempfile.mkdtemp(prefix="leanml-demo-study-"))
    run_and_report("quick", out=out, console=console)


# (title, function). Other parts of leanml add their sections here.
SECTIONS: list[tuple[str, Callable[[Console], None]]] = [
    ("Data selection: what does choosing the data cost? (study --suite quick)", section_selection_study),
]


@app.command("demo")
def demo(only: str = typer.Option("", "--only", help="Run only sections whose title contains this text.")) -> None:
    """Run the demo sections end to end and print their tables."""
    console = Console()
    ran = 0
    for title, fn in SECTIONS:
        if only and only.lower() not in title.lower():
            continue
        console.print(Rule(title))
        fn(console)
        ran += 1
    if not ran:
        raise typer.BadParameter(f"--only {only!r} matches no section; sections: {[t for t, _ in SECTIONS]}")
