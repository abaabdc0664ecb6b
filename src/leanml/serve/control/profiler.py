"""Online profiling: sample live requests, shadow-run them on other variants, track drift.

- Sampling: each served request is sampled with probability ``sample_fraction``; a sampled request
  is also run, off the critical path (`ShadowRunner`, a background thread with a bounded queue that
  drops rather than blocks), on the other variants, as long as the shadow compute stays within
  ``shadow_budget`` x the compute spent serving (measured wall seconds of model calls).
- Live accuracy: with labels, correctness (a Beta posterior whose prior is the profiled accuracy
  worth ``prior_strength`` samples); without, agreement with the most accurate variant (the
  reference): the profiled accuracy times the ratio of recent to earlier agreement, updated when
  the drop detector fires. Agreement alone is not accuracy (it counts shared mistakes and misses
  the variant's wins), but its *relative* change tracks the variant's accuracy change while the
  reference is stable; the reference's own drift needs labels to be seen.
- Latency and energy: EWMA of each variant's per-batch latency by batch size (mean, and p99 from a
  rolling window), EWMA of energy per request.
- Drift: accuracy by a windowed two-sample z-test on each variant's correctness stream (recent
  window against a reference window; `DropDetector`: alarm needs both z > 4 and a drop above a
  floor, so i.i.d. noise essentially never alarms; a CUSUM with an estimated reference was tried
  and rejected: a reference mean estimated 0.02 too high makes its false-alarm run length tens of
  samples); load by a windowed z-test of the arrival count against the planned rate,
  with the variance inflated by the measured index of dispersion so bursty traffic alone does
  not alarm, and a relative-change floor. Either alarm asks the planner to re-plan.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from leanml.serve.types import LatencyProfile, VariantProfile


# ---------------------------------------------------------------- drift detectors
class DropDetector:
    """Windowed two-sample z-test for a drop in the mean of a {0,1} stream (e.g. correctness).

    The first ``ref_n`` samples after (re)arming form the reference; the last ``win_n`` samples form
    the recent window. Alarm when the recent mean is below the reference by more than ``min_drop``
    and by more than ``z`` standard errors of the difference (pooled binomial variance). With z = 4,
    a check on pure noise alarms with probability ~3e-5, and ``min_drop`` keeps tiny, real but
    irrelevant shifts from re-planning. After an alarm the detector re-learns the new level.
    """

    def __init__(self, ref_n: int = 400, win_n: int = 200, z: float = 4.0, min_drop: float = 0.05) -> None:
        if ref_n < 10 or win_n < 10 or z <= 0 or min_drop < 0:
            raise ValueError(f"DropDetector: need ref_n, win_n >= 10, z > 0, min_drop >= 0 "
                             f"(got {ref_n}, {win_n}, {z}, {min_drop})")
        self.ref_n, self.win_n, self.z, self.min_drop = ref_n, win_n, z, min_drop
        self._ref: list[float] = []
        self._win: deque[float] = deque(maxlen=win_n)
        self.n = 0
        self.alarm_at: int | None = None
        self.last_z = 0.0
        self.last_means: tuple[float, float] | None = None  # (reference, recent) means at the last alarm

    def update(self, x: float) -> bool:
        """Add one observation; True when a drop is detected."""
        self.n += 1
        if len(self._ref) < self.ref_n:
            self._ref.append(float(x))
            return False
        self._win.append(float(x))
        if len(self._win) < self.win_n:
            return False
        p1, p2 = float(np.mean(self._ref)), float(np.mean(self._win))
        pooled = (p1 * self.ref_n + p2 * self.win_n) / (self.ref_n + self.win_n)
        se = math.sqrt(max(pooled * (1 - pooled), 1e-6) * (1 / self.ref_n + 1 / self.win_n))
        self.last_z = (p1 - p2) / se
        if self.last_z > self.z and p1 - p2 > self.min_drop:
            self.alarm_at = self.n
            self.last_means = (p1, p2)
            self._ref, self._win = list(self._win), deque(maxlen=self.win_n)  # re-arm at the new level
            return True
        return False


class LoadDriftDetector:
    """Windowed z-test of arrivals against the planned rate, robust to burstiness."""

    def __init__(self, window_s: float = 10.0, z: float = 4.0, min_rel_change: float = 0.3) -> None:
        if window_s <= 0 or z <= 0 or min_rel_change < 0:
            raise ValueError("LoadDriftDetector: window_s, z must be > 0 and min_rel_change >= 0")
        self.window_s, self.z, self.min_rel = window_s, z, min_rel_change
        self.planned_rps: float | None = None
        self.dispersion = 1.0
        self._t: deque[float] = deque()
        self._first: float | None = None  # no verdict before one full window has been seen

    def set_plan(self, rate_rps: float, dispersion: float = 1.0) -> None:
        """The rate the current plan assumes and the traffic's index of dispersion (var/mean of counts)."""
        self.planned_rps = max(rate_rps, 1e-9)
        self.dispersion = max(1.0, dispersion)

    def observe(self, t: float) -> bool:
        """Record an arrival at time ``t``; True when the windowed rate moved significantly."""
        self._t.append(t)
        if self._first is None:
            self._first = t
        return self.check(t)

    def rate(self) -> float:
        return len(self._t) / self.window_s

    def check(self, now: float) -> bool:
        while self._t and self._t[0] < now - self.window_s:
            self._t.popleft()
        if self.planned_rps is None or self._first is None or now - self._first < self.window_s:
            return False
        expect = self.planned_rps * self.window_s
        n = len(self._t)
        zstat = (n - expect) / math.sqrt(expect * self.dispersion)
        return abs(zstat) > self.z and abs(n - expect) > self.min_rel * expect


