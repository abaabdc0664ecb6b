"""Projection of study cells onto catalog devices: per-stage ratios, host work kept, clear errors, CLI."""

import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from leanml.bench import ResultTable, plan_study, run_study
from leanml.bench.projection import STAGE_COLUMNS, ProjectionError, project_rows, stage_ratios
from leanml.bench.suites import get_suite

torch.set_num_threads(1)


def _row(method="less", **stages):
    st = {"train": 0.4, "infer": 0.2, "grads": 1.0, "other": 0.3, **stages}
    row = {"suite": "quick", "method": method, "budget": 0.1, "seed": 0, "accuracy": 0.5,
           "select_wall_s": sum(st.values()), "train_wall_s": 0.8}
    row.update({STAGE_COLUMNS[k]: v for k, v in st.items()})
    return row


def test_faster_device_shrinks_projected_stages_and_keeps_host_work():
    (p,), ratios = project_rows([_row()], "quick", "h200", from_device="dev_vm")
    assert all(ratios[k].ratio < 1 for k in ("train", "infer", "grads@256"))  # quick's LESS projects to 256
    assert p["select_other_s"] == 0.3  # host work unchanged
    assert p["select_train_s"] < 0.4 and p["select_infer_s"] < 0.2 and p["select_grads_s"] < 1.0
    assert p["select_s"] == pytest.approx(sum(p[f"select_{s}_s"] for s in ("train", "infer", "grads", "other")))
    assert p["train_s"] == pytest.approx(0.8 * ratios["train"].ratio)
    assert p["total_s"] == pytest.approx(p["select_s"] + p["train_s"]) and p["total_s"] < 2.7
    assert p["energy_est_j"] > 0


def test_same_device_has_ratio_one():
    (p,), ratios = project_rows([_row()], "quick", "dev_vm", from_device="dev_vm")
    assert all(r.ratio == pytest.approx(1.0) for r in ratios.values())
    assert p["select_s"] == pytest.approx(_row()["select_wall_s"]) and p["train_s"] == pytest.approx(0.8)


def test_unknown_devices_and_uncalibrated_local_are_clear(tmp_path, monkeypatch):
    wl = get_suite("quick").workload(get_suite("quick").sizes)
    with pytest.raises(ProjectionError, match="--project-to: device 'h9000' is not in the catalog"):
        stage_ratios(wl, "h9000", "dev_vm")
    with pytest.raises(ProjectionError, match="--project-from: device 'nope'"):
        stage_ratios(wl, "h200", "nope")
    monkeypatch.setenv("LEANML_CACHE", str(tmp_path))  # a machine that was never calibrated
    with pytest.raises(ProjectionError, match="leanml hw calibrate"):
        project_rows([_row()], "quick", "h200")
    from leanml.hw import get_device, local_device_path, write_device
    from leanml.hw.calibrate import with_id

    write_device(with_id(get_device("dev_vm"), "local"), local_device_path())  # now 'local' exists
    (p,), _ = project_rows([_row()], "quick", "h200")
    assert p["from_device"] == "local" and p["select_s"] > 0


def test_suite_without_workload_is_refused():
    with pytest.raises(ProjectionError, match="no workload"):
        project_rows([_row()], "instruct", "h200", from_device="dev_vm")


def test_old_results_without_stage_columns_load_resume_and_project(tmp_path):
    plan = plan_study("quick", methods=["random", "loss"], budgets=[0.1], seeds=[0], sizes={"epochs": 2},
                      out=tmp_path)
    rows = run_study(plan, log=lambda _m: None)
    assert all(r[STAGE_COLUMNS["train"]] is not None for r in rows)
    loss = next(r for r in rows if r["method"] == "loss")
    assert loss[STAGE_COLUMNS["train"]] > 0 and loss[STAGE_COLUMNS["infer"]] > 0
    assert sum(loss[c] for c in STAGE_COLUMNS.values()) == pytest.approx(loss["select_wall_s"])
    # an older file: the same rows without the stage columns
    t = pq.read_table(plan.results_path)
    old = t.drop_columns([c for c in STAGE_COLUMNS.values()])
    pq.write_table(old, plan.results_path)
    plan2 = plan_study("quick", methods=["random", "loss"], budgets=[0.1, 0.3], seeds=[0], sizes={"epochs": 2},
                       out=tmp_path)
    rows2 = run_study(plan2, log=lambda _m: None)  # resumes: only the 0.3 cells run
    assert len(rows2) == 4 and len(ResultTable(plan.results_path).done()) == 4
    proj, _ = project_rows(rows2, "quick", "h200", from_device="dev_vm", sizes=plan2.sizes)
    by = {(p["method"], p["budget"]): p for p in proj}
    assert by[("loss", 0.1)]["select_s"] is None and "predates" in by[("loss", 0.1)]["note"]
    assert by[("loss", 0.1)]["train_s"] is not None  # training is still projected
    assert by[("loss", 0.3)]["select_s"] is not None


def test_cli_project_to_adds_report_section_and_help(tmp_path):
    from leanml.cli.main import app

    r = CliRunner().invoke(app, ["study", "--help"], env={"COLUMNS": "200"})
    assert "--project-to" in r.output and "--project-from" in r.output
    args = ["study", "--suite", "quick", "--methods", "random", "--budgets", "0.1", "--seeds", "0",
            "--size", "epochs=1", "--out", str(tmp_path)]
    r = CliRunner().invoke(app, [*args, "--project-to", "h200,a100_80gb", "--project-from", "dev_vm"],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "projected onto h200" in r.output and "projected onto a100_80gb" in r.output
    text = (tmp_path / "report.md").read_text()
    assert "## Projected onto h200" in text and "ASSUMED" in text and "ESTIMATE" in text
    r = CliRunner().invoke(app, [*args, "--project-to", "h9000", "--project-from", "dev_vm"])
    assert r.exit_code != 0 and "h9000" in r.output
