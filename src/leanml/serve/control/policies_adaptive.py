"""Planner-driven routing policies: adaptive (MILP + online profiling), Proteus-style, Clipper AIMD.

All three subclass `leanml.serve.policy.Policy` (``route``, ``reason``, ``refusal_kind``) and implement
two of its hooks, which the simulator and `Controller` (live runtime) call:

- ``tick(now, surface)``: periodic control; re-plans and applies batch size / workers per variant
  through ``surface.set_batching(variant, max_batch, max_wait_ms, concurrency)`` and ``surface.set_plan``;
- ``observe(request, outcome, surface)``: after every answer (online profiling, AIMD feedback).

`ProteusPolicy` re-solves the MILP every ``period_s`` from the mean arrival rate of the last period,
assuming Poisson arrivals (CV 1) and the static offline profiles (Proteus, ASPLOS'24, without the
online profiling leanml adds). `AdaptivePolicy` uses the same MILP but (1) profiles live traffic
(`OnlineProfiler`: accuracy by shadow runs, EWMA latency), (2) plans for the measured burstiness
(CV of recent inter-arrival times) and for the larger of the period's mean rate and the last
seconds' rate, (3) re-plans at once when the profiler reports drift (load or accuracy), and (4)
treats the accuracy target as a mean over the run: surplus delivered in quiet periods is spent in
bursts (accuracy credit, bounded per period by ``max_relax``).
`ClipperAIMDPolicy` serves one variant (the most accurate by default) and adapts its batch size by
additive increase / multiplicative decrease on the batch latency against the SLO (Clipper, NSDI'17).

The deployment's ``min_accuracy`` is read by the planned policies as a *mean* delivered-accuracy
target, the Proteus formulation; INFaaS-style (`leanml.serve.dataplane.routing.InfaasPolicy`) reads it
per request.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from typing import Any

import numpy as np

from leanml.serve.control.planner import Plan, PlannerConfig, PlannerDevice, RequestClass, plan
from leanml.serve.control.profiler import OnlineProfiler
from leanml.serve.dataplane.routing import predicted_latency_ms
from leanml.serve.policy import ControlSurface, Policy
from leanml.serve.types import REFUSE_IMPOSSIBLE, REFUSE_OVERLOADED, Outcome, Request, ServeState, VariantProfile


class _PlannedPolicy(Policy):
    """Routes by the current plan's per-class fractions (smooth weighted round-robin)."""

    name = "planned"
    controlled = True

    def __init__(
        self,
        variants: list[str],
        *,
        accuracy_target: float | None = None,
        period_s: float = 5.0,
        batch_sizes: list[int] | tuple[int, ...] = (1, 2, 4, 8, 16, 32),
        max_workers: int | None = None,
        cores: int | None = None,
        time_limit_s: float = 0.5,
        min_rate_rps: float = 1.0,
        admission: bool = True,
        admission_quantile: str = "p50",
        work_conserving: bool = True,
    ) -> None:
        if not variants:
            raise ValueError(f"{self.name} policy: no variants served")
        if period_s <= 0:
            raise ValueError(f"{self.name} policy: period_s must be > 0, got {period_s}")
        self.variants = list(variants)
        self.accuracy_target = accuracy_target
        self.period_s = float(period_s)
        self.batch_sizes = tuple(int(b) for b in batch_sizes)
        self.max_workers, self.cores = max_workers, cores
        self.time_limit_s, self.min_rate = time_limit_s, float(min_rate_rps)
        if admission_quantile not in ("p50", "p99"):
            raise ValueError(f"{self.name} policy: admission_quantile must be p50 or p99, got {admission_quantile!r}")
        self.admission, self.admission_quantile = admission, admission_quantile
        self.work_conserving = work_conserving
        self.plan: Plan | None = None
        self.history: list[dict[str, Any]] = []
        self._arrivals: dict[str, deque] = {}
        self._slo_ms: dict[str, float] = {}
        self._min_acc: dict[str, float] = {}
        self._credit: dict[str, dict[str, float]] = {}  # the loop's alone (route)
        # route() (event loop) records arrivals and SLOs; tick() (the Controller's worker thread) reads
        # them: both hold this lock, and tick works on a snapshot taken under it
        self._lock = threading.Lock()
        self._last_plan = -math.inf
        self._reason, self._kind = "", REFUSE_IMPOSSIBLE
        self.solve_s: list[float] = []

    # ---- routing --------------------------------------------------------------------------------
    def route(self, request: Request, state: ServeState) -> str | None:
        cls = request.request_class
        with self._lock:
            self._arrivals.setdefault(cls, deque()).append(state.now_s)
            if request.slo.latency_ms is not None:
                self._slo_ms[cls] = request.slo.latency_ms
            if request.slo.min_accuracy is not None:
                self._min_acc[cls] = request.slo.min_accuracy
        current = self.plan  # read once: tick swaps it from another thread
        served = [v for v in self.variants if v in state.profiles]
        if not served:
            self._reason, self._kind = "no served variant has a profile", REFUSE_IMPOSSIBLE
            return None
        fr = (current.fractions.get(cls) if current is not None else None) or {}
        fr = {v: f for v, f in fr.items() if v in served and f > 0}
        if not fr:  # before the first plan, or a class the plan serves nothing of: the most accurate
            fr = {max(served, key=lambda v: state.profiles[v].accuracy): 1.0}
        credit = self._credit.setdefault(cls, {})
        for v, f in fr.items():
            credit[v] = credit.get(v, 0.0) + f
        order = sorted(fr, key=lambda v: -credit[v])
        if not self.admission or request.slo.latency_ms is None:
            credit[order[0]] -= 1.0
            return order[0]
        for v in order:  # the planned choice, else the next planned variant that can still make it
            if predicted_latency_ms(v, state, max(1, request.n_examples), self.admission_quantile) \
                    <= request.slo.latency_ms:
                credit[v] -= 1.0
                return v
        self._reason = (f"overloaded: no planned variant ({', '.join(order)}) can answer within "
                        f"{request.slo.latency_ms} ms with the current queues")
        self._kind = REFUSE_OVERLOADED
        credit[order[0]] -= 1.0
        return None

    # ---- planning -------------------------------------------------------------------------------
    def _profiles(self, surface: ControlSurface) -> dict[str, VariantProfile]:
        return {v: p for v, p in surface.state().profiles.items() if v in self.variants}

    def _snapshot(self, now: float) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, float]]:
        """Under the lock: drop old arrivals, then copy what tick needs (arrival times per class with any,
        latency SLO and accuracy need per class), so planning never reads state route() is changing."""
        with self._lock:
            for q in self._arrivals.values():
                while q and q[0] < now - max(60.0, 6 * self.period_s):
                    q.popleft()
            arrivals = {c: np.fromiter(q, dtype=np.float64, count=len(q)) for c, q in self._arrivals.items() if q}
            return arrivals, dict(self._slo_ms), dict(self._min_acc)

    def _rate_cv(self, t: np.ndarray, now: float) -> tuple[float, float]:
        """Arrival rate and CV of inter-arrivals the plan should assume (Proteus: period mean, Poisson),
        from one class's arrival times ``t``."""
        n = int(np.sum(t > now - self.period_s))
        return max(self.min_rate, n / self.period_s), 1.0

    def _drift(self) -> bool:
        return False

    def _period_target(self, target: float, rate_rps: float) -> float:
        """The accuracy target of the next plan (Proteus: the deployment's target, every period)."""
        return target

    def tick(self, now: float, surface: ControlSurface) -> None:
        """Re-plan when the period has passed (or on drift), and apply the plan to the surface."""
        arrivals, slo_ms, min_acc = self._snapshot(now)
        drift = self._drift()
        if now - self._last_plan < self.period_s and not drift:
            return
        self._last_plan = now
        classes = []
        for cls in sorted(arrivals) or ["default"]:
            rate, cv = self._rate_cv(arrivals.get(cls, np.zeros(0)), now)
            classes.append(RequestClass(cls, rate, slo_ms.get(cls, 1000.0), cv=cv))
        cores = self.cores or surface.cores or 1
        target = self.accuracy_target
        if target is None and min_acc:
            target = max(min_acc.values())
        if target is not None:
            target = self._period_target(target, sum(c.rate_rps for c in classes))
        cfg = PlannerConfig(batch_sizes=self.batch_sizes, max_workers=self.max_workers or cores,
                            accuracy_target=target, time_limit_s=self.time_limit_s)
        profiles = self._profiles(surface)
        new = plan(profiles, classes, cfg, [PlannerDevice("local", cores)])
        self.solve_s.append(new.solve_s)
        if new.goodput_rps <= 0 and self.plan is not None:
            return  # keep the last workable plan
        self.plan = new  # the swap: one assignment, read once per route()
        self.history.append({"time_s": now, "drift": drift, "accuracy_target": target,
                             **{f"rate_{c.name}": c.rate_rps for c in classes},
                             **{f"cv_{c.name}": c.cv for c in classes}, **new.to_json()})
        surface.set_plan(new)
        tightest = min(c.latency_ms for c in classes)
        for v in self.variants:
            if v in new.batch:
                # the plan's batch is what the queueing model assumed under the planned load; the runtime
                # limit may be larger (up to a batch whose p99 takes half the SLO): dynamic batching only
                # forms big batches when requests are queued, so bursts get the extra throughput
                p = profiles[v]
                fits = [b for b in self.batch_sizes if p.latency.at(b, "p99") <= 0.5 * tightest]
                workers = max(1, sum(new.workers[v].values()))
                limit = max([new.batch[v], *fits])
                # No fill window when the variant may use every core (work-conserving) or its limit is
                # above the planned batch: batches then fill from the queue while the cores are busy, and
                # a window only holds requests while a core idles (it cost 2% goodput on the live CIFAR
                # window, where the request path takes most of the SLO the planner thought was slack).
                wait = new.max_wait_ms.get(v, 0.0) if limit == new.batch[v] and not self.work_conserving else 0.0
                surface.set_batching(v, limit, wait, cores if self.work_conserving else workers)
            else:
                surface.set_batching(v, max(self.batch_sizes), 0.0, 1)