# ---------------------------------------------------------------- the profiler
@dataclass(frozen=True)
class DriftEvent:
    kind: str  # "accuracy" | "load"
    variant: str | None
    time_s: float
    detail: str


class OnlineProfiler:
    """Live estimates of accuracy, latency and energy per variant, and drift alarms."""

    def __init__(
        self,
        profiles: dict[str, VariantProfile],
        *,
        sample_fraction: float = 0.05,
        shadow_budget: float = 0.2,
        reference: str | None = None,
        ewma_alpha: float = 0.1,
        prior_strength: float = 50.0,
        drift_ref_n: int = 400,
        drift_win_n: int = 200,
        drift_z: float = 4.0,
        drift_min_drop: float = 0.05,
        load_window_s: float = 10.0,
        load_z: float = 4.0,
        seed: int = 0,
    ) -> None:
        if not profiles:
            raise ValueError("OnlineProfiler: no variant profiles")
        if not 0 <= sample_fraction <= 1:
            raise ValueError(f"sample_fraction must be in [0, 1], got {sample_fraction}")
        if shadow_budget < 0:
            raise ValueError(f"shadow_budget must be >= 0, got {shadow_budget}")
        if not 0 < ewma_alpha <= 1:
            raise ValueError(f"ewma_alpha must be in (0, 1], got {ewma_alpha}")
        self.base = dict(profiles)
        self.reference = reference or max(profiles, key=lambda v: profiles[v].accuracy)
        if self.reference not in profiles:
            raise ValueError(f"reference variant {self.reference!r} is not profiled")
        self.sample_fraction, self.shadow_budget, self.alpha = sample_fraction, shadow_budget, ewma_alpha
        self.prior_strength = prior_strength
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self.served_s = 0.0
        self.shadow_s = 0.0
        self.sampled = 0
        self.skipped_budget = 0
        self._n = {v: 0 for v in profiles}
        self._lab = {v: [0.0, 0] for v in profiles}  # labelled: correct, total
        self._factor = {v: 1.0 for v in profiles}  # live accuracy / profiled, moved only by drift alarms
        self._labelled_ref = [0, 0]  # correct, total for the reference when labels arrive
        self._lat_mean: dict[str, dict[int, float]] = {v: {} for v in profiles}
        self._lat_win: dict[str, dict[int, deque]] = {v: {} for v in profiles}
        self._energy: dict[str, float | None] = {v: p.energy_j_per_request for v, p in profiles.items()}
        self._drop = {v: DropDetector(drift_ref_n, drift_win_n, drift_z, drift_min_drop) for v in profiles}
        self.load = LoadDriftDetector(load_window_s, load_z)
        self.events: list[DriftEvent] = []
        self._pending = False

    # ---- sampling and budget
    def choose_shadows(self, served_variant: str) -> list[str]:
        """For a request just served by ``served_variant``: the variants to shadow-run it on ([] = none)."""
        if self._rng.random() >= self.sample_fraction:
            return []
        others = [v for v in self.base if v != served_variant]
        cost = sum(self.base[v].latency.at(1, "p50") / 1e3 for v in others)
        with self._lock:
            allowance = self.shadow_budget * self.served_s + 0.05  # a small start-up allowance
            if self.shadow_s + cost > allowance:
                self.skipped_budget += 1
                return []
            self.shadow_s += cost  # reserved; `charge_shadow` corrects it with the measured time
            self.sampled += 1
        return others

    def charge_shadow(self, estimated_s: float, measured_s: float) -> None:
        """Replace a reserved shadow cost by the measured one."""
        with self._lock:
            self.shadow_s += measured_s - estimated_s

    # ---- observations
    def record_served(self, variant: str, batch: int, latency_ms: float, energy_j: float | None = None,
                      compute_s: float | None = None) -> None:
        """One model call of ``batch`` requests took ``latency_ms`` (and ``energy_j`` for the batch)."""
        with self._lock:
            self.served_s += (compute_s if compute_s is not None else latency_ms / 1e3)
            m = self._lat_mean[variant]
            m[batch] = latency_ms if batch not in m else (1 - self.alpha) * m[batch] + self.alpha * latency_ms
            self._lat_win[variant].setdefault(batch, deque(maxlen=200)).append(latency_ms)
            if energy_j is not None and batch > 0:
                e = energy_j / batch
                old = self._energy.get(variant)
                self._energy[variant] = e if old is None else (1 - self.alpha) * old + self.alpha * e

    def record_outputs(self, outputs: dict[str, Any], label: Any = None, now_s: float = 0.0) -> None:
        """Outputs of several variants for one request (served + shadows); ``label`` if the client sent it."""
        ref = outputs.get(self.reference)
        truth = label if label is not None else ref
        if truth is None:
            return
        with self._lock:
            if label is not None and ref is not None:
                self._labelled_ref[0] += int(_same(ref, label))
                self._labelled_ref[1] += 1
            for v, out in outputs.items():
                if v not in self._n or (label is None and v == self.reference):
                    continue
                x = float(_same(out, truth))
                self._n[v] += 1
                if label is not None:
                    self._lab[v][0] += x
                    self._lab[v][1] += 1
                if self._drop[v].update(x):
                    p1, p2 = self._drop[v].last_means
                    self._factor[v] *= p2 / p1 if p1 > 0 else 1.0
                    self.events.append(DriftEvent("accuracy", v, now_s, f"drop detected (z={self._drop[v].last_z:.1f}) "
                                                                        f"after {self._n[v]} samples"))
                    self._pending = True

    def observe_arrival(self, t: float) -> None:
        """An arrival at time ``t`` (for load drift; on the event loop while a tick may re-arm the detector)."""
        with self._lock:
            if self.load.observe(t):
                self.events.append(DriftEvent("load", None, t, f"rate {self.load.rate():.2f}/s vs planned "
                                                               f"{self.load.planned_rps:.2f}/s"))
                self._pending = True
                self.load.set_plan(self.load.rate(), self.load.dispersion)  # re-arm at the new level

    def set_planned_load(self, rate_rps: float, dispersion: float = 1.0) -> None:
        """The load the new plan assumes (the control thread, after a re-plan): what load drift is judged against."""
        with self._lock:
            self.load.set_plan(rate_rps, dispersion)

    def drift_pending(self) -> bool:
        """True once after each alarm (the planner clears it by re-planning)."""
        with self._lock:
            p, self._pending = self._pending, False
            return p

    # ---- estimates
    def reference_accuracy(self) -> float:
        c, n = self._labelled_ref
        a0 = self.base[self.reference].accuracy
        return (c + self.prior_strength * a0) / (n + self.prior_strength)

    def accuracy(self, variant: str) -> float:
        """Live accuracy of ``variant``.

        With labels: correctness, as a Beta posterior around the profiled accuracy. Without: the
        profiled accuracy times the relative change of its agreement with the reference, taken only
        when the drop detector finds the change significant (so sampling noise never moves the plan;
        the ratio cancels how correlated the two variants' errors are).
        """
        if variant == self.reference:
            return self.reference_accuracy()
        a0 = self.base[variant].accuracy
        c, n = self._lab[variant]
        if n >= 30:
            return (c + self.prior_strength * a0) / (n + self.prior_strength)
        return float(np.clip(a0 * self._factor[variant], 0.0, 1.0))

    def profiles(self) -> dict[str, VariantProfile]:
        """Profiles updated with live accuracy, EWMA latency (p50 and rolling p99) and energy."""
        out = {}
        with self._lock:
            for v, p in self.base.items():
                p50, p99 = dict(p.latency.p50_ms), dict(p.latency.p99_ms)
                for b, mean in self._lat_mean[v].items():
                    win = self._lat_win[v][b]
                    ratio = (p.latency.at(b, "p99") / max(p.latency.at(b, "p50"), 1e-9))
                    p50[b] = mean
                    p99[b] = float(np.percentile(win, 99)) if len(win) >= 50 else mean * ratio
                out[v] = replace(p, accuracy=self.accuracy(v) if v != self.reference else self.reference_accuracy(),
                                 latency=LatencyProfile(p50, p99), energy_j_per_request=self._energy[v],
                                 extra={**p.extra, "live_samples": self._n[v]})
        return out


