"""The per-package coverage table of tests/conftest.py: grouping and totals on a known report."""

from __future__ import annotations

import importlib.util
from pathlib import Path

# tests/conftest.py by path: the name "conftest" is shared with the conftests of tests/serve and tests/data.
_spec = importlib.util.spec_from_file_location("leanml_tests_cov_table", Path(__file__).parent / "conftest.py")
cov_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cov_table)
ROOT = cov_table.ROOT


def _file(lines: int, covered: int, branches: int, covered_b: int) -> dict:
    return {"summary": {"num_statements": lines, "covered_lines": covered, "num_branches": branches,
                        "covered_branches": covered_b}}


def test_files_group_by_package_and_serve_by_plane():
    src = ROOT / "src" / "leanml"
    report = {"files": {
        str(src / "io.py"): _file(10, 10, 2, 2),
        str(src / "store" / "store.py"): _file(100, 80, 40, 20),
        str(src / "store" / "codecs.py"): _file(50, 50, 10, 10),
        str(src / "serve" / "config.py"): _file(20, 10, 0, 0),
        str(src / "serve" / "control" / "planner.py"): _file(30, 15, 10, 5),
    }}
    got = cov_table.aggregate(report)
    assert got == {"leanml": [10, 10, 2, 2], "leanml.store": [150, 130, 50, 30],
                   "leanml.serve": [20, 10, 0, 0], "leanml.serve.control": [30, 15, 10, 5]}
    # coverage.py's total: (covered lines + covered branches) / (lines + branches)
    assert cov_table.combined(got["leanml.store"]) == 100.0 * 160 / 200
    assert cov_table.percent(0, 0) == 100.0  # a package with no branches is not "0% branch-covered"


def test_floors_are_read_from_pyproject():
    fl = cov_table.floors()
    assert "total" in fl and all(0 <= v <= 100 for v in fl.values())
