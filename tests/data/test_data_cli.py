"""`leanml data list` and `leanml data check` on the real data root and on a broken one."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from leanml.cli.data_cmd import app
from leanml.data import list_specs

runner = CliRunner()


def test_list_fits_80_columns_and_shows_everything(real_root: Path) -> None:
    r = runner.invoke(app, ["list"], env={"COLUMNS": "80", "LEANML_DATA": str(real_root)})
    assert r.exit_code == 0, r.output
    assert max(len(line) for line in r.output.splitlines()) <= 80
    for spec in list_specs():
        assert spec.name in r.output
    assert "missing" not in r.output
    for text in ("60,614", "55,185", "CC BY-NC 4.0", "88.4 MiB", "bundled"):
        assert text in r.output


def test_list_wide_shows_sources(real_root: Path) -> None:
    r = runner.invoke(app, ["list", "--wide"], env={"COLUMNS": "250", "LEANML_DATA": str(real_root)})
    assert r.exit_code == 0 and "github.com/Azure/AzurePublicDataset" in r.output


def test_list_marks_missing_datasets(tmp_path: Path) -> None:
    r = runner.invoke(app, ["list"], env={"COLUMNS": "80", "LEANML_DATA": str(tmp_path)})
    assert r.exit_code == 0 and "missing" in r.output


def test_check_passes_on_real_data_and_fails_on_a_broken_copy(real_root: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["check", "mmlu", "bbh"], env={"COLUMNS": "120", "LEANML_DATA": str(real_root)})
    assert r.exit_code == 0, r.output
    assert r.output.count("ok") >= 3
    bad = tmp_path / "instruct" / "mmlu" / "dev"
    bad.mkdir(parents=True)
    (bad / "anatomy_dev.csv").write_text("question\n")
    r = runner.invoke(app, ["check", "mmlu"], env={"COLUMNS": "200", "LEANML_DATA": str(tmp_path)})
    assert r.exit_code == 1 and "found 1 subject files, expected 57" in r.output


@pytest.mark.parametrize("args", [["list", "--help"], ["check", "--help"]])
def test_help(args: list[str]) -> None:
    assert runner.invoke(app, args).exit_code == 0