def _norm(x: Any) -> Any:
    """A served output's answer: a classifier's labels or a generator's texts, else the value itself."""
    if isinstance(x, dict):
        for k in ("labels", "texts"):
            if k in x:
                return list(x[k])
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def _same(a: Any, b: Any) -> bool:
    a, b = _norm(a), _norm(b)
    if isinstance(a, list) and not isinstance(b, list):
        b = [b] * len(a)
    if isinstance(b, list) and not isinstance(a, list):
        a = [a] * len(b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    return a == b


# ---------------------------------------------------------------- off-critical-path execution
class ShadowRunner:
    """Runs shadow requests on a background thread; never blocks the caller (drops when full).

    ``run(variant, inputs) -> output`` calls a variant directly (not through the serving queues).
    """

    def __init__(self, profiler: OnlineProfiler, run: Callable[[str, Any], Any], max_queue: int = 64) -> None:
        self.profiler, self.run = profiler, run
        self._q: queue.Queue = queue.Queue(maxsize=max_queue)
        self.dropped = 0
        self.done = 0
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._loop, daemon=True, name="leanml-shadow")
        self._stop = threading.Event()
        self._thread.start()

    def submit(self, served_variant: str, served_output: Any, inputs: Any, label: Any = None,
               now_s: float = 0.0) -> bool:
        """Maybe shadow-run a served request; False when not sampled, over budget or the queue is full."""
        shadows = self.profiler.choose_shadows(served_variant)
        if not shadows:
            return False
        est = sum(self.profiler.base[v].latency.at(1, "p50") / 1e3 for v in shadows)
        try:
            self._q.put_nowait((served_variant, served_output, inputs, label, shadows, est, now_s))
        except queue.Full:
            self.dropped += 1
            self.profiler.charge_shadow(est, 0.0)
            return False
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                served, out, inputs, label, shadows, est, now_s = self._q.get(timeout=0.1)
            except queue.Empty:
                continue
            outputs = {served: out}
            t0 = time.perf_counter()
            for v in shadows:
                try:
                    outputs[v] = self.run(v, inputs)
                except Exception as e:  # a failing shadow must never hurt serving
                    self.errors.append(f"{v}: {e}")
            self.profiler.charge_shadow(est, time.perf_counter() - t0)
            self.profiler.record_outputs(outputs, label, now_s)
            self.done += 1
            self._q.task_done()

    def drain(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) until queued shadow work is done."""
        end = time.monotonic() + timeout_s
        while self._q.unfinished_tasks and time.monotonic() < end:
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
