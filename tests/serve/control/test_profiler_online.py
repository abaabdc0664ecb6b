"""Online profiling: drift fires on an injected accuracy drop, not on noise; budgets; EWMA profiles."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from leanml.serve.control.profiler import DropDetector, LoadDriftDetector, OnlineProfiler, ShadowRunner
from leanml.serve.types import LatencyProfile, VariantProfile
from leanml.serve.workload.traces import gamma_bursty, poisson


def prof(name, acc, ms=1.0):
    return VariantProfile(name, acc, LatencyProfile({1: ms, 8: 4 * ms}, {1: 2 * ms, 8: 8 * ms}))


@pytest.mark.parametrize("seed", range(5))
def test_drop_detector_quiet_on_noise_fires_on_a_drop(seed):
    rng = np.random.default_rng(seed)
    d = DropDetector()
    noise = rng.random(6000) < 0.9
    assert not any(d.update(x) for x in noise)  # 6,000 samples of a steady 90% stream: no alarm
    drop = rng.random(1000) < 0.7  # accuracy falls by 20 points
    fired = [i for i, x in enumerate(drop) if d.update(x)]
    assert fired and fired[0] < 400  # caught within a few hundred samples of the change


def test_profiler_flags_a_variant_whose_live_accuracy_drops_without_labels():
    rng = np.random.default_rng(0)
    profs = {"ref": prof("ref", 0.92), "fast": prof("fast", 0.85)}
    p = OnlineProfiler(profs, sample_fraction=1.0)
    assert p.reference == "ref"
    for i in range(3000):
        truth = int(rng.integers(10))
        agree_rate = 0.93 if i < 2000 else 0.6  # after 2000 requests "fast" starts disagreeing a lot
        fast_out = truth if rng.random() < agree_rate else (truth + 1) % 10
        p.record_outputs({"ref": truth, "fast": fast_out}, now_s=float(i))
        if i == 1999:
            assert not p.events and p.accuracy("fast") == pytest.approx(0.85, abs=0.03)
    kinds = [(e.kind, e.variant) for e in p.events]
    assert ("accuracy", "fast") in kinds and p.drift_pending() and not p.drift_pending()
    assert all(e.time_s >= 2000 for e in p.events)
    assert p.profiles()["fast"].accuracy < 0.8


def test_labels_measure_accuracy_directly():
    p = OnlineProfiler({"a": prof("a", 0.9), "b": prof("b", 0.5)}, sample_fraction=1.0, prior_strength=1.0)
    for i in range(500):
        p.record_outputs({"a": i % 2, "b": 0}, label=i % 2)
    assert p.accuracy("a") == pytest.approx(1.0, abs=0.01)
    assert p.accuracy("b") == pytest.approx(0.5, abs=0.02)


def test_load_drift_ignores_bursts_but_sees_a_rate_change():
    for seed in range(3):  # stationary but bursty (CV 3): no alarm once the dispersion is accounted for
        quiet = LoadDriftDetector(window_s=10.0, z=4.0)
        tr = gamma_bursty(20.0, 3.0, duration_s=600, seed=seed + 1)
        counts = np.bincount((tr.arrival_s // 10).astype(int))[:-1]
        quiet.set_plan(20.0, dispersion=counts.var() / counts.mean())
        assert sum(quiet.observe(t) for t in tr.arrival_s) == 0
    moved = LoadDriftDetector(window_s=10.0)
    moved.set_plan(20.0)
    a = poisson(20.0, duration_s=60, seed=1).arrival_s
    b = 60 + poisson(60.0, duration_s=30, seed=2).arrival_s
    hits = [t for t in np.concatenate([a, b]) if moved.observe(t)]
    assert hits and 60 < hits[0] < 70


def test_ewma_profiles_and_shadow_budget():
    profs = {"a": prof("a", 0.9, 10.0), "b": prof("b", 0.8, 10.0)}
    p = OnlineProfiler(profs, sample_fraction=1.0, shadow_budget=0.1, ewma_alpha=0.5)
    for _ in range(60):
        p.record_served("a", 8, 100.0, energy_j=8.0)
    new = p.profiles()["a"]
    assert new.latency.p50_ms[8] == pytest.approx(100.0) and new.energy_j_per_request == pytest.approx(1.0)
    # served 60 x 0.1 s = 6 s, budget 10% -> about 0.6 s of shadows at 10 ms each: ~60, not all 1000
    n = sum(bool(p.choose_shadows("a")) for _ in range(1000))
    assert 40 <= n <= 70 and p.skipped_budget == 1000 - n


def test_shadow_runner_off_the_critical_path():
    p = OnlineProfiler({"a": prof("a", 0.9), "b": prof("b", 0.8)}, sample_fraction=1.0, shadow_budget=100.0)
    p.record_served("a", 1, 1000.0)

    gate = threading.Event()

    def slow(v, x):
        gate.wait(10)  # shadow work is stuck until the submits are done
        if v == "b":
            raise RuntimeError("boom")
        return x

    r = ShadowRunner(p, slow, max_queue=4)
    accepted = [r.submit("a", 1, 1) for _ in range(50)]
    assert r.done == 0  # every submit returned while the shadow work was blocked: it never waits for it
    assert sum(accepted) + r.dropped == 50 and r.dropped > 0
    gate.set()
    r.drain()
    r.close()
    assert r.done == sum(accepted) and r.errors and "boom" in r.errors[0]
