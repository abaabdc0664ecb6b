"""Discrete-event simulator of the serving runtime, driven by the same profiles and routing policies.

It mirrors `leanml.serve.dataplane.batching` / `leanml.serve.dataplane.runtime`: per-variant FIFO queues (``max_queue``,
else 429), a batcher per variant holding at most ``concurrency`` model calls in flight, and the
runtime's own batching rule, called, not copied (`flush_time`: until ``max_batch`` examples,
``max_wait_ms`` after the oldest request, or the earliest deadline minus the profiled p99 of the
batch; `take_batch`: FIFO up to ``max_batch``, expired requests dropped with 503), with the same
`leanml.serve.config.Batching` settings and defaults, and one shared pool of
``cores`` model-call threads (batches wait FIFO for a free one). Routing calls ``policy.route(request,
state)`` with the same `ServeState` the runtime builds; a policy may also have ``tick(now, surface)``
(periodic re-planning: it calls ``surface.set_batching`` / ``surface.set_plan``) and ``observe(request,
outcome)`` (online profiling; shadow runs go through ``surface.submit_shadow``).

Service times are drawn from a lognormal with the profile's p50 and p99 at the batch size formed
(``true_profiles``, which may differ from what the policy sees, e.g. to inject drift). For text
generators (profiles with ``extra.generation``) requests carry ``max_new_tokens`` (``knobs_for``) and a
batch's time is scaled from the profile's N tokens to the longest request in it, as batched greedy
decoding runs until its last row is done: first-token time + (tokens - 1) steps, fitted per batch size.
This is exact for requests that generate exactly ``max_new_tokens`` (``min_new_tokens`` = max, as the
replay sends them) and an upper bound for requests that may stop early at end-of-sequence. The request
path before routing (HTTP, JSON, the event loop) is one FIFO server of ``overhead_ms`` per request,
calibrated from a live run. Each request
draws one uniform ``u``; variant v answers correctly iff ``u < accuracy_v(t)`` (common random numbers:
a weaker variant's errors include a stronger one's, as measured agreement usually shows; wrong
answers differ between variants). Shadow runs
are budgeted by the profiler but not charged to the simulated cores (a stated simplification).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from leanml.serve.config import Batching
from leanml.serve.control.planner_types import _plan_text
from leanml.serve.control.queueing import Z99
from leanml.serve.dataplane.batching import flush_time, take_batch
from leanml.serve.policy import ControlSurface, Policy
from leanml.serve.types import REFUSE_OVERLOADED, SLO, Outcome, Request, ServeState, VariantProfile


@dataclass
class _Q:
    req: Request
    deadline: float | None  # from when the runtime took the request (after the request path)
    u: float
    enq: float = 0.0


@dataclass
class _VState:
    batching: Batching
    queue: deque = field(default_factory=deque)
    queued: int = 0
    in_flight_batches: int = 0
    in_flight_examples: int = 0


class Simulator(ControlSurface):
    """Replays arrival times through queues, batchers and a policy; returns one row per request.

    It is the `ControlSurface` its policy's ``tick``/``observe`` drive, as a live runtime's is."""

    def __init__(
        self,
        profiles: dict[str, VariantProfile],
        policy: Policy,
        *,
        cores: int = 2,
        batching: dict[str, Batching] | Batching | None = None,
        true_profiles: dict[str, VariantProfile] | None = None,
        accuracy_at: Callable[[str, float], float] | None = None,
        tick_s: float = 1.0,
        n_classes: int = 10,
        overhead_ms: float = 0.0,
        seed: int = 0,
    ) -> None:
        if cores < 1:
            raise ValueError(f"cores must be >= 1, got {cores}")
        if overhead_ms < 0:
            raise ValueError(f"overhead_ms must be >= 0, got {overhead_ms}")
        self.overhead_s = overhead_ms / 1e3
        self._front_free = 0.0
        self.profiles = dict(profiles)
        self.true = dict(true_profiles or profiles)
        self.policy = policy
        self.cores = cores
        b = batching or Batching()
        self.v = {n: _VState(b[n] if isinstance(b, dict) else b) for n in profiles}
        self.accuracy_at = accuracy_at or (lambda v, t: self.true[v].accuracy)
        self.tick_s = tick_s
        self.n_classes = n_classes
        self.rng = np.random.default_rng(seed)
        self.now = 0.0
        self.plan: Any = None
        self._events: list = []
        self._seq = itertools.count()
        self._free_cores = cores
        self._core_wait: deque = deque()
        self.rows: list[dict[str, Any]] = []
        self.reconfigs: list[dict[str, Any]] = []
        self.shadow_runs = 0
        self.batches: list[tuple[float, str, int]] = []  # (start time, variant, examples) per model call

    # ---- the surface policies drive (same names as the runtime hooks) --------------------------------
    def state(self) -> ServeState:
        return ServeState(
            profiles=self.profiles,
            queue_depth={n: s.queued for n, s in self.v.items()},
            max_batch={n: s.batching.max_batch for n, s in self.v.items()},
            now_s=self.now, plan=self.plan,
            in_flight={n: s.in_flight_examples for n, s in self.v.items()},
            max_wait_ms={n: s.batching.max_wait_ms for n, s in self.v.items()},
            concurrency={n: s.batching.concurrency for n, s in self.v.items()},
        )

    def set_plan(self, plan: Any) -> None:
        self.plan = plan
        self.reconfigs.append({"time_s": self.now, "what": "plan", "detail": _plan_text(plan)})

    def set_batching(self, variant: str, max_batch: int, max_wait_ms: float, concurrency: int) -> None:
        s = self.v[variant]
        new = Batching(int(max_batch), float(max_wait_ms), s.batching.max_queue, int(concurrency),
                       s.batching.drop_expired)
        if new != s.batching:
            s.batching = new
            self.reconfigs.append({"time_s": self.now, "what": "batching",
                                   "detail": f"{variant}: batch {max_batch}, wait {max_wait_ms:.1f} ms, "
                                             f"workers {concurrency}"})
            self._dispatch(variant)

    def variants(self) -> list[str]:
        return list(self.v)

    def submit_shadow(self, profiler: Any, request: Request, outcome: Outcome) -> None:
        """Shadow-run a served request on the variants the profiler picks (outputs drawn like served ones)."""
        shadows = profiler.choose_shadows(outcome.variant)
        if not shadows:
            return
        u, truth = request.inputs["u"], request.inputs["truth"]
        outs = {outcome.variant: outcome.output}
        for v in shadows:
            outs[v] = self._output(v, u, truth)
            self.shadow_runs += 1
        profiler.record_outputs(outs, request.label, self.now)

    # ---- running ------------------------------------------------------------------------------------
    def run(
        self,
        arrival_s: np.ndarray,
        *,
        slo: SLO,
        request_class: Callable[[int], str] | None = None,
        slo_for: Callable[[int], SLO] | None = None,
        send_labels: bool = False,
        knobs_for: Callable[[int], dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """Simulate every arrival; one row per request (status, variant, latency, correctness, energy).

        ``knobs_for(i)``: request i's generation knobs (``max_new_tokens``), for text generators."""
        arrival_s = np.asarray(arrival_s, dtype=np.float64)
        for i, t in enumerate(arrival_s):
            self._push(float(t), "arrive", i)
        if len(arrival_s):
            self._push(0.0, "tick", None)
        self._end = float(arrival_s[-1]) if len(arrival_s) else 0.0
        self._slo, self._cls, self._slo_for, self._labels = slo, request_class, slo_for, send_labels
        self._knobs = knobs_for
        while self._events:
            t, _, kind, data = heapq.heappop(self._events)
            self.now = t
            if kind == "arrive":
                self._arrive(data)
            elif kind == "route":
                self._route(*data)
            elif kind == "done":
                self._done(*data)
            elif kind == "flush":
                self._dispatch(data)
            elif kind == "tick":
                self.policy.tick(self.now, self)
                if self.now + self.tick_s <= self._end:
                    self._push(self.now + self.tick_s, "tick", None)
        self.rows.sort(key=lambda r: r["id"])
        return self.rows

    def _push(self, t: float, kind: str, data: Any) -> None:
        heapq.heappush(self._events, (t, next(self._seq), kind, data))

    def _output(self, v: str, u: float, truth: int) -> int:
        if u < self.accuracy_at(v, self.now):
            return truth
        salt = sum(map(ord, v))  # wrong answers differ between variants (they rarely agree on a mistake)
        return (truth + 1 + (int(u * 1e6) + salt) % (self.n_classes - 1)) % self.n_classes

    def _arrive(self, i: int) -> None:
        slo = self._slo_for(i) if self._slo_for else self._slo
        truth = int(self.rng.integers(self.n_classes))
        u = float(self.rng.random())
        req = Request(i, "sim", {"u": u, "truth": truth}, slo, self.now,
                      self._cls(i) if self._cls else "default", truth if self._labels else None,
                      knobs=dict(self._knobs(i)) if self._knobs else {})
        if self.overhead_s > 0:  # the request path before routing (HTTP, parsing): one FIFO server
            self._front_free = max(self.now, self._front_free) + self.overhead_s
            self._push(self._front_free, "route", (req, u))
            return
        self._route(req, u)

    def _route(self, req: Request, u: float) -> None:
        slo = req.slo
        self.policy.on_arrival(req, self.now)
        v = self.policy.route(req, self.state())
        if v is None or v not in self.v:
            kind = self.policy.refusal_kind()
            st, oc = (429, "refused_overload") if kind == REFUSE_OVERLOADED else (503, "refused_slo")
            self._finish(req, Outcome(st, outcome=oc, reason=self.policy.reason()), u)
            return
        s = self.v[v]
        if len(s.queue) >= s.batching.max_queue:
            self._finish(req, Outcome(429, variant=v, outcome="refused_overload", reason="queue full"), u)
            return
        dl = self.now + slo.latency_ms / 1e3 if slo.latency_ms is not None else None
        s.queue.append(_Q(req, dl, u, self.now))
        s.queued += req.n_examples
        self._dispatch(v)

    def _dispatch(self, v: str) -> None:
        s = self.v[v]
        b = s.batching
        prof = self.profiles[v]
        while s.queue and s.in_flight_batches < b.concurrency:
            dls = [q.deadline for q in s.queue if q.deadline is not None]
            t = flush_time(b, s.queued, s.queue[0].enq, min(dls) if dls else None,
                           lambda n: prof.latency.at(n, "p99") / 1e3)
            if t is not None and t > self.now + 1e-12:
                self._push(t, "flush", v)
                return
            batch, dropped, removed = take_batch(
                s.queue, b.max_batch, lambda q: q.req.n_examples,
                lambda q: b.drop_expired and q.deadline is not None and self.now > q.deadline)
            s.queued -= removed
            for q in dropped:
                self._finish(q.req, Outcome(503, variant=v, outcome="expired", reason="deadline passed",
                                            queue_ms=(self.now - q.req.arrival_s) * 1e3), q.u)
            if not batch:
                continue
            n = sum(q.req.n_examples for q in batch)
            s.in_flight_batches += 1
            s.in_flight_examples += n
            if self._free_cores > 0:
                self._free_cores -= 1
                self._start(v, batch, n)
            else:
                self._core_wait.append((v, batch, n))

    def _service_s(self, v: str, n: int, tokens: float | None = None) -> float:
        lat = self.true[v].latency
        p50, p99 = lat.at(n, "p50"), max(lat.at(n, "p99"), lat.at(n, "p50"))
        sigma = math.log(p99 / p50) / Z99 if p50 > 0 and p99 > p50 else 0.0
        scale = self.true[v].generation_scale(n, tokens)
        return scale * p50 * math.exp(sigma * self.rng.standard_normal()) / 1e3

    def _start(self, v: str, batch: list[_Q], n: int) -> None:
        toks = [q.req.knobs["max_new_tokens"] for q in batch if q.req.knobs.get("max_new_tokens") is not None]
        d = self._service_s(v, n, max(toks) if toks else None)
        self.batches.append((self.now, v, n))
        self._push(self.now + d, "done", (v, batch, n, self.now, d))

    def _done(self, v: str, batch: list[_Q], n: int, start: float, dur: float) -> None:
        s = self.v[v]
        s.in_flight_batches -= 1
        s.in_flight_examples -= n
        for q in batch:
            out = Outcome(200, self._output(v, q.u, q.req.inputs["truth"]), v, "ok", None,
                             (start - q.req.arrival_s) * 1e3, dur * 1e3, n)
            self._finish(q.req, out, q.u)
        if self._core_wait:
            nv, nb, nn = self._core_wait.popleft()
            self._start(nv, nb, nn)
        else:
            self._free_cores += 1
        self._dispatch(v)

    def _finish(self, req: Request, out: Outcome, u: float) -> None:
        lat = (self.now - req.arrival_s) * 1e3
        ok = out.status == 200
        v = out.variant if ok else None
        slo_ms = req.slo.latency_ms
        self.rows.append({
            "id": req.id, "arrival_s": req.arrival_s, "finish_s": self.now, "status": out.status,
            "outcome": out.outcome, "variant": out.variant, "reason": out.reason,
            "latency_ms": lat if ok else float("nan"),
            "queue_ms": out.queue_ms, "model_ms": out.model_ms, "batch_size": out.batch_size,
            "request_class": req.request_class, "slo_ms": slo_ms if slo_ms is not None else float("nan"),
            "met_slo": bool(ok and (slo_ms is None or lat <= slo_ms)),
            "correct": float(out.output == req.inputs["truth"]) if ok else float("nan"),
            "accuracy": self.accuracy_at(v, req.arrival_s) if ok else float("nan"),
            "energy_j": (self.true[v].energy_j_per_request if ok and self.true[v].energy_j_per_request is not None
                         else float("nan")),
            **({"max_new_tokens": int(req.knobs["max_new_tokens"])} if req.knobs.get("max_new_tokens") else {}),
        })
        self.policy.observe(req, out, self)


