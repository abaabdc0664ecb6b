"""The simulator against queueing theory, its runtime semantics, and the planned policies inside it."""

from __future__ import annotations

import numpy as np
import pytest

from leanml.serve.config import Batching
from leanml.serve.policy import Policy
from leanml.serve.sim.replay_study import POLICIES, simulate, summarize
from leanml.serve.sim.simulator import Simulator
from leanml.serve.types import SLO, LatencyProfile, VariantProfile
from leanml.serve.workload.traces import gamma_bursty, poisson

BATCHES = (1, 2, 4, 8, 16, 32)


def prof(name, acc, ms, per_item=0.3, spread=1.5):
    p50 = {b: ms * ((1 - per_item) + per_item * b) for b in BATCHES}
    return VariantProfile(name, acc, LatencyProfile(p50, {b: spread * v for b, v in p50.items()}))


class Fixed(Policy):
    name = "fixed"

    def __init__(self, v):
        self.v = v

    def route(self, request, state):
        return self.v


def test_md1_waiting_time_matches_theory():
    # one server, batch 1, deterministic 10 ms service, Poisson at rho = 0.5: E[Wq] = rho / (2 mu (1 - rho)) = 5 ms
    p = VariantProfile("d", 0.9, LatencyProfile({1: 10.0}, {1: 10.0}))
    sim = Simulator({"d": p}, Fixed("d"), cores=1, batching=Batching(1, 0.0, 10**6, 1), seed=0)
    rows = sim.run(poisson(50.0, n=20000, seed=4).arrival_s, slo=SLO())
    q = np.array([r["queue_ms"] for r in rows])
    assert len(rows) == 20000 and all(r["status"] == 200 for r in rows)
    assert q.mean() == pytest.approx(5.0, rel=0.1)
    assert np.array([r["latency_ms"] for r in rows]).min() == pytest.approx(10.0)


def test_batching_forms_batches_under_load_and_respects_limits():
    p = prof("v", 0.9, 5.0)
    sim = Simulator({"v": p}, Fixed("v"), cores=2, batching=Batching(8, 2.0, 10**6, 2), seed=0)
    rows = sim.run(poisson(800.0, n=4000, seed=1).arrival_s, slo=SLO())
    sizes = np.array([r["batch_size"] for r in rows])
    assert sizes.max() == 8 and sizes.mean() > 2  # batching happens, never above max_batch
    # at low load the fill window makes the first request wait about max_wait for a partner
    sim = Simulator({"v": p}, Fixed("v"), cores=2, batching=Batching(8, 2.0, 10**6, 2), seed=0)
    rows = sim.run(np.array([0.0, 1.0]), slo=SLO())
    assert rows[0]["queue_ms"] == pytest.approx(2.0) and rows[0]["batch_size"] == 1


def test_expired_requests_are_dropped_and_full_queues_refuse():
    p = prof("slow", 0.9, 50.0, per_item=1.0, spread=1.0)
    sim = Simulator({"slow": p}, Fixed("slow"), cores=1, batching=Batching(1, 0.0, 5, 1), seed=0)
    rows = sim.run(np.zeros(20), slo=SLO(latency_ms=120.0))
    out = [r["outcome"] for r in rows]
    assert out.count("refused_overload") == 14  # 1 running + 5 queued fit, the rest get 429 at once
    # answered at 50 and 100 ms; the 3rd starts at 100 ms (before its 120 ms deadline, so the runtime runs
    # it) and ends late at 150 ms; the rest are dropped as expired once their deadline has passed
    assert out.count("ok") == 3 and out.count("expired") == 3
    assert sum(r["met_slo"] for r in rows) == 2


@pytest.fixture(scope="module")
def ladder():
    return {"big": prof("big", 0.88, 8.0), "mid": prof("mid", 0.86, 2.5), "small": prof("small", 0.84, 0.8),
            "tiny": prof("tiny", 0.80, 0.3, per_item=0.2)}


