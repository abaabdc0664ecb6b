"""`leanml serve replay` end to end on the digits family: simulated, and live over loopback HTTP."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from leanml.cli.replay_cmd import replay_command

CONFIG = """
[server]
profile_file = "digits.profile.json"

[deployments.digits]
prototype = "digits"
variants = ["mlp", "mlp_int8", "mlp_student"]
params = { epochs = 5 }
slo = { latency_ms = 200.0 }
profile = { batch_sizes = [1, 8, 32], reps = 5, val_n = 0 }
"""


def _write(d, trace_n=40):
    cfg_path = d / "digits.toml"
    cfg_path.write_text(CONFIG)
    trace = d / "trace.jsonl"  # the Mooncake format: the CLI recognizes it by its columns, no flags
    t = np.cumsum(np.random.default_rng(0).gamma(0.25, 0.04 / 0.25, size=trace_n))  # bursty, ~25 req/s
    trace.write_text("\n".join(json.dumps({"timestamp": round(x * 1000, 3), "input_length": 100, "output_length": 8})
                               for x in t) + "\n")
    return cfg_path, trace


@pytest.fixture()
def synthetic(tmp_path):
    """A deploy config and a profile file (profiles are data: written here, not measured)."""
    from leanml.serve.config import load_config
    from leanml.serve.control.profiles import fingerprint, save_profiles
    from leanml.serve.types import LatencyProfile, VariantProfile

    cfg_path, trace = _write(tmp_path)
    dc = load_config(cfg_path).deployments["digits"]
    profs = {}
    for n, acc, ms in (("mlp", 0.96, 2.0), ("mlp_int8", 0.95, 1.0), ("mlp_student", 0.90, 0.3)):
        lat = {1: ms, 8: 3 * ms, 32: 9 * ms}
        profs[n] = VariantProfile(n, acc, LatencyProfile(lat, {b: 1.5 * v for b, v in lat.items()}),
                                  extra={"fingerprint": fingerprint(dc.prototype, dc.params, n), "val": "digits/test"})
    save_profiles(tmp_path / "digits.profile.json", {"digits": profs})
    return tmp_path, cfg_path, trace


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """The same deployment with real variants, profiled on this machine."""
    from leanml.serve.builder import VariantBuilder
    from leanml.serve.config import load_config
    from leanml.serve.control.profiles import save_profiles

    d = tmp_path_factory.mktemp("replay_cli")
    cfg_path, trace = _write(d)
    dc = load_config(cfg_path).deployments["digits"]
    variants = VariantBuilder().build(dc, measure_missing=True)
    save_profiles(d / "digits.profile.json", {"digits": {n: v.profile for n, v in variants.items()}})
    return d, cfg_path, trace


def _app():
    app = typer.Typer()
    app.command("replay")(replay_command)
    app.command("noop")(lambda: None)
    return app


def _run(args):
    return CliRunner().invoke(_app(), ["replay", *args])


def test_replay_cli_simulates_every_policy(synthetic):
    d, cfg, trace = synthetic
    out = d / "sim"
    res = _run(["--trace", str(trace), "--config", str(cfg), "--mode", "sim", "--cores", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "trace format: mooncake" in " ".join(res.output.split())  # recognized by its columns, and said
    rows = pq.read_table(out / "digits_rows.parquet").to_pylist()
    assert len(rows) == 6 * 40 and {r["policy"] for r in rows} == {
        "static-accurate", "static-fast", "infaas", "clipper", "proteus", "adaptive"}
    report = (out / "digits_report.md").read_text()
    assert "goodput_rps" in report and (out / "digits_sim.png").stat().st_size > 1000
    res = _run(["--trace", str(trace), "--config", str(cfg), "--mode", "sim", "--policy", "nope"])
    assert res.exit_code != 0 and "unknown policy" in res.output


@pytest.mark.slow
def test_replay_cli_live_adaptive_answers_every_request(measured):
    d, cfg, trace = measured
    out = d / "live"
    res = _run(["--trace", str(trace), "--config", str(cfg), "--mode", "live", "--policy", "adaptive",
                "--policy", "static-accurate", "--cores", "2", "--seconds", "5", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = pq.read_table(out / "digits_rows.parquet").to_pylist()
    for pol in ("adaptive", "static-accurate"):
        mine = [r for r in rows if r["policy"] == pol]
        assert sorted(r["id"] for r in mine) == list(range(40))  # every trace request sent once
        assert all(r["status"] in (200, 429, 503) for r in mine)  # and answered (no transport errors)
        ok = [r for r in mine if r["status"] == 200]
        assert ok and np.nanmean([r["correct"] for r in ok]) > 0.5  # real predictions on real digits
    assert json.loads(res.output.strip().splitlines()[-1])["report"].endswith("digits_report.md")
