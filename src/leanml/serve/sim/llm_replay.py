"""The LLM policies on one replay's requests: each on a fresh continuous-batching simulator, summarized.

One implementation for `benchmarks/serve_llm_replay.py` (per seed of its grid) and the `make demo` LLM
section (`leanml.serve.demo_llm`): the policies are built through the policy registry
(`leanml.serve.sim.llm_policies.make_policies`, which checks that each is an LLM policy), each runs the same
requests on its own `LLMSimulator` (same engines, KV budget and seed), and `llm_sim.summarize` reports it.
"""

from __future__ import annotations

import time
from typing import Any

from leanml.serve.control.llm_profiles import LLMProfile
from leanml.serve.sim.llm_policies import LLM_POLICIES, PolicySettings, make_policies
from leanml.serve.sim.llm_sim import LLMRequest, LLMSimulator, summarize


def run_llm_policies(profiles: dict[str, LLMProfile], requests: list[LLMRequest], settings: PolicySettings, *,
                     engines: int, kv_bytes: float, seed: int, span_s: float,
                     policies: tuple[str, ...] = LLM_POLICIES, tick_s: float = 10.0,
                     queue: str = "edf") -> dict[str, dict[str, Any]]:
    """Simulate ``policies`` on ``requests``; per policy label its `summarize` over ``span_s`` seconds, plus
    ``replans`` (entries of the simulator's log) and ``sim_s`` (wall seconds of its simulation)."""
    out = {}
    for pol in make_policies(profiles, settings, policies):
        t0 = time.perf_counter()
        sim = LLMSimulator(profiles, engines=engines, kv_budget_bytes=kv_bytes, seed=seed, queue=queue)
        res = summarize(sim.run(pol, requests, tick_s=tick_s), span_s)
        res["replans"] = len(sim.log)
        res["sim_s"] = round(time.perf_counter() - t0, 2)
        out[pol.label] = res
    return out
