"""The serving-policy contract, for every registered policy (a newly registered one is tested with no new code).

Each ``runtime`` member, built from the registry with its default parameters for two served variants,
must in the simulator and in a live runtime behind HTTP on loopback: route only to served variants,
refuse an impossible request (accuracy above every variant's, latency below any model call) with a
reason and a 429/503, and survive its ticks (the Controller's, in a worker thread, and the simulator's).
Each ``llm-pool`` member (the LLM policies), built from the registry with two profiled variants, must in
the LLM simulator: route only to the pool's engines and served variants, never count an impossible
request (TTFT and TPOT SLOs below any iteration) as good, give a reason for every refusal, survive its
ticks, and refuse a runtime's state with a clear error. Test ids are ``<k>of<n>-<name>``, so the output
counts the members covered.
"""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
from serve_helpers import flat_llm_profile, flat_profile, gate_variant

from leanml.serve.config import Batching
from leanml.serve.control.controller import Controller
from leanml.serve.dataplane.http import BackgroundServer, build_app
from leanml.serve.dataplane.runtime import Runtime
from leanml.serve.policy import LLM_POOL, Policy, known_policies, make_policy
from leanml.serve.sim.simulator import Simulator
from leanml.serve.types import SLO
from leanml.serve.workload.traces import poisson

NAMES = known_policies()
IDS = [f"{k}of{len(NAMES)}-{n}" for k, n in enumerate(NAMES, 1)]
LLM_NAMES = known_policies(LLM_POOL)
LLM_IDS = [f"{k}of{len(LLM_NAMES)}-{n}" for k, n in enumerate(LLM_NAMES, 1)]
SERVED = ["acc", "fast"]
OK = SLO(latency_ms=500.0)
IMPOSSIBLE = SLO(latency_ms=1e-3, min_accuracy=0.999)


def test_the_registry_lists_the_built_in_policies():
    assert {"static", "infaas", "proteus", "adaptive", "clipper"} <= set(NAMES)
    assert {"llm-static-accurate", "llm-static-fast", "llm-infaas", "llm-proteus", "llm-adaptive",
            "llm-adaptive-nocap"} <= set(LLM_NAMES)
    assert not set(NAMES) & set(LLM_NAMES)  # a deploy config can name only runtime policies


@pytest.mark.parametrize("name", LLM_NAMES, ids=LLM_IDS)
def test_llm_policy_contract_in_the_llm_simulator(name):
    from leanml.serve.control.llm_planner import LLMClass, LLMPlannerConfig
    from leanml.serve.sim.llm_policies import LLMPolicy, PolicySettings
    from leanml.serve.sim.llm_sim import LLMRequest, LLMSimulator
    from leanml.serve.types import Request, ServeState

    profiles = {"acc": flat_llm_profile("acc", 0.60, 40.0, 0.5), "fast": flat_llm_profile("fast", 0.45, 15.0, 0.2)}
    prior = LLMClass("prior", 0.5, 400, 16, ttft_ms=3000.0, tpot_ms=300.0, output_max=32)
    s = PolicySettings(0.55, LLMPlannerConfig(engines=2, kv_budget_bytes=1e9, batch_sizes=(1, 4, 8),
                                              chunk_tokens=(256, 512), utilization=(0.5, 0.7)), prior, period_s=10.0)
    pol = make_policy(name, SERVED, {"profiles": profiles, "settings": s})
    assert isinstance(pol, LLMPolicy) and pol.name == name and pol.surface == LLM_POOL
    rng = np.random.default_rng(1)
    t = np.cumsum(rng.exponential(2.0, 120))  # about 4 minutes at 0.5 req/s: two dozen ticks and periods

    def bad(i: int) -> bool:
        return i % 10 == 9

    reqs = [LLMRequest(i, float(t[i]), int(rng.integers(100, 800)), int(rng.integers(2, 32)),
                       1e-3 if bad(i) else 3000.0, 1e-3 if bad(i) else 300.0) for i in range(len(t))]
    sim = LLMSimulator(profiles, engines=2, kv_budget_bytes=1e9, seed=0)
    outs = sim.run(pol, reqs, tick_s=2.0)
    ok = [o for o in outs if o.status == "ok"]
    assert ok and {o.variant for o in ok} <= set(SERVED)
    assert not any(o.good for o in outs if bad(o.i))
    assert all(o.reason for o in outs if o.status == "refused"), [o for o in outs if o.status == "refused"][:2]
    assert sum(o.good for o in outs if not bad(o.i)) >= 0.8 * sum(not bad(i) for i in range(len(reqs)))
    with pytest.raises(TypeError, match=name):  # a runtime deployment's state: refused by name, not misrouted
        pol.route(Request(0, "d", reqs[0], OK, 0.0), ServeState({}, {}, {}))


@pytest.mark.parametrize("name", NAMES, ids=IDS)
def test_policy_contract_in_the_simulator(name):
    pol = make_policy(name, SERVED)
    assert isinstance(pol, Policy) and pol.name == name
    profiles = {"acc": flat_profile("acc", 0.95, 4.0), "fast": flat_profile("fast", 0.80, 1.0)}
    sim = Simulator(profiles, pol, cores=2, batching=Batching(max_batch=8), tick_s=0.05, seed=0)
    arrivals = poisson(50.0, n=300, seed=1).arrival_s  # about 6 s: over a hundred ticks

    def bad(i: int) -> bool:
        return i % 10 == 9

    rows = sim.run(arrivals, slo=OK, slo_for=lambda i: IMPOSSIBLE if bad(i) else OK,
                   request_class=lambda i: "impossible" if bad(i) else f"c{i % 3}")
    answered = [r for r in rows if r["status"] == 200]
    assert answered and {r["variant"] for r in answered} <= set(SERVED)
    refused = [r for r in rows if bad(r["id"])]
    assert refused and all(r["status"] in (429, 503) and r["reason"] for r in refused), refused[:2]
    assert sum(not bad(r["id"]) for r in answered) >= 0.9 * sum(not bad(i) for i in range(len(rows)))


@pytest.mark.parametrize("name", NAMES, ids=IDS)
def test_policy_contract_live_on_loopback(name):
    variants = {"acc": gate_variant("acc", acc=0.95, ms=4.0), "fast": gate_variant("fast", acc=0.80, ms=1.0)}
    pol = make_policy(name, list(variants))
    rt = Runtime(threads=2)
    rt.add_deployment("d", variants, pol, batching=Batching(max_batch=8))
    ctl = Controller(rt, "d", pol, tick_s=0.02)  # every policy is ticked: a no-op tick must survive too
    answered, refused = [], []
    with BackgroundServer(build_app(rt)) as url, httpx.Client(base_url=url, timeout=30.0) as c:
        for i in range(40):
            slo = IMPOSSIBLE if i % 10 == 9 else OK
            r = c.post("/v1/predict/d", json={"inputs": [[1.0, 0.0, 0.0, 0.0]], "request_class": f"c{i % 3}",
                                              "slo": {"latency_ms": slo.latency_ms,
                                                      "min_accuracy": slo.min_accuracy}})
            (refused if i % 10 == 9 else answered).append((r.status_code, r.json()))
        deadline = time.time() + 20.0
        while ctl.ticks < 5 and time.time() < deadline:  # the first MILP imports scipy: allow for it
            time.sleep(0.02)
        ctl.stop()
    assert ctl.errors == [] and ctl.ticks >= 5
    assert all(s == 200 and b["request_variant"] in variants for s, b in answered), answered[:2]
    assert all(s in (429, 503) and b.get("reason") for s, b in refused), refused
