"""The study grid: result columns, cost accounting, resume, report, CLI."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from leanml.bench import ResultTable, pareto_front, plan_study, run_study, write_report
from leanml.bench.results import ResultsError

torch.set_num_threads(1)
COLUMNS = ("suite", "method", "budget", "seed", "metric", "accuracy", "select_wall_s", "train_wall_s",
           "total_wall_s", "select_cpu_s", "train_cpu_s", "total_cpu_s", "total_energy_cpu_j", "total_flops")


def _quiet(_msg):
    pass


def test_grid_rows_costs_resume_and_report(tmp_path):
    plan = plan_study("quick", methods=["random", "craig", "rho-loss", "dlis", "full"], budgets=[0.1], seeds=[0],
                      sizes={"epochs": 3}, out=tmp_path)
    rows = run_study(plan, log=_quiet)
    assert {(r["method"], r["budget"]) for r in rows} == {("random", 0.1), ("craig", 0.1), ("rho-loss", 0.1),
                                                          ("dlis", 0.1), ("full", 1.0)}
    cols = pq.read_table(plan.results_path).column_names
    assert all(c in cols for c in COLUMNS)
    for r in rows:
        assert r["total_wall_s"] == pytest.approx(r["select_wall_s"] + r["train_wall_s"])
        assert 0 <= r["accuracy"] <= 1 and r["metric"] == "accuracy"
    by = {r["method"]: r for r in rows}
    assert by["craig"]["select_wall_s"] > by["random"]["select_wall_s"]  # a warm-up costs something
    assert by["craig"]["weighted"] and not by["random"]["weighted"]
    assert by["rho-loss"]["online"] and by["rho-loss"]["select_wall_s"] > 0  # IL model + per-batch hook
    assert by["full"]["n_selected"] == by["full"]["n_pool"]
    # equal backward passes: an online method at budget b trains on b of the full run's examples, up to
    # rounding to whole steps of 32 (3 epochs x 10% is 0.3 of an epoch: whole-epoch rounding would have
    # given DLIS 3x its budget; a short last presample per epoch would have given RHO-LOSS ~10% less)
    for online in ("rho-loss", "dlis"):
        assert by[online]["examples_trained"] == pytest.approx(0.1 * by["full"]["examples_trained"], abs=16)

    n = len(rows)
    again = run_study(plan, log=_quiet)  # everything finished: nothing re-runs
    assert len(again) == n and [r["finished_at"] for r in again] == [r["finished_at"] for r in rows]
    plan2 = plan_study("quick", methods=["random", "full"], budgets=[0.1, 0.3], seeds=[0], sizes={"epochs": 3},
                       out=tmp_path)
    rows2 = run_study(plan2, log=_quiet)  # only the new cell (random @ 0.3) runs
    assert len(rows2) == n + 1

    report = write_report(rows2, tmp_path, title="quick-test")
    text = report.read_text()
    assert "| craig | 0.1 |" in text and "Pareto" in text
    for png in ("accuracy_vs_budget.png", "accuracy_vs_total_cost.png", "cost_by_stage.png"):
        assert (tmp_path / png).stat().st_size > 1000
    for r in rows2:
        assert r["total_cpu_s"] == pytest.approx(r["select_cpu_s"] + r["train_cpu_s"])
    cpu = write_report(rows2, tmp_path / "cpu", title="quick-test", cost="cpu").read_text()
    assert "select CPU s" in cpu and "total wall s" in cpu and "CPU seconds of the study process" in cpu
    full = next(r for r in rows2 if r["method"] == "full")
    # the row's own CPU seconds (selecting "full" is near 0 but may register a clock tick, 0.01 s)
    assert (f"| full | 1 | {full['accuracy']:.4f} ± 0.0000 | 1 | {full['select_cpu_s']:.2f} | "
            f"{full['train_cpu_s']:.2f} | {full['total_cpu_s']:.2f} |") in cpu
    with pytest.raises(ValueError, match="cost must be one of"):
        write_report(rows2, tmp_path, title="x", cost="joules")


def test_plan_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        plan_study("quick", methods=["nope"], out=tmp_path)
    with pytest.raises(ValueError, match="budget"):
        plan_study("quick", budgets=[1.5], out=tmp_path)
    with pytest.raises(ValueError, match="no size parameter 'bogus'"):
        plan_study("quick", sizes={"bogus": 1}, out=tmp_path)
    with pytest.raises(ValueError, match="unknown suite"):
        plan_study("nope", out=tmp_path)


def test_result_table_append_is_atomic_and_checks_files(tmp_path):
    t = ResultTable(tmp_path / "r.parquet")
    row = {"suite": "s", "method": "m", "budget": 0.1, "seed": 0, "metric": "accuracy", "accuracy": 0.5,
           "select_wall_s": 1.0, "train_wall_s": 2.0, "total_wall_s": 3.0}
    t.append([row])
    t.append([{**row, "seed": 1, "extra": "x"}])
    assert len(t.rows()) == 2 and t.done() == {("s", "m", 0.1, 0), ("s", "m", 0.1, 1)}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind
    with pytest.raises(ResultsError, match="lacks"):
        t.append([{"suite": "s"}])
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(ResultsError, match="not readable Parquet"):
        ResultTable(tmp_path / "bad.parquet").rows()


def test_pareto_front():
    pts = [(1.0, 0.5), (2.0, 0.4), (2.0, 0.7), (3.0, 0.7), (4.0, 0.9), (0.5, 0.1)]
    assert pareto_front(pts) == [5, 0, 2, 4]
    rng = np.random.default_rng(0)
    pts = [tuple(x) for x in rng.random((50, 2))]
    front = pareto_front(pts)
    for i in front:  # nothing dominates a front point
        assert not any(c <= pts[i][0] and a >= pts[i][1] and (c, a) != pts[i] for c, a in pts)


def test_cli_study_narrows_the_grid(tmp_path):
    from leanml.cli.main import app  # wires every command, as the `leanml` entry point does

    res = CliRunner().invoke(app, ["study", "--suite", "quick", "--methods", "random,full", "--budgets", "0.05",
                                   "--seeds", "0", "--size", "epochs=2", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = ResultTable(tmp_path / "results.parquet").rows()
    assert sorted((r["method"], r["budget"]) for r in rows) == [("full", 1.0), ("random", 0.05)]
    assert "random" in res.output and (tmp_path / "report.md").exists()
    bad = CliRunner().invoke(app, ["study", "--suite", "quick", "--budgets", "x", "--out", str(tmp_path)])
    assert bad.exit_code != 0 and "--budgets" in bad.output
