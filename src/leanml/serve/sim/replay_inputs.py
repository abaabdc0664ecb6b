"""What a replay runs on, built once for `leanml serve replay` (cli/replay_cmd.py) and `leanml demo` (serve/demo.py).

`replay_inputs` turns a deployment's profiles and a trace into everything the replay study needs:
the profiles the policies see and the ones service times come from (text generators: moved to the
trace's generation lengths, `generation_plan`), the most accurate variant and the accuracy target
(its accuracy minus ``accuracy_slack``), the largest batch every variant was measured at, the
simulated trace (rescaled so its mean rate is ``load`` x the most accurate variant's capacity on
``cores`` cores, the burst shape kept), and the planner period (Proteus' 5 s per 5 minutes of trace,
clipped to [0.05, 5] s). `replay_payloads` builds the live requests: real validation examples with
their labels, or, for text generators, MMLU prompts generating exactly each trace request's tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from leanml.serve.sim.replay import Payload
from leanml.serve.sim.replay_study import GenerationPlan, generation_plan, most_accurate
from leanml.serve.types import VariantProfile
from leanml.serve.workload.traces import Trace, max_new_tokens, scale_to_rate

CAPACITY_BATCHES = (1, 4, 16, 32)


@dataclass
class ReplayInputs:
    """A replay's inputs (see the module docstring)."""

    profiles: dict[str, VariantProfile]  # what the policies plan and route with
    true_profiles: dict[str, VariantProfile]  # what the simulator draws service times from
    best: str  # the most accurate variant
    accuracy_target: float
    max_batch: int
    generation: GenerationPlan | None  # text generators only
    sim_trace: Trace  # rescaled to ``load`` x capacity
    capacity_rps: float  # the most accurate variant's, on ``cores`` cores
    period_s: float  # planner period in the simulation

    @property
    def tick_s(self) -> float:
        return self.period_s / 5

    def knobs_for(self) -> Callable[[int], dict[str, Any]] | None:
        """Request i's generation knobs (its trace length), for text generators; None for classifiers."""
        gp = self.generation
        return (lambda i: {"max_new_tokens": int(gp.tokens[i])}) if gp is not None else None


def replay_inputs(profiles: dict[str, VariantProfile], trace: Trace, *, kind: str = "classify",
                  accuracy_slack: float = 0.01, load: float = 0.6, cores: int = 2,
                  window_s: float | None = None) -> ReplayInputs:
    """Profiles, target, batch limit, rescaled trace and period of a replay of ``trace`` on ``cores`` cores.

    ``kind`` is the prototype's (``"generate"`` for text generators; their profiles must hold
    generation timing: ValueError naming the variants otherwise). ``window_s``: simulate only the first
    ``window_s`` seconds of the rescaled trace (the period follows the window's length)."""
    if not profiles:
        raise ValueError("replay_inputs: no profiles")
    if load <= 0 or cores < 1:
        raise ValueError(f"replay_inputs: load must be > 0 and cores >= 1 (got {load}, {cores})")
    best = most_accurate(profiles)
    target = profiles[best].accuracy - accuracy_slack
    # no batch larger than every variant's largest measured one (the LLM profiles stop at 8)
    max_b = min(32, min(max(p.latency.p50_ms) for p in profiles.values()))
    gp = generation_plan(profiles, trace) if kind == "generate" else None
    seen = gp.policy_profiles if gp is not None else profiles
    sizes = sorted({b for b in CAPACITY_BATCHES if b <= max_b} | {max_b})
    cap = cores * max(b / (seen[best].latency.at(b, "p50") / 1e3) for b in sizes)
    st = scale_to_rate(trace, load * cap)  # keeps every request, in order (the trace's tokens stay valid)
    if window_s is not None:
        if window_s <= 0:
            raise ValueError(f"replay_inputs: window_s must be > 0, got {window_s}")
        st = st.window(0.0, window_s)
    period = float(np.clip(5.0 * st.duration_s / 300.0, 0.05, 5.0))
    return ReplayInputs(seen, profiles, best, target, max_b, gp, st, cap, period)


def replay_payloads(val: str, trace: Trace | None, kind: str, cap: int = 32, *, deployment_path: str = "study",
                    ) -> Callable[[int], Payload]:
    """``make_payload(i)`` for a live replay: real validation examples from ``val`` (``"dataset/split"``;
    labels kept client-side), or for text generators an MMLU dev question generating exactly the
    trace's tokens (min = max new tokens, clipped to ``cap``)."""
    from leanml.data import load

    if kind == "generate":
        qs = [r["question"] for r in load("mmlu", "dev").records]
        gen = max_new_tokens(trace, cap)

        def make_gen(i: int) -> Payload:
            n = int(gen[i])
            return Payload(f"/v1/generate/{deployment_path}", {"prompt": qs[i % len(qs)], "max_new_tokens": n,
                                                              "min_new_tokens": n})

        return make_gen
    if "/" not in val:
        raise ValueError(f"no validation split to draw inputs from (profile extra.val = {val!r}; want 'dataset/split')")
    name, split = val.split("/", 1)
    data = load(name, split)
    X, y = data.X.astype(np.float32), data.y
    order = np.random.default_rng(0).permutation(len(X))

    def make(i: int) -> Payload:
        j = int(order[i % len(order)])
        return Payload(f"/v1/predict/{deployment_path}", {"inputs": [X[j].tolist()]}, label=int(y[j]))

    return make


