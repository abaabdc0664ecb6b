"""Replay at the trace's real time scale: thinning keeps the minute-scale rate shape; drift windows."""

from __future__ import annotations

import numpy as np
import pytest

from leanml.serve.workload.timescale import bin_rates, drift_window, fit_rate, real_timescale
from leanml.serve.workload.traces import Trace, TraceError, poisson


def step_trace(seed: int = 0) -> Trace:
    """Poisson at 2 req/s for 30 min, 8 req/s for minutes 30-40, 2 req/s for 20 more minutes (a known drift)."""
    parts, t0 = [], 0.0
    for rate, dur in ((2.0, 1800.0), (8.0, 600.0), (2.0, 1200.0)):
        p = poisson(rate, duration_s=dur, seed=seed + len(parts)).arrival_s
        parts.append(p[p < dur] + t0)
        t0 += dur
    a = np.concatenate(parts)
    return Trace(a - a[0], context_tokens=np.arange(len(a)) % 100 + 1, name="step")


def test_drift_window_contains_the_rate_step():
    tr = step_trace()
    s = drift_window(tr, window_s=1200, bin_s=120)
    assert s < 1800 + 600 and s + 1200 > 1800  # the window overlaps the burst...
    ww = tr.window(s, 1200)
    rates = bin_rates(ww, 120, 1200)
    assert rates.max() / rates.min() > 2.5  # ...and holds both the 2 and 8 req/s regimes


def test_thinning_keeps_the_time_axis_and_the_rate_shape():
    tr = step_trace()
    out, rep = real_timescale(tr, target_rps=0.5, window_s=1200, bin_s=120, seed=1)
    assert rep.method == "thinning"
    src = len(tr.window(rep.window_start_s, 1200)) / 1200
    assert rep.factor == pytest.approx(0.5 / src)
    assert out.arrival_s.max() <= 1200 and out.arrival_s.max() > 1100  # still ~20 minutes of wall time
    assert rep.rate_rps == pytest.approx(0.5, rel=0.1)
    # per-2-minute rate profile of the thinned trace = p x the original's (correlation and level)
    a = bin_rates(tr.window(rep.window_start_s, 1200), 120, 1200)
    b = bin_rates(out, 120, 1200)
    assert np.corrcoef(a, b)[0, 1] > 0.9
    assert b.sum() / a.sum() == pytest.approx(rep.factor, rel=0.1)
    assert rep.rate_ratio > 2.5 and "kept with probability" in rep.text()


def test_compression_only_when_the_target_exceeds_the_trace():
    tr = step_trace()
    start = 0.0
    out, rep = real_timescale(tr, target_rps=20.0, window_s=1200, start_s=start)
    assert rep.method == "time-compression" and rep.factor == pytest.approx(20.0 / rep.source_rate_rps)
    assert len(out) == len(tr.window(0, 1200)) and rep.rate_rps == pytest.approx(20.0, rel=1e-6)
    assert "compressed" in rep.text()


def test_bad_inputs_name_the_parameter():
    tr = step_trace()
    with pytest.raises(TraceError, match="window_s"):
        drift_window(tr, window_s=60)
    with pytest.raises(TraceError, match="target_rps"):
        fit_rate(tr, 0.0)
    with pytest.raises(TraceError, match="shorter than window_s"):
        drift_window(tr.window(0, 700), window_s=1200)
    with pytest.raises(TraceError, match="start_s"):
        real_timescale(tr, 1.0, start_s=3500)


def test_azure_code_trace_window_on_real_data():
    from leanml.serve.workload.traces import load_trace

    try:
        tr = load_trace("azure_llm_code")
    except Exception as e:  # data root missing on this machine
        pytest.skip(f"azure_llm_code unavailable: {e}")
    out, rep = real_timescale(tr, target_rps=0.4, window_s=1200, bin_s=120)
    assert rep.method == "thinning" and 0 < rep.factor < 0.5
    assert rep.window_s == 1200 and out.arrival_s.max() > 1000  # minutes, not seconds
    assert rep.rate_ratio >= max(_ratio(tr, s) for s in np.arange(0, tr.duration_s - 1200, 60)) - 1e-9
    assert out.context_tokens is not None and len(out.context_tokens) == len(out)


def _ratio(tr: Trace, s: float) -> float:
    r = bin_rates(tr.window(s, 1200), 120, 1200)
    return float(r.max() / r.min()) if r.min() > 0 else 0.0
