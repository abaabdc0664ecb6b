"""The `leanml` command line (Typer + Rich)."""
