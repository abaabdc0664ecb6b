"""LLM serving policies for `leanml.serve.sim.llm_sim`: static, INFaaS-style greedy, Proteus-style, adaptive
(the last two, which follow a plan, live in `leanml.serve.sim.llm_planned`).

Every policy sees the same engines (one per core), KV budget and request SLOs (TTFT, TPOT), and the same
accuracy need ``target``; how they read it differs, as in their papers:

* ``static-accurate`` / ``static-fast``: every engine on the most accurate / cheapest variant, its batch
  cap and chunk chosen offline from the profile (`offline_batching`: the largest whose full iteration
  meets the TPOT SLO); join-shortest-queue by outstanding tokens; never refuses (FIFO, the TTFT deadline
  drops what waited too long).
* ``infaas`` (INFaaS, Romero et al., USENIX ATC'21): per request, the variants meeting the request's
  accuracy *on their own* (a floor), cheapest first; the first whose running instance is predicted to
  meet the latency SLO (here TTFT and TPOT) gets it; else an idle engine is switched to the cheapest
  such variant (INFaaS's scale-up / variant upgrade); else refused. Batch cap and chunk per variant by
  `offline_batching` (INFaaS picks batch from profiles offline).
* ``proteus`` (Proteus, Ahmad et al., ASPLOS'24): every ``period_s`` a MILP allocation of variants to
  engines and routing from the last period's mean rate, one request class, Poisson arrivals (CV 1), the
  accuracy target as a *mean* (accuracy scaling: less accurate variants mixed in as load grows). Its
  knobs are variant, allocation and batch; it does not prune context (KV cap fixed to none).
* ``adaptive``: the LLM planner (`leanml.serve.control.llm_planner`) per request class (prompt x
  declared-output buckets), with KV caps, measured CV of inter-arrivals (clipped to 1-3: beyond 3 the
  exponential-tail Kingman bound rules out every option and the plan would be empty), the larger of the period's and
  the last 30 s rate, and re-planning at once when the rate or the class mix drifts. Its router keeps an
  accuracy ledger: an option is skipped when routing there would bring the mean accuracy of everything
  routed so far below the target (the plan's mix is a mean over *planned* traffic; refusals and
  fall-throughs under bursts would otherwise skew the realized mix toward the cheap options). When the
  p99 plan serves less than the demand it follows the capacity plan (`plan_llm` with ``ttft_wait=False``),
  whose goodput is the larger; the admission test then bounds what each admitted request waits.

Planned policies route a class by the plan's fractions (smooth weighted round-robin), within an option to
the engine with the least predicted TTFT. When none of the class's options is predicted to answer within the
SLOs they fall through to any other engine that is (work-conserving, most accurate first; the accuracy rule
still holds), and refuse early (429) only what no engine is predicted to answer. Without the fall-through
(``fall_through = False``) adaptive refuses 279 of 485 requests on seed 0 of the 3x-SLO load-1 replay while its
two engines are busy 28-29% of the window (`benchmarks/diagnostics/llm_refusal_check.py`).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from leanml.serve.control.llm_planner import LLMClass, LLMPlannerConfig
from leanml.serve.control.llm_profiles import FULL, LLMProfile
from leanml.serve.policy import LLM_POOL, ControlSurface, Policy, make_policy
from leanml.serve.sim.llm_sim import EngineConfig, LLMRequest, LLMServeState, LLMSimulator
from leanml.serve.types import REFUSE_OVERLOADED, Request, ServeState


def most_accurate(profiles: dict[str, LLMProfile]) -> str:
    """The variant with the best full-context accuracy; ties go to the cheaper one (prefill of 1,024 tokens
    plus 16 decode steps at batch 1)."""
    return max(profiles, key=lambda v: (profiles[v].accuracy(FULL), -request_cost_ms(profiles[v], 1024, 16, 1)))


def request_cost_ms(p: LLMProfile, prompt: float, output: float, batch: int = 8) -> float:
    """Engine time per request at a running batch: its prefill plus its share of ``output`` decode steps."""
    return p.prefill_time_ms(prompt) + output * p.step_ms(batch, prompt + output / 2) / batch


def offline_batching(p: LLMProfile, s: PolicySettings) -> tuple[int, int]:
    """(batch cap, chunk) chosen offline from the profile: the largest batch of the planner's grid, then the
    largest chunk, whose full iteration (a decode step at that batch plus a whole chunk of prefill, at the
    prior's prompt length) meets the prior's TPOT SLO; at batch 1, or if none does, one request at a time
    with the largest chunk (nothing shares its iterations, so a smaller chunk would only add passes)."""
    pr = s.prior
    ok = [(b, c) for b in s.planner.batch_sizes for c in s.planner.chunk_tokens
          if p.step_ms(b, pr.prompt_tokens) + p.prefill_time_ms(c) <= pr.tpot_ms]
    b, c = max(ok, default=(1, 0))
    return (b, c) if b > 1 else (1, max(s.planner.chunk_tokens))


def cheapest(profiles: dict[str, LLMProfile], prompt: float, output: float) -> str:
    return min(profiles, key=lambda v: request_cost_ms(profiles[v], prompt, output))


@dataclass
class PolicySettings:
    """What every policy is told: the accuracy need, fixed batching for the unplanned ones, the planner's
    grids, the re-plan period, and the operator's prior load (the first plan, before any history)."""

    accuracy_target: float
    planner: LLMPlannerConfig
    prior: LLMClass
    period_s: float = 60.0


class LLMPolicy(Policy):
    """A `leanml.serve.policy.Policy` that routes over an LLM engine pool (the ``llm-pool`` surface).

    The hooks are the Policy contract's, called by `LLMSimulator` as the runtime calls them:
    ``on_arrival(request, now)`` before ``route``; ``route(request, state)`` returns the name of the
    engine that serves the request (``"e0"``, ``"e1"``, ...; `LLMSimulator.engine_name`) and writes the KV
    cap it chose into ``request.knobs["kv_cache_cap"]`` (0 = none), or returns None with ``reason`` and
    ``refusal_kind`` set; ``tick(now, surface)`` re-plans (``surface`` is the simulator, a
    `ControlSurface`). ``request.inputs`` is the `LLMRequest` (prompt and output tokens, TTFT/TPOT SLOs)
    and ``state`` an `LLMServeState`, whose ``pool`` carries the engine predictions. One hook is added:
    ``setup(pool)`` configures every engine before the first request. Registered names start ``llm-``
    (`leanml.serve.policy.BUILTIN`); factories take ``(variants, profiles=..., settings=...)``.
    """

    surface: ClassVar[str] = LLM_POOL
    label: ClassVar[str] = "llm"  # the name in reports (the registered name without "llm-")

    def __init__(self, variants: list[str], *, profiles: dict[str, LLMProfile], settings: PolicySettings) -> None:
        missing = [v for v in variants if v not in profiles]
        if not variants or missing:
            raise ValueError(f"policy {self.name}: variants {missing or variants} have no LLM profile "
                             f"(profiled: {sorted(profiles)})")
        self.profiles, self.s = {v: profiles[v] for v in variants}, settings

    @abstractmethod
    def setup(self, pool: LLMSimulator) -> None:
        """Configure every engine (`LLMSimulator.configure`)."""

    @abstractmethod
    def route_llm(self, pool: LLMSimulator, req: LLMRequest) -> tuple[int, int] | None:
        """(engine index, KV cap) for ``req``, or None to refuse it (``_reason`` set)."""

    def route(self, request: Request, state: ServeState) -> str | None:
        if not isinstance(state, LLMServeState):
            raise TypeError(f"policy {self.name} routes over an LLM engine pool (the LLM simulator): it got a "
                            f"{type(state).__name__}; a runtime deployment takes a runtime policy (static, infaas, ..)")
        dec = self.route_llm(state.pool, request.inputs)
        if dec is None:
            self._kind = REFUSE_OVERLOADED
            return None
        ei, cap = dec
        request.knobs["kv_cache_cap"] = int(cap)
        return state.pool.engine_name(ei)

    def on_arrival(self, request: Request, now: float) -> None:
        self.remember(request.inputs)

    def on_drop(self, request_id: int) -> None:
        """A request this policy routed that the engine then dropped unanswered (it expired in the queue, or its
        KV reservation exceeds the engine's budget); called by the simulator. Default: nothing."""
        return None

    def remember(self, req: LLMRequest) -> None:
        """Sees every arrival before it is routed (the planned policies' window statistics); default: nothing."""
        return None

    def tick(self, now: float, surface: ControlSurface) -> None:
        if isinstance(surface, LLMSimulator):
            self.replan(surface, now)

    def replan(self, pool: LLMSimulator, now: float) -> None:
        """Called every simulator tick (re-planning); default: nothing."""
        return None


def _jsq(sim: LLMSimulator, engines: list[int]) -> int:
    return min(engines, key=sim.outstanding)


def soonest(sim: LLMSimulator, engines: list[int], kept: int, ttft_ms: float) -> tuple[int, float]:
    """The engine of ``engines`` predicted to give the first token soonest (the first such on a tie) and that
    prediction: each engine predicted once (the prediction walks the engine's queue; routing is its hot path)."""
    ts = [sim.predict_ttft_ms(i, kept, ttft_ms) for i in engines]
    j = min(range(len(ts)), key=ts.__getitem__)
    return engines[j], ts[j]


class LLMStaticPolicy(LLMPolicy):
    """Every engine on one variant (``variant``; default: the subclass's choice), join-shortest-queue, no refusal;
    batch cap and chunk ``batching`` (default: `offline_batching`)."""

    def __init__(self, variants: list[str], *, profiles: dict[str, LLMProfile], settings: PolicySettings,
                 variant: str | None = None, batching: tuple[int, int] | None = None) -> None:
        super().__init__(variants, profiles=profiles, settings=settings)
        self.batching = batching
        self.variant = variant or self.choose()
        if self.variant not in self.profiles:
            raise ValueError(f"policy {self.name}: variant {self.variant!r} is not served ({sorted(self.profiles)})")

    def choose(self) -> str:
        return most_accurate(self.profiles)

    def setup(self, sim):
        b, c = self.batching or offline_batching(self.profiles[self.variant], self.s)
        sim.configure([EngineConfig(self.variant, b, c)] * sim.n_engines)

    def route_llm(self, sim, req):
        return _jsq(sim, list(range(sim.n_engines))), FULL


class LLMStaticAccurate(LLMStaticPolicy):
    name = "llm-static-accurate"
    label = "static-accurate"


class LLMStaticFast(LLMStaticPolicy):
    name = "llm-static-fast"
    label = "static-fast"

    def choose(self) -> str:
        return cheapest(self.profiles, self.s.prior.prompt_tokens, self.s.prior.output_tokens)


class LLMInfaasPolicy(LLMPolicy):
    name = "llm-infaas"
    label = "infaas"

    def setup(self, sim):
        pr = self.s.prior
        self.cands = sorted((v for v, p in self.profiles.items() if p.accuracy(FULL) >= self.s.accuracy_target),
                            key=lambda v: request_cost_ms(self.profiles[v], pr.prompt_tokens, pr.output_tokens))
        if not self.cands:
            raise ValueError(f"infaas: no variant meets accuracy {self.s.accuracy_target} on its own")
        self.cfg = {v: EngineConfig(v, *offline_batching(self.profiles[v], self.s)) for v in self.cands}
        sim.configure([self.cfg[self.cands[0]]] * sim.n_engines)

    def route_llm(self, sim, req):
        for v in self.cands:
            mine = [i for i, e in enumerate(sim.engines) if e.target.variant == v]
            if mine:
                ei, t = soonest(sim, mine, req.prompt, req.ttft_ms)
                if t <= req.ttft_ms and sim.predict_tpot_ms(ei, req.prompt, req.output) <= req.tpot_ms:
                    return ei, FULL
        idle = [i for i, e in enumerate(sim.engines) if not e.running and not e.waiting and not e.busy]
        for v in self.cands:
            for i in idle:
                if sim.engines[i].target.variant != v:
                    sim.configure([self.cfg[v] if j == i else e.target
                                   for j, e in enumerate(sim.engines)])
                    return i, FULL
        self._reason = (f"no variant meeting accuracy {self.s.accuracy_target:.4f} on its own is predicted to meet "
                        f"TTFT {req.ttft_ms:.0f} ms and TPOT {req.tpot_ms:.0f} ms, and no engine is idle to switch")
        return None


LLM_POLICIES = ("llm-static-accurate", "llm-static-fast", "llm-infaas", "llm-proteus", "llm-adaptive",
                "llm-adaptive-nocap")


def make_policies(profiles: dict[str, LLMProfile], s: PolicySettings,
                  names: tuple[str, ...] = LLM_POLICIES) -> list[LLMPolicy]:
    """The registered LLM policies ``names`` (default: the five compared and the adaptive ablation, in report
    order), built through the policy registry; TypeError naming one that is not an LLM policy."""
    out = []
    for n in names:
        pol = make_policy(n, list(profiles), {"profiles": profiles, "settings": s})
        if not isinstance(pol, LLMPolicy):
            raise TypeError(f"policy {n!r} is a {type(pol).__name__}, not an LLM policy (LLMPolicy); the LLM "
                            f"simulator takes the llm-* policies: {', '.join(LLM_POLICIES)}")
        out.append(pol)
    return out