class ProteusPolicy(_PlannedPolicy):
    """Periodic MILP on offline profiles and the last period's mean rate (Proteus, no online profiling)."""

    name = "proteus"


class AdaptivePolicy(_PlannedPolicy):
    """MILP + online profiling: live profiles, measured burstiness, re-planning on drift."""

    name = "adaptive"

    def __init__(self, variants: list[str], *, sample_fraction: float = 0.05, shadow_budget: float = 0.1,
                 burst_window_s: float | None = None, max_cv: float = 4.0, accuracy_credit: bool = True,
                 max_relax: float = 0.05, **kw: Any) -> None:
        super().__init__(variants, **kw)
        burst_window_s = 0.4 * self.period_s if burst_window_s is None else burst_window_s  # 2 s per 5 s period
        if burst_window_s <= 0:
            raise ValueError(f"adaptive policy: burst_window_s must be > 0, got {burst_window_s}")
        if not 0 <= max_relax < 1:
            raise ValueError(f"adaptive policy: max_relax must be in [0, 1), got {max_relax}")
        self.accuracy_credit, self.max_relax = accuracy_credit, max_relax
        self.credit = 0.0  # sum over answered requests of (live accuracy of its variant - target)
        self._acc_now: dict[str, float] = {}
        self._target_base: float | None = None
        self.sample_fraction, self.shadow_budget = sample_fraction, shadow_budget
        self.burst_window_s, self.max_cv = burst_window_s, max_cv
        self.profiler: OnlineProfiler | None = None
        self._seen_batches: deque = deque(maxlen=256)

    def _ensure_profiler(self, profiles: dict[str, VariantProfile]) -> OnlineProfiler:
        with self._lock:  # route() (loop) and tick() (control thread) may both be first
            if self.profiler is None:
                    self.profiler = OnlineProfiler(profiles, sample_fraction=self.sample_fraction,
                                               shadow_budget=self.shadow_budget)
            return self.profiler

    def route(self, request: Request, state: ServeState) -> str | None:
        if self.profiler is None and state.profiles:
            self._ensure_profiler({v: p for v, p in state.profiles.items() if v in self.variants})
        if self.profiler is not None:
            self.profiler.observe_arrival(state.now_s)
        return super().route(request, state)

    def _profiles(self, surface: ControlSurface) -> dict[str, VariantProfile]:
        return self._ensure_profiler(super()._profiles(surface)).profiles()

    def _rate_cv(self, t: np.ndarray, now: float) -> tuple[float, float]:
        t = t[t > now - 6 * self.period_s]
        mean = np.sum(t > now - self.period_s) / self.period_s
        recent = np.sum(t > now - self.burst_window_s) / self.burst_window_s
        # burstiness *within* the recent window: rate changes across windows are tracked by re-planning,
        # so the long-run CV (13 for the Azure trace) would double-count them
        gaps = np.diff(t[t > now - self.burst_window_s])
        cv = float(gaps.std() / gaps.mean()) if len(gaps) > 10 and gaps.mean() > 0 else 1.0
        return max(self.min_rate, mean, recent), float(np.clip(cv, 1.0, self.max_cv))

    def _drift(self) -> bool:
        return self.profiler is not None and self.profiler.drift_pending()

    def _period_target(self, target: float, rate_rps: float) -> float:
        """Accuracy credit: the target is a mean over the whole run, so accuracy delivered above it in
        quiet periods may be spent in bursts (the next period's target is lowered by the surplus
        spread over the requests the period expects, by at most ``max_relax``); a deficit raises it."""
        self._target_base = target
        if not self.accuracy_credit:
            return target
        expected = max(1.0, rate_rps * self.period_s)
        shift = float(np.clip(self.credit / expected, -self.max_relax, self.max_relax))
        return float(np.clip(target - shift, 0.0, 1.0))

    def tick(self, now: float, surface: ControlSurface) -> None:
        before = len(self.history)
        super().tick(now, surface)
        if len(self.history) > before and self.profiler is not None:
            self._acc_now = {v: self.profiler.accuracy(v) for v in self.variants if v in self.profiler.base}
            h = self.history[-1]
            rate = sum(v for k, v in h.items() if k.startswith("rate_"))
            self.profiler.set_planned_load(rate, dispersion=max(1.0, max(
                (v for k, v in h.items() if k.startswith("cv_")), default=1.0) ** 2))

    def observe(self, request: Request, outcome: Outcome, surface: ControlSurface) -> None:
        if self.profiler is None or outcome.status != 200 or outcome.variant is None:
            return
        if self._target_base is not None:
            acc = self._acc_now.get(outcome.variant)
            if acc is None:
                acc = self._acc_now[outcome.variant] = self.profiler.accuracy(outcome.variant)
            self.credit += acc - self._target_base
        key = (outcome.variant, round(float(outcome.model_ms), 6), int(outcome.batch_size))
        if key not in self._seen_batches:  # one latency sample per model call, not per request
            self._seen_batches.append(key)
            self.profiler.record_served(outcome.variant, max(1, int(outcome.batch_size)), float(outcome.model_ms))
        surface.submit_shadow(self.profiler, request, outcome)


