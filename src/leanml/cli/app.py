"""The root Typer app; command modules import it from here (never from `main`)."""

import typer

app = typer.Typer(
    name="leanml",
    help="Resource-efficient machine learning, measured end to end.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
