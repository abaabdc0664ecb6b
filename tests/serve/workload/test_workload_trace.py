"""Trace loading (real Azure file, CSV/JSONL), synthetic generators with known CV, rescaling."""

from __future__ import annotations

import json

import numpy as np
import pytest

from leanml.data.root import data_root
from leanml.serve.workload.describe import cv, describe, plot, rate_series
from leanml.serve.workload.traces import (
    FieldMap,
    Trace,
    TraceError,
    compress,
    diurnal,
    gamma_bursty,
    load_trace,
    poisson,
    request_properties,
    scale_to_rate,
)

AZURE = data_root() / "traces" / "azure_llm_2023_code.csv"
# The published file holds 8,819 data rows after its header (the issue text says 8,818).
AZURE_ROWS = 8819


def _check_azure(tr: Trace) -> None:
    assert len(tr) == AZURE_ROWS
    assert tr.arrival_s[0] == 0.0
    assert np.all(np.diff(tr.arrival_s) >= 0)
    assert tr.context_tokens.dtype == np.int64 and tr.generated_tokens.dtype == np.int64
    assert 3000 < tr.duration_s < 3700  # one hour of traffic
    assert tr.context_tokens.min() >= 0 and tr.generated_tokens.max() > 100


@pytest.mark.skipif(not AZURE.exists(), reason="Azure trace not under the data root ($LEANML_DATA)")
def test_azure_trace_through_the_registry():
    from leanml.data.errors import UnknownDatasetError
    from leanml.data.registry import get_spec

    try:
        get_spec("azure_llm_code")
    except UnknownDatasetError:
        pytest.skip("azure_llm_code loader not registered in leanml.data yet")
    _check_azure(load_trace("azure_llm_code"))


@pytest.mark.skipif(not AZURE.exists(), reason="Azure trace not under the data root ($LEANML_DATA)")
def test_azure_trace_as_plain_csv_and_it_is_bursty():
    tr = load_trace(AZURE)
    _check_azure(tr)
    d = describe(tr)
    assert d["cv_interarrival"] > 3  # far burstier than Poisson (CV 1)
    assert d["dispersion_index_1s"] > 3