class ClipperAIMDPolicy(Policy):
    """One variant; its max batch grows by ``step`` while batches finish within the SLO, else x ``backoff``."""

    name = "clipper"
    controlled = True

    def __init__(self, variants: list[str], variant: str | None = None, step: int = 1, backoff: float = 0.9,
                 slo_ms: float | None = None, max_batch: int = 256, initial_batch: int = 1) -> None:
        if not variants:
            raise ValueError("clipper policy: no variants served")
        if variant is not None and variant not in variants:
            raise ValueError(f"clipper policy: variant {variant!r} is not served (served: {variants})")
        if step < 1 or not 0 < backoff < 1:
            raise ValueError(f"clipper policy: step must be >= 1 and backoff in (0, 1) (got {step}, {backoff})")
        self.variants, self.variant = list(variants), variant
        self.step, self.backoff, self.slo_ms = step, backoff, slo_ms
        self.cap = max_batch
        self.batch = int(initial_batch)
        self._applied: int | None = None
        self._seen: deque = deque(maxlen=256)
        self.trajectory: list[tuple[float, int]] = []
        self._lock = threading.Lock()  # tick runs from observe() (loop) and from the Controller's thread

    def route(self, request: Request, state: ServeState) -> str | None:
        if self.variant is None:
            self.variant = max((v for v in self.variants if v in state.profiles),
                               key=lambda v: state.profiles[v].accuracy, default=self.variants[0])
        if self.slo_ms is None and request.slo.latency_ms is not None:
            self.slo_ms = request.slo.latency_ms
        prof, need = state.profiles.get(self.variant), request.slo.min_accuracy
        if need is not None and prof is not None and prof.accuracy < need:  # one variant: as static routing
            self._reason = (f"variant {self.variant} has accuracy {prof.accuracy:.4f} < min_accuracy {need} "
                            f"(clipper serves one variant)")
            return None
        return self.variant

    def tick(self, now: float, surface: ControlSurface) -> None:
        with self._lock:
            if self.variant is None or self._applied == self.batch:
                return
            self._applied = batch = self.batch
            self.trajectory.append((now, batch))
        surface.set_batching(self.variant, batch, 0.0, surface.cores)

    def observe(self, request: Request, outcome: Outcome, surface: ControlSurface) -> None:
        if outcome.status != 200 or self.slo_ms is None:
            return
        key = (round(float(outcome.model_ms), 6), int(outcome.batch_size))
        if key in self._seen:
            return
        self._seen.append(key)
        if outcome.model_ms > self.slo_ms:
            self.batch = max(1, int(self.batch * self.backoff))
        elif outcome.batch_size >= self.batch:  # only a full batch tells us a larger one is needed
            self.batch = min(self.cap, self.batch + self.step)
        self.tick(surface.now, surface)