def request_path_delays_ms(arrival_s: np.ndarray, service_ms: float) -> np.ndarray:
    """Time each request spends in a FIFO request path of constant ``service_ms`` (Lindley recursion)."""
    t = np.asarray(arrival_s, dtype=np.float64)
    s = service_ms / 1e3
    out = np.empty(len(t))
    free = -math.inf
    for i, a in enumerate(t):
        free = max(a, free) + s
        out[i] = free - a
    return out * 1e3


def fit_request_path_ms(arrival_s: np.ndarray, path_ms: np.ndarray, tol_ms: float = 1e-3) -> float:
    """The per-request service time of a FIFO request path that reproduces the *mean* observed path time.

    ``path_ms`` is what clients saw beyond the runtime's own queue and model time (HTTP, parsing, the
    event loop, and the backlog in front of them) for requests arriving at ``arrival_s``; NaN where it
    is unknown (refused requests): those still pass through the path but are not averaged. The mean
    delay of a FIFO server grows monotonically with its service time, so bisection finds the one
    constant service time whose simulated mean matches; the tail (p99) is not fitted, which is what
    lets a replay check it. (The 10th percentile used before is the path's cost with no backlog: it
    ignored that the path serializes requests, and the simulated tails came out 2-3x too short.)
    """
    t = np.asarray(arrival_s, dtype=np.float64)
    y = np.asarray(path_ms, dtype=np.float64)
    if len(t) != len(y) or not len(t):
        raise ValueError(f"fit_request_path_ms: need equal, non-empty arrays, got {len(t)} and {len(y)}")
    order = np.argsort(t, kind="stable")
    t, y = t[order], y[order]
    seen = np.isfinite(y)
    if not seen.any():
        raise ValueError("fit_request_path_ms: no finite path time to fit")
    target = float(np.mean(y[seen]))
    if target <= 0:
        return 0.0
    lo, hi = 0.0, target  # a constant service of the mean itself can only overshoot (waiting >= 0)
    while hi - lo > tol_ms:
        mid = (lo + hi) / 2
        if request_path_delays_ms(t, mid)[seen].mean() < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2

