"""The `leanml` command. Each package contributes a Typer sub-app; this file only wires them."""

from __future__ import annotations

import importlib

from leanml.cli.app import app

# (module, attribute, name, help). A sub-app whose extra is not installed is skipped with its reason.
_SUBAPPS = [
    ("leanml.cli.data_cmd", "app", "data", "Datasets: list and check what is available under the data root."),
    ("leanml.cli.grads_cmd", "app", "grads", "Per-example gradient features."),
    ("leanml.cli.store_cmd", "app", "store", "The gradient store: info, verify, search, explain."),
    ("leanml.cli.hw_cmd", "app", "hw", "Hardware model: calibrate, predict, catalog."),
    ("leanml.cli.serve_cmd", "app", "serve", "Adaptive serving: profile, start, replay."),
    ("leanml.cli.workload_cmd", "app", "workload", "Serving workloads and traces."),
]

for module, attr, name, help_text in _SUBAPPS:
    try:
        sub = getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("leanml.cli"):
            continue  # that command group is not built yet
        raise
    app.add_typer(sub, name=name, help=help_text)

# Modules that register top-level commands (`leanml meter`, `leanml demo`, `leanml study`) on import.
for module in ("leanml.cli.meter_cmd", "leanml.cli.demo_cmd", "leanml.cli.study_cmd"):
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if not (e.name and e.name.startswith("leanml.cli")):
            raise


def main() -> None:
    app()


if __name__ == "__main__":
    main()