def test_csv_and_jsonl_with_configurable_columns(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("ts_ms,prompt,out\n0,10,3\n250,20,4\n1000,30,5\n")
    tr = load_trace(csv, timestamp_col="ts_ms", timestamp_unit="ms", context_col="prompt", generated_col="out")
    np.testing.assert_allclose(tr.arrival_s, [0, 0.25, 1.0])
    assert tr.context_tokens.tolist() == [10, 20, 30]
    js = tmp_path / "t.jsonl"
    js.write_text("\n".join(json.dumps({"t": f"2024-01-01 00:00:0{i}.5", "n": i}) for i in range(3)))
    tr = load_trace(js, timestamp_col="t", context_col="n", generated_col=None)
    np.testing.assert_allclose(tr.arrival_s, [0, 1, 2])
    assert tr.generated_tokens is None and tr.context_tokens.tolist() == [0, 1, 2]


def test_bad_inputs_name_the_problem(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(TraceError, match="match no known trace format.*--timestamp-col"):
        load_trace(csv)
    with pytest.raises(TraceError, match="needs column.*'TIMESTAMP'"):
        load_trace(csv, format="azure_llm")
    csv.write_text("TIMESTAMP\n2\n1\n")
    with pytest.raises(TraceError, match="not sorted"):
        load_trace(csv, timestamp_col="TIMESTAMP")
    csv.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n1,2.5,1\n2,3,1\n")
    with pytest.raises(TraceError, match="ContextTokens"):
        load_trace(csv)
    with pytest.raises(TraceError, match="does not exist"):
        load_trace(tmp_path / "nope.csv")
    with pytest.raises(TraceError, match="cv must be a positive"):
        gamma_bursty(1.0, 0.0, n=10)


@pytest.mark.parametrize("target_cv", [0.5, 1.0, 2.0, 4.0])
def test_gamma_generator_recovers_its_cv(target_cv):
    tr = gamma_bursty(rate=40.0, cv=target_cv, n=40_000, seed=3)
    d = describe(tr)
    assert d["cv_interarrival"] == pytest.approx(target_cv, rel=0.08)
    assert d["mean_rate_rps"] == pytest.approx(40.0, rel=0.08)


def test_poisson_counts_have_unit_dispersion_and_bursty_more():
    d = describe(poisson(50.0, duration_s=400, seed=1))
    assert d["cv_interarrival"] == pytest.approx(1.0, abs=0.05)
    assert d["dispersion_index_1s"] == pytest.approx(1.0, abs=0.25)  # Poisson counts: var = mean
    assert describe(gamma_bursty(50.0, 3.0, duration_s=400, seed=1))["dispersion_index_1s"] > 4


def test_diurnal_rate_follows_the_sine():
    tr = diurnal(20.0, period_s=100, amplitude=0.8, duration_s=1000, seed=0)
    t, counts = rate_series(tr, 25.0)
    phase = (t[:-1] % 100) // 25  # quarter of the period: first quarter is the peak side
    assert counts[:-1][phase == 0].mean() > 1.5 * counts[:-1][phase == 2].mean()


def test_rescaling_keeps_the_burst_shape():
    tr = gamma_bursty(10.0, 3.0, n=5000, seed=0)
    fast = scale_to_rate(tr, 80.0)
    assert fast.mean_rate == pytest.approx(80.0)
    assert cv(np.diff(fast.arrival_s)) == pytest.approx(cv(np.diff(tr.arrival_s)))
    np.testing.assert_allclose(compress(tr, 2.0).arrival_s * 2.0, tr.arrival_s)
    assert len(tr.window(10.0, 50.0)) == int(np.sum((tr.arrival_s >= 10) & (tr.arrival_s < 60)))
    busy = tr.busiest(20.0)
    counts = [np.sum((tr.arrival_s >= s) & (tr.arrival_s < s + 20.0)) for s in tr.arrival_s]
    assert len(busy) == max(counts) and busy.arrival_s[0] == 0.0


def test_field_mapping_and_plots(tmp_path):
    tr = Trace([0.0, 0.5, 0.7], context_tokens=[100, 5000, 7], generated_tokens=[0, 20, 300], name="x")
    props = request_properties(tr, FieldMap(input_size_cap=1024, max_new_tokens_cap=64))
    assert [p["input_size"] for p in props] == [100, 1024, 7]
    assert [p["max_new_tokens"] for p in props] == [1, 20, 64]
    paths = plot(gamma_bursty(5.0, 2.0, n=300, seed=0), tmp_path)
    assert len(paths) == 2 and all(p.stat().st_size > 1000 for p in paths)


def test_cli_describe_json(tmp_path):
    from typer.testing import CliRunner

    from leanml.cli.workload_cmd import app

    csv = tmp_path / "t.csv"
    csv.write_text("TIMESTAMP\n" + "\n".join(str(x) for x in np.cumsum(np.full(50, 0.1))) + "\n")
    res = CliRunner().invoke(app, ["describe", str(csv), "--timestamp-col", "TIMESTAMP", "--json",
                                   "--plots", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["requests"] == 50 and out["cv_interarrival"] == pytest.approx(0.0, abs=1e-6)
    res = CliRunner().invoke(app, ["describe", str(tmp_path / "missing.csv")])
    assert res.exit_code == 2 and "does not exist" in " ".join(res.output.split())


def test_max_new_tokens_maps_generated_tokens_into_one_to_cap():
    from leanml.serve.workload.traces import Trace, max_new_tokens

    t = Trace(np.array([0.0, 1.0, 2.0]), generated_tokens=np.array([0, 5, 100]))
    assert max_new_tokens(t, 32).tolist() == [1, 5, 32]
    assert max_new_tokens(Trace(np.array([0.0, 1.0])), 8).tolist() == [8, 8]  # no column: the default, capped
