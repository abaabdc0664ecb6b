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
                  accuracy_slack: float = 0.01, load: float = 0.6, cores: int = 2) -> ReplayInputs:
    """Profiles, target, batch limit, rescaled trace and period of a replay of ``trace`` on ``cores`` cores.

    ``kind`` is the prototype's (``"generate"`` for text generators; their profiles must hold
    generation timing: ValueError naming the variants otherwise)."""
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
    period = float(np.clip(5.0 * st.duration_s / 300.0, 0.05, 5.0))
    return ReplayInputs(seen, profiles, best, target, max_b, gp, st, cap, period)


def replay_payloads(val: str, trace: Trace, kind: str, cap: int = 32, *, deployment_path: str = "study",
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
