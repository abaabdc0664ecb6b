"""The MILP planner: every constraint holds, it beats greedy where greedy is provably suboptimal."""

from __future__ import annotations

import pytest

from leanml.serve.control.planner import (
    PlannerConfig,
    PlannerDevice,
    RequestClass,
    check_plan,
    greedy_plan,
    plan,
)
from leanml.serve.control.queueing import erlang_c, latency_quantile_ms, max_rate_for_slo
from leanml.serve.types import LatencyProfile, VariantProfile

BATCHES = (1, 2, 4, 8, 16, 32)


def prof(name: str, acc: float, ms: float, energy: float | None = None, per_item: float = 0.4) -> VariantProfile:
    p50 = {b: ms * ((1 - per_item) + per_item * b) for b in BATCHES}
    return VariantProfile(name, acc, LatencyProfile(p50, {b: 1.3 * v for b, v in p50.items()}),
                          energy_j_per_request=energy)


def test_erlang_c_and_queueing_model_known_values():
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = rho
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)  # textbook M/M/2 at rho = 0.5
    kw = dict(batch=1, workers=1, service_p50_ms=10.0, service_p99_ms=10.0)
    # M/D/1 at rho = 0.5 with Kingman's factor (1 + 0)/2: mean wait = 0.5/(100-50) * 0.5 = 5 ms
    lat = latency_quantile_ms(50.0, ca=1.0, q=0.99, **kw)
    assert lat == pytest.approx(10 + 10 * __import__("math").log(0.5 / 0.01), rel=1e-6)
    assert latency_quantile_ms(100.0, **kw) == float("inf")
    # burstier arrivals allow less load under the same SLO
    caps = [max_rate_for_slo(60.0, ca=c, **kw) for c in (0.5, 1.0, 3.0)]
    assert caps[0] > caps[1] > caps[2] > 0
    assert latency_quantile_ms(caps[1], ca=1.0, **kw) <= 60.0 + 1e-6


def test_milp_satisfies_every_constraint_it_was_given():
    profs = {"big": prof("big", 0.91, 20, 2.0), "mid": prof("mid", 0.87, 6, 0.8),
             "small": prof("small", 0.80, 1.0, 0.2), "tiny": prof("tiny", 0.74, 0.3, 0.05)}
    classes = [RequestClass("interactive", 250, 50, cv=2.0), RequestClass("batch", 400, 300, min_accuracy=0.86,
                                                                          cv=1.0)]
    cfg = PlannerConfig(accuracy_target=0.85, energy_budget_j=0.9, max_workers=4)
    devs = [PlannerDevice("local", 8)]
    p = plan(profs, classes, cfg, devs)
    assert p.solver == "milp" and p.goodput_rps > 0
    assert check_plan(p, profs, classes, cfg, devs) == []
    assert p.mean_accuracy >= 0.85 - 1e-9 and p.energy_per_request_j <= 0.9 + 1e-9
    assert sum(o.cores for o in p.chosen) <= 8
    for c in classes:
        assert sum(p.fractions[c.name].values()) == pytest.approx(1.0)


def test_check_plan_catches_violations():
    profs = {"a": prof("a", 0.9, 5), "b": prof("b", 0.7, 1)}
    classes = [RequestClass("k", 100, 40)]
    cfg = PlannerConfig(accuracy_target=0.8)
    p = plan(profs, classes, cfg, [PlannerDevice("local", 4)])
    assert check_plan(p, profs, classes, cfg, [PlannerDevice("local", 4)]) == []
    stricter = PlannerConfig(accuracy_target=0.95)
    assert any("mean accuracy" in v for v in check_plan(p, profs, classes, stricter, [PlannerDevice("local", 4)]))
    assert any("cores" in v for v in check_plan(p, profs, classes, cfg, [PlannerDevice("local", 1)]))


def test_milp_beats_greedy_where_greedy_is_provably_suboptimal():
    # Accurate A (0.90) is slow, B (0.80) is fast; the deployment needs mean accuracy >= 0.85.
    # Greedy (INFaaS) serves every request with a variant meeting 0.85 on its own: only A, so its
    # goodput is at most A's capacity on the whole machine. Mixing A and B 1:1 meets the mean
    # exactly and serves up to twice that: the MILP must find it.
    profs = {"A": prof("A", 0.90, 40.0, per_item=1.0), "B": prof("B", 0.80, 0.5, per_item=1.0)}
    classes = [RequestClass("all", 400.0, 200.0)]
    cfg = PlannerConfig(accuracy_target=0.85, max_workers=2, batch_sizes=(1, 2, 4))
    devs = [PlannerDevice("local", 4)]
    g = greedy_plan(profs, classes, cfg, devs)
    m = plan(profs, classes, cfg, devs)
    a_cap_upper = max(o.cap["all"] for o in m.options if o.variant == "A")
    assert set(g.variants()) == {"A"} and g.goodput_rps <= a_cap_upper + 1e-6
    assert check_plan(m, profs, classes, cfg, devs) == []
    assert m.goodput_rps > 1.5 * g.goodput_rps
    assert m.mean_accuracy == pytest.approx(0.85, abs=1e-3)
    assert set(m.variants()) == {"A", "B"}


def test_fallback_to_greedy_and_bad_params():
    profs = {"a": prof("a", 0.9, 5), "b": prof("b", 0.7, 1)}
    classes = [RequestClass("k", 100, 40)]
    with pytest.raises(ValueError, match="energy"):
        plan(profs, classes, PlannerConfig(energy_budget_j=1.0))
    with pytest.raises(ValueError, match="batch_sizes"):
        PlannerConfig(batch_sizes=(0,))
    p = plan(profs, [RequestClass("k", 100, 0.1)], PlannerConfig())  # no option meets a 0.1 ms SLO
    assert p.goodput_rps == 0 and p.solver == "none"


def test_devices_from_a_hw_system_feed_the_planner():
    from leanml.hw import load_catalog
    from leanml.serve.control.planner import devices_from_system

    system = load_catalog().systems["mixed_h200_l4"]
    devs = devices_from_system(system, reference=next(iter(system.instances.values())))
    assert len(devs) == len(system.instances) and all(d.slots >= 1 and d.speed > 0 for d in devs)
    profs = {"a": prof("a", 0.9, 5.0), "b": prof("b", 0.8, 1.0)}
    classes = [RequestClass("k", 2000.0, 50.0)]
    cfg = PlannerConfig(accuracy_target=0.85, max_workers=2)
    p = plan(profs, classes, cfg, devs)
    assert check_plan(p, profs, classes, cfg, devs) == [] and p.goodput_rps > 0