# ---------------------------------------------------------------------------------------------- LLM replays
@dataclass
class LLMReplayInputs:
    """An LLM replay's inputs: the requests (arrival, prompt and output tokens, SLOs), what was done to the
    trace, what every policy is told, and the capacity the rate was fitted to."""

    requests: list[Any]  # leanml.serve.sim.llm_sim.LLMRequest, sorted by arrival
    timescale: Any  # leanml.serve.workload.timescale.TimescaleReport
    settings: Any  # leanml.serve.sim.llm_policies.PolicySettings
    capacity_rps: float
    token_scale: float = 1.0
    max_output: int | None = None

    @property
    def span_s(self) -> float:
        """Seconds of replay time the requests cover (the window, after any time compression)."""
        r = self.timescale
        return r.window_s / (r.factor if r.method == "time-compression" else 1.0)


def llm_replay_inputs(profiles: dict[str, Any], trace: Trace, *, load: float, engines: int, kv_bytes: float,
                      window_s: float, seed: int = 0, slo_x: float = 3.0, accuracy_slack: float = 0.01,
                      start_s: float | None = None, token_scale: float = 1.0,
                      max_output: int | None = None) -> LLMReplayInputs:
    """The one builder of an LLM replay (`benchmarks/serve_llm_replay.py`, simulated and live, and `leanml demo`).

    The window of ``trace`` starting at ``start_s`` (default: its drift window, `timescale.drift_window`),
    thinned on its own clock to ``load`` x the capacity of the most accurate variant (its engine time per
    request at the window's mean prompt and output, a running batch of 4, on all ``engines``). Each request
    prefills its trace prompt and generates its trace output, times ``token_scale`` (prompt) and clipped to
    ``max_output`` (a live window on one CPU core cannot prefill the trace's 1,500-token median prompts at
    a useful rate; the report states the scale). SLOs: TTFT <= max(1 s, ``slo_x`` x the most accurate
    variant's lone prefill of the prompt); TPOT <= ``slo_x`` x its decode step at batch 1 and 1,024 tokens
    of context. Accuracy target: the best variant's full-context accuracy - ``accuracy_slack``."""
    from leanml.serve.control.llm_planner import LLMClass, LLMPlannerConfig
    from leanml.serve.control.llm_profiles import FULL
    from leanml.serve.sim.llm_policies import PolicySettings, most_accurate, request_cost_ms
    from leanml.serve.sim.llm_sim import LLMRequest
    from leanml.serve.workload.timescale import drift_window, real_timescale

    if trace.context_tokens is None or trace.generated_tokens is None:
        raise ValueError(f"trace '{trace.name}': an LLM replay needs prompt and generated token counts per request")
    if load <= 0 or engines < 1 or kv_bytes <= 0 or slo_x <= 0 or not 0 < token_scale <= 1:
        raise ValueError(f"llm_replay_inputs: load, kv_bytes and slo_x must be > 0, engines >= 1 and token_scale in "
                         f"(0, 1] (got {load}, {kv_bytes}, {slo_x}, {engines}, {token_scale})")
    best = most_accurate(profiles)
    pb = profiles[best]
    start = drift_window(trace, max(600.0, min(window_s, 1800.0)), 120.0) if start_s is None else float(start_s)

    def lengths(ctx: np.ndarray, gen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = np.maximum(8, np.round(np.asarray(ctx, dtype=np.float64) * token_scale)).astype(np.int64)
        o = np.maximum(np.asarray(gen, dtype=np.int64), 1)
        return p, (np.minimum(o, max_output) if max_output else o)

    win = trace.window(start, window_s)
    wp, wo = lengths(win.context_tokens, win.generated_tokens)
    p_mean, o_mean = float(np.mean(wp)), float(np.mean(wo))
    capacity = engines * 1000.0 / request_cost_ms(pb, p_mean, o_mean, batch=4)
    scaled, rep = real_timescale(trace, load * capacity, window_s=window_s, bin_s=min(120.0, window_s / 2),
                                 start_s=start, seed=seed)
    tpot = slo_x * pb.step_ms(1, 1024)
    ps, os_ = lengths(scaled.context_tokens, scaled.generated_tokens)
    reqs = [LLMRequest(i, float(t), int(p), int(o), max(1000.0, slo_x * pb.prefill_time_ms(int(p))), tpot)
            for i, (t, p, o) in enumerate(zip(scaled.arrival_s, ps, os_, strict=True))]
    prior = LLMClass("prior", load * capacity, p_mean, o_mean, ttft_ms=max(1000.0, slo_x * pb.prefill_time_ms(p_mean)),
                     tpot_ms=tpot, prompt_p99=float(np.percentile(wp, 99)), output_max=int(np.max(wo)))
    cfg = LLMPlannerConfig(engines=engines, kv_budget_bytes=kv_bytes, time_limit_s=1.0)
    target = pb.accuracy(FULL) - accuracy_slack
    return LLMReplayInputs(reqs, rep, PolicySettings(target, cfg, prior, period_s=60.0), capacity, token_scale,
                           max_output)