def test_every_policy_runs_and_planned_ones_reconfigure(ladder):
    tr = gamma_bursty(150.0, 3.0, n=3000, seed=0)
    res = {}
    for name in POLICIES:
        rows, reconf, pol = simulate(name, ladder, tr.arrival_s, cores=2, latency_ms=80.0, accuracy_target=0.87)
        assert len(rows) == len(tr) and [r["id"] for r in rows] == list(range(len(tr)))
        res[name] = summarize(rows, tr.duration_s, ladder)
        if name in ("proteus", "adaptive"):
            assert any(r["what"] == "plan" for r in reconf) and pol.history
            # every plan meets the target it was given (adaptive's accuracy credit may relax a period's
            # target below 0.87 after a surplus; the run's mean is checked below)
            assert all(h["mean_accuracy"] >= h["accuracy_target"] - 1e-6 for h in pol.history if h["goodput_rps"] > 0)
            assert name == "adaptive" or all(h["accuracy_target"] == 0.87 for h in pol.history)
    assert res["static-accurate"]["mean_accuracy_profiled"] == pytest.approx(0.88)
    assert res["static-fast"]["mean_accuracy_profiled"] == pytest.approx(0.80)
    # the planned policies keep the mean delivered accuracy near the target while adapting
    assert res["adaptive"]["mean_accuracy_profiled"] >= 0.87 - 0.005


def test_online_profiling_catches_an_accuracy_drift_the_static_planner_misses():
    # Meeting a mean accuracy of 0.85 at this load needs "small" in the mix. At t = 20 s "small"
    # silently degrades from 0.84 to 0.60: only online profiling (shadow runs vs the reference) sees it.
    ladder = {"big": prof("big", 0.88, 20.0), "small": prof("small", 0.84, 0.8)}
    tr = gamma_bursty(300.0, 2.0, duration_s=60.0, seed=1)

    def acc(v, t):
        return 0.60 if (v == "small" and t >= 20.0) else ladder[v].accuracy

    out = {}
    for name in ("proteus", "adaptive"):
        rows, _, pol = simulate(name, ladder, tr.arrival_s, cores=2, latency_ms=300.0, accuracy_target=0.85,
                                accuracy_at=acc, seed=2,
                                policy_kw={"sample_fraction": 0.2, "shadow_budget": 0.5})
        early = [r for r in rows if 5.0 < r["arrival_s"] < 20.0 and r["status"] == 200]
        late = [r for r in rows if r["arrival_s"] > 35.0 and r["status"] == 200]
        assert any(r["variant"] == "small" for r in early)  # the mix uses the fast variant before the drift
        out[name] = (np.mean([r["accuracy"] for r in late]), pol)
    events = out["adaptive"][1].profiler.events
    assert any(e.kind == "accuracy" and e.variant == "small" and e.time_s >= 20.0 for e in events)
    assert out["proteus"][0] < 0.85 - 0.03  # blind to the drift: keeps mixing in the degraded variant
    assert out["adaptive"][0] >= 0.85 - 0.01  # re-planned with the live accuracy


def test_request_path_is_a_fifo_server_and_its_service_time_is_recovered_from_the_mean():
    from leanml.serve.sim.simulator import fit_request_path_ms, request_path_delays_ms

    # the simulator's request path and the Lindley recursion agree (instant model: latency = path time)
    p = VariantProfile("z", 0.9, LatencyProfile({1: 1e-6}, {1: 1e-6}))
    t = gamma_bursty(60.0, 6.0, n=3000, seed=2).arrival_s
    sim = Simulator({"z": p}, Fixed("z"), cores=1, batching=Batching(1, 0.0, 10**6, 1), overhead_ms=4.0, seed=0)
    lat = np.array([r["latency_ms"] for r in sim.run(t, slo=SLO())])
    assert np.allclose(lat, request_path_delays_ms(t, 4.0), atol=1e-3)
    # bursts queue on the path: its 10th percentile is the bare cost, the mean includes the backlog
    rng = np.random.default_rng(0)
    seen = request_path_delays_ms(t, 4.0) + rng.exponential(1.0, len(t))  # plus a little pure delay
    fit = fit_request_path_ms(t, seen)
    assert 4.0 <= fit <= 5.2  # the service time (plus at most the added delay), not the mean path time
    assert seen.mean() > 1.5 * fit
    # requests with no observed path time (refused) still occupy the path
    seen[::3] = np.nan
    assert fit_request_path_ms(t, seen) == pytest.approx(fit, abs=0.3)
    with pytest.raises(ValueError, match="finite"):
        fit_request_path_ms(t[:3], np.full(3, np.nan))
