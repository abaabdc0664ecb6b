"""The plan-following LLM policies: Proteus-style and adaptive (with its no-KV-cap ablation).

Both route by a plan of `leanml.serve.control.llm_planner.plan_llm` (`_Planned`); they differ in how they read
classes and rates and in when they re-plan. The module docstring of `leanml.serve.sim.llm_policies` describes
all the LLM policies side by side; the static and INFaaS-style ones live there.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace

import numpy as np

from leanml.serve.control.llm_planner import LLMClass, LLMOption, LLMPlan, LLMPlannerConfig, plan_llm
from leanml.serve.control.llm_profiles import FULL
from leanml.serve.sim.llm_ledger import AccuracyLedger
from leanml.serve.sim.llm_policies import LLMPolicy, most_accurate, offline_batching, soonest
from leanml.serve.sim.llm_sim import EngineConfig, LLMRequest, LLMSimulator


class _Planned(LLMPolicy):
    """Plan-following routing shared by Proteus and adaptive (subclasses say how classes and rates are read)."""

    recent_s = 30.0
    fall_through = True  # False: refuse what the class's own options cannot take (the ablation of the fall-through)
    capacity_plan = False  # adaptive: when the p99 plan serves less than the demand, follow the capacity plan
    ledger = False  # adaptive: never route so that the mean accuracy of routed requests falls below the target

    def setup(self, sim):
        self.hist: deque[LLMRequest] = deque()
        self.plan: LLMPlan | None = None
        self.last_plan_s = 0.0
        self.credit: dict[tuple[str, LLMOption], float] = {}
        self.book = AccuracyLedger(self.s.accuracy_target)  # what was routed and not dropped (enforced: `ledger`)
        self._replan(sim, 0.0, [replace(self.s.prior, name=self.classify(int(self.s.prior.prompt_tokens),
                                                                         int(self.s.prior.output_tokens)))])

    def classify(self, prompt: int, output: int) -> str:
        return "all"

    def remember(self, req):
        self.hist.append(req)
        while self.hist and self.hist[0].arrival_s < req.arrival_s - max(self.s.period_s, self.recent_s):
            self.hist.popleft()

    def classes_now(self, now: float) -> list[LLMClass]:
        raise NotImplementedError

    def _replan(self, sim: LLMSimulator, now: float, classes: list[LLMClass]) -> None:
        cfg = self.planner_cfg()
        pl = plan_llm(self.profiles, classes, cfg)
        capacity = False
        if self.capacity_plan and pl.goodput_rps < 0.999 * pl.demand_rps:
            # the p99 plan cannot serve the demand: plan the engines for capacity instead (`plan_llm`'s
            # ttft_wait), the admission test bounding each admitted request's wait
            cap = plan_llm(self.profiles, classes, replace(cfg, ttft_wait=False))
            if cap.goodput_rps > pl.goodput_rps:
                pl, capacity = cap, True
        self.plan, self.last_plan_s = pl, now
        self.opt_engines: dict[LLMOption, list[int]] = {}
        configs: list[EngineConfig] = []
        for o, n in sorted(pl.engines.items(), key=lambda kv: -kv[1]):
            for _ in range(n):
                self.opt_engines.setdefault(o, []).append(len(configs))
                configs.append(EngineConfig(o.variant, o.batch, o.chunk))
        best = most_accurate(self.profiles)
        fb = EngineConfig(best, *offline_batching(self.profiles[best], self.s))
        for _ in range(sim.n_engines - len(configs)):  # engines the plan left idle: best effort, admission-checked
            self.opt_engines.setdefault(LLMOption(best, FULL, fb.batch, fb.chunk, 0.0), []).append(len(configs))
            configs.append(fb)
        sim.configure(configs[: sim.n_engines])
        sim.log.append({"t": now, "policy": self.name, "plan": pl.summary(), "capacity_plan": capacity,
                        "classes": [(k.name, round(k.rate_rps, 3)) for k in classes]})

    def planner_cfg(self) -> LLMPlannerConfig:
        return replace(self.s.planner, accuracy_target=self.s.accuracy_target)

    def route_llm(self, sim, req):
        """The class's planned options, by its fractions (the plan's mean accuracy holds over them); a class
        the plan has not seen may use any engine whose accuracy for this request meets the target on its own
        (so unplanned traffic never pulls the mean below it)."""
        k = self.classify(req.prompt, req.output)
        fr = self.plan.fractions(k) if self.plan else {}
        if fr:  # smooth weighted round-robin over the class's options
            for o, f in fr.items():
                self.credit[(k, o)] = self.credit.get((k, o), 0.0) + f
            o = max(fr, key=lambda o: self.credit[(k, o)])
            self.credit[(k, o)] -= 1.0
            order = [o, *sorted(fr, key=lambda x: -fr[x])]
        else:
            order = [o for o in self.opt_engines
                     if self.profiles[o.variant].accuracy(o.kv_cap if sim.kept(req, o.kv_cap) < req.prompt else FULL)
                     >= self.s.accuracy_target]
        for o in order:
            cap = o.kv_cap
            kept = sim.kept(req, cap)
            eng = self.opt_engines.get(o, [])
            if not eng:
                continue
            acc = self.profiles[o.variant].accuracy(cap if kept < req.prompt else FULL)
            if self.ledger and not self.book.allows(acc):
                continue  # the realized mix would fall below the mean target (refusals skew it to cheap options)
            ei, t = soonest(sim, eng, kept, req.ttft_ms)
            if t <= req.ttft_ms and sim.predict_tpot_ms(ei, kept, req.output) <= req.tpot_ms:
                self.book.book(req.i, acc)
                return ei, cap
        spare = self.spare_engine(sim, req, set(order)) if self.fall_through else None
        if spare is not None:
            return spare
        self._reason = (f"no engine is predicted to meet TTFT {req.ttft_ms:.0f} ms and TPOT "
                        f"{req.tpot_ms:.0f} ms within the accuracy target {self.s.accuracy_target:.4f}")
        return None

    def spare_engine(self, sim, req, tried: set[LLMOption]) -> tuple[int, int] | None:
        """Work-conserving fall-through: an engine of an option the class's plan does not name, at any KV cap the
        policy may set (a per-request knob, not the engine's), most accurate first, then least predicted TTFT,
        when it is predicted to meet both SLOs and the accuracy rule holds (the ledger where kept; otherwise the
        option meets the target on its own, as for a class the plan has not seen). Most accurate first: on the
        3x-SLO load-1 replay, least-TTFT first spent the ledger on KV-capped options (1.20x INFaaS against
        1.25x, 4 seeds, scratch runs before the chunk-priced predictions)."""
        best = None
        allowed = self.planner_cfg().kv_caps  # the caps the policy's planner may choose (None: every measured one)
        for o, eng in self.opt_engines.items():
            if o in tried:
                continue
            p = self.profiles[o.variant]
            for cap in (c for c in p.kv_caps() if allowed is None or c in allowed):
                kept = sim.kept(req, cap)
                acc = p.accuracy(cap if kept < req.prompt else FULL)
                ok = self.book.allows(acc) if self.ledger else acc >= self.s.accuracy_target
                if not ok:
                    continue
                for ei in eng:
                    t = sim.predict_ttft_ms(ei, kept, req.ttft_ms)
                    if (t <= req.ttft_ms and (best is None or (-acc, t) < (-best[3], best[0]))
                            and sim.predict_tpot_ms(ei, kept, req.output) <= req.tpot_ms):
                        best = (t, ei, cap, acc)
        if best is None:
            return None
        self.book.book(req.i, best[3])
        return best[1], best[2]

    def on_drop(self, request_id: int) -> None:
        self.book.drop(request_id)


class LLMProteusPolicy(_Planned):
    name = "llm-proteus"
    label = "proteus"

    def planner_cfg(self):
        return replace(self.s.planner, accuracy_target=self.s.accuracy_target, kv_caps=(FULL,))

    def replan(self, sim, now):
        if now - self.last_plan_s < self.s.period_s - 1e-9:
            return
        win = [r for r in self.hist if r.arrival_s >= now - self.s.period_s]
        if not win:
            return
        pr = self.s.prior
        self._replan(sim, now, [replace(pr, name="all", rate_rps=len(win) / self.s.period_s,
                                        prompt_tokens=float(np.mean([r.prompt for r in win])),
                                        prompt_p99=float(np.percentile([r.prompt for r in win], 99)),
                                        output_tokens=float(np.mean([r.output for r in win])),
                                        output_max=int(max(r.output for r in win)), cv=1.0)])


PROMPT_EDGES = (1024, 3072)
OUTPUT_EDGES = (32,)


class LLMAdaptivePolicy(_Planned):
    name = "llm-adaptive"
    label = "adaptive"
    ledger = True
    capacity_plan = True

    def classify(self, prompt, output):
        p = int(np.searchsorted(PROMPT_EDGES, prompt, side="right"))
        return f"p{p}o{int(np.searchsorted(OUTPUT_EDGES, output, side='right'))}"

    def classes_now(self, now):
        win = [r for r in self.hist if r.arrival_s >= now - self.s.period_s]
        recent = [r for r in win if r.arrival_s >= now - self.recent_s]
        if len(win) < 2:
            return []
        scale = max(1.0, (len(recent) / self.recent_s) / (len(win) / self.s.period_s))
        gaps = np.diff([r.arrival_s for r in win])
        cv = float(np.std(gaps) / np.mean(gaps)) if len(gaps) > 1 and np.mean(gaps) > 0 else 1.0
        cv = min(3.0, max(1.0, cv))
        groups: dict[str, list[LLMRequest]] = {}
        for r in win:
            groups.setdefault(self.classify(r.prompt, r.output), []).append(r)
        pr = self.s.prior
        return [replace(pr, name=k, rate_rps=scale * len(rs) / self.s.period_s,
                        prompt_tokens=float(np.mean([r.prompt for r in rs])),
                        prompt_p99=float(np.percentile([r.prompt for r in rs], 99)),
                        output_tokens=float(np.mean([r.output for r in rs])),
                        output_max=int(max(r.output for r in rs)), cv=cv) for k, rs in groups.items()]

    def replan(self, sim, now):
        classes = self.classes_now(now)
        if not classes:
            return
        due = now - self.last_plan_s >= self.s.period_s - 1e-9
        if not due and self.plan is not None:  # drift: rate or class mix moved since the plan
            planned = {k.name: k.rate_rps for k in self.plan.classes}
            tot_p, tot_n = sum(planned.values()), sum(k.rate_rps for k in classes)
            mix = 0.5 * sum(abs(planned.get(k.name, 0) / max(tot_p, 1e-12) - k.rate_rps / max(tot_n, 1e-12))
                            for k in classes) if tot_p > 0 else 1.0
            due = not 0.7 <= tot_n / max(tot_p, 1e-12) <= 1.4 or mix > 0.25
        if due:
            self._replan(sim, now, classes)


class AdaptiveNoCapPolicy(LLMAdaptivePolicy):
    """Ablation: adaptive without context pruning (KV cap fixed to none), to separate the knob's share."""

    name = "llm-adaptive-nocap"
    label = "adaptive-nocap"

    def planner_cfg(self):
        return replace(self.s.planner, accuracy_target=self.s.accuracy_target, kv_caps=(FULL,))
