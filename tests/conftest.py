"""Coverage per package, printed at the end of every run under pytest-cov, and the floors of `make test`.

pytest-cov (``--cov=leanml --cov-branch`` in pyproject's addopts) measures; this hook groups its
per-file figures by package (``leanml.serve`` by plane) into a line and branch table. With
``--coverage-floors`` (as `make test` runs the whole suite) the run fails when the total or any
package falls below its floor in ``[tool.leanml.coverage]`` of pyproject.toml (docs/architecture.md).
A targeted run (``pytest tests/store``) prints the table but enforces nothing: it covers only a part.
"""

from __future__ import annotations

import json
import os
import tempfile
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_STATS: dict[str, list[int]] = {}  # package -> [statements, covered, branches, covered branches]
_FAILURES: list[str] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--coverage-floors", action="store_true", default=False,
                     help="fail when total or per-package coverage is below [tool.leanml.coverage] (make test)")


def package_of(path: str) -> str:
    """``src/leanml/serve/control/planner.py`` -> ``leanml.serve.control``; ``src/leanml/io.py`` -> ``leanml``."""
    parts = Path(path).resolve().relative_to(ROOT / "src").parts
    if len(parts) > 2 and parts[1] == "serve" and len(parts) > 3:
        return ".".join(parts[:3])
    return ".".join(parts[:2]) if len(parts) > 2 else parts[0]


def aggregate(report: dict) -> dict[str, list[int]]:
    """Per-package sums from a coverage JSON report's ``files`` summaries."""
    out: dict[str, list[int]] = {}
    for path, f in report["files"].items():
        s = f["summary"]
        row = out.setdefault(package_of(path), [0, 0, 0, 0])
        for i, k in enumerate(("num_statements", "covered_lines", "num_branches", "covered_branches")):
            row[i] += int(s.get(k, 0))
    return out


def percent(covered: int, total: int) -> float:
    return 100.0 * covered / total if total else 100.0


def combined(row: list[int]) -> float:
    """Coverage.py's total: covered lines and branches over all lines and branches."""
    return percent(row[1] + row[3], row[0] + row[2])


def floors() -> dict[str, float]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return {k: float(v) for k, v in tomllib.load(f).get("tool", {}).get("leanml", {}).get("coverage", {}).items()}


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtestloop(session: pytest.Session):
    """Outside pytest-cov's own wrapper: by the time this resumes, its data is combined."""
    result = yield
    plugin = session.config.pluginmanager.getplugin("_cov")
    ctl = plugin.cov_controller if plugin is not None else None  # None when run with --no-cov
    if ctl is None or ctl.cov is None or session.config.option.collectonly:
        return result
    fd, tmp = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        ctl.cov.json_report(outfile=tmp)
        _STATS.update(aggregate(json.loads(Path(tmp).read_text())))
    except Exception as e:  # noqa: BLE001  (no data: nothing of leanml ran)
        _FAILURES.append(f"coverage table unavailable: {e}")
        return result
    finally:
        Path(tmp).unlink(missing_ok=True)
    if session.config.getoption("--coverage-floors"):
        total = [sum(r[i] for r in _STATS.values()) for i in range(4)]
        for pkg, floor in floors().items():
            got = combined(total) if pkg == "total" else combined(_STATS.get(pkg, [0, 0, 0, 0]))
            if got + 1e-9 < floor:
                _FAILURES.append(f"coverage of {pkg} is {got:.1f}%, below its floor {floor:g}% "
                                 "([tool.leanml.coverage] in pyproject.toml)")
        if _FAILURES:
            session.testsfailed += 1
    return result


def pytest_terminal_summary(terminalreporter) -> None:
    if not _STATS and not _FAILURES:
        return
    tr = terminalreporter
    tr.write_sep("=", "coverage by package (lines, branches; total = both, as coverage.py counts)")
    fl = floors()
    tr.write_line(f"{'package':<24} {'lines':>13} {'line %':>7} {'branches':>13} {'branch %':>8} "
                  f"{'total %':>7} {'floor':>6}")
    for pkg in sorted(_STATS):
        s, c, b, cb = _STATS[pkg]
        tr.write_line(f"{pkg:<24} {f'{c}/{s}':>13} {percent(c, s):>6.1f}% {f'{cb}/{b}':>13} "
                      f"{percent(cb, b):>7.1f}% {combined(_STATS[pkg]):>6.1f}% "
                      f"{(str(fl[pkg]) + '%') if pkg in fl else '':>6}")
    t = [sum(r[i] for r in _STATS.values()) for i in range(4)]
    if _STATS:
        tr.write_line(f"{'TOTAL':<24} {f'{t[1]}/{t[0]}':>13} {percent(t[1], t[0]):>6.1f}% {f'{t[3]}/{t[2]}':>13} "
                      f"{percent(t[3], t[2]):>7.1f}% {combined(t):>6.1f}% "
                      f"{(str(fl['total']) + '%') if 'total' in fl else '':>6}")
    for msg in _FAILURES:
        tr.write_line(f"FAIL {msg}", red=True, bold=True)
