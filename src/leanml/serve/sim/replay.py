"""Open-loop trace replay against a live HTTP server on loopback, and the live planner controller.

`replay_http` sends one request per trace arrival at ``t0 + arrival`` (open loop: a slow server
never slows the sender), bounded by ``max_requests`` and ``max_duration_s``, and records per request
when it was due, when it was sent, the status, latency, variant, batch size and correctness (when the
payload carries a label). `Controller` drives a planned policy (`leanml.serve.control.policies_adaptive`)
inside a live `Runtime`: ``tick`` runs every ``tick_s`` in a worker thread (a MILP solve must not
block the event loop), its reconfigurations are applied on the loop, and every answer is fed to
``policy.observe`` (online profiling; shadow runs go through a budgeted `ShadowRunner`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Payload:
    """One request to send: the URL path, the JSON body, and its ground-truth label (or None)."""

    path: str
    body: dict[str, Any]
    label: Any = None


async def _replay_async(
    url: str,
    arrival_s: np.ndarray,
    make_payload: Callable[[int], Payload],
    *,
    max_requests: int,
    max_duration_s: float,
    timeout_s: float,
    on_start: Callable[[], None] | None = None,
    warmup_connections: int = 16,
) -> list[dict[str, Any]]:
    import httpx

    n = min(len(arrival_s), max_requests)
    rows: list[dict[str, Any] | None] = [None] * n
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        payloads = [make_payload(i) for i in range(n)]  # built before the clock starts

        async def one(i: int, p: Payload, due: float, t0: float) -> None:
            sent = time.perf_counter() - t0
            row = {"id": i, "due_s": due, "sent_s": sent, "label": p.label}
            try:
                r = await client.post(p.path, json=p.body)
                done = time.perf_counter() - t0
                row.update(status=r.status_code, latency_ms=(done - sent) * 1e3, finish_s=done)
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                row.update(variant=body.get("request_variant"), batch_size=body.get("batch_size"),
                           queue_ms=body.get("queue_ms"), model_ms=body.get("model_ms"),
                           reason=body.get("reason") or body.get("detail"))
                if r.status_code == 200 and p.label is not None and "labels" in body:
                    lab = p.label if isinstance(p.label, list) else [p.label]
                    row["correct"] = float(np.mean([a == b for a, b in zip(body["labels"], lab, strict=False)]))
            except httpx.HTTPError as e:
                row.update(status=-1, latency_ms=float("nan"), finish_s=time.perf_counter() - t0,
                           reason=f"{type(e).__name__}: {e}")
            rows[i] = row

        if warmup_connections > 0:  # open pooled connections before the clock starts (any status will do)
            async def poke() -> None:
                with contextlib.suppress(httpx.HTTPError):
                    await client.get("/healthz")

            await asyncio.gather(*(poke() for _ in range(min(warmup_connections, n))))
        if on_start is not None:
            on_start()
        t0 = time.perf_counter()
        tasks = []
        base = float(arrival_s[0]) if n else 0.0
        for i in range(n):
            due = float(arrival_s[i]) - base
            if due > max_duration_s:
                break
            wait = due - (time.perf_counter() - t0)
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(one(i, payloads[i], due, t0)))
        if tasks:
            await asyncio.gather(*tasks)
    return [r for r in rows if r is not None]


def replay_http(
    url: str,
    arrival_s: np.ndarray,
    make_payload: Callable[[int], Payload],
    *,
    max_requests: int = 10_000,
    max_duration_s: float = 120.0,
    timeout_s: float = 30.0,
    on_start: Callable[[], None] | None = None,
    warmup_connections: int = 16,
) -> list[dict[str, Any]]:
    """Replay arrivals (seconds, from any origin) open-loop against ``url``; one row per request sent."""
    if not url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]")):
        raise ValueError(f"replay only targets loopback servers, got {url!r}")
    if max_requests < 1 or max_duration_s <= 0 or timeout_s <= 0:
        raise ValueError("max_requests must be >= 1, max_duration_s and timeout_s > 0")
    arrival_s = np.asarray(arrival_s, dtype=np.float64)
    if len(arrival_s) and np.any(np.diff(arrival_s) < 0):
        raise ValueError("arrival times must be non-decreasing")
    return asyncio.run(_replay_async(url, arrival_s, make_payload, max_requests=max_requests,
                                     max_duration_s=max_duration_s, timeout_s=timeout_s, on_start=on_start,
                                     warmup_connections=warmup_connections))


# ---------------------------------------------------------------- the live controller
class RuntimeSurface:
    """What a planned policy drives, on a live runtime: the same methods the simulator offers."""

    def __init__(self, runtime: Any, deployment: str, loop: asyncio.AbstractEventLoop,
                 shadow_budget_queue: int = 64) -> None:
        self.runtime, self.deployment, self.loop = runtime, deployment, loop
        self.cores = runtime.threads
        self.t0 = time.perf_counter()
        self.reconfigs: list[dict[str, Any]] = []
        self._shadow = None
        self._shadow_queue = shadow_budget_queue

    @property
    def now(self) -> float:
        return time.perf_counter()

    def state(self):
        return self.runtime.state(self.deployment)

    def _on_loop(self, fn: Callable[[], None]) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            fn()
        else:
            self.loop.call_soon_threadsafe(fn)

    def set_plan(self, plan: Any) -> None:
        from leanml.serve.sim.simulator import _plan_text

        self.reconfigs.append({"time_s": time.perf_counter() - self.t0, "what": "plan", "detail": _plan_text(plan)})
        self._on_loop(lambda: self.runtime.set_plan(self.deployment, plan))

    def set_batching(self, variant: str, max_batch: int, max_wait_ms: float, concurrency: int) -> None:
        from dataclasses import replace

        w = self.runtime.deployment(self.deployment).workers.get(variant)
        if w is None:
            return
        new = replace(w.batching, max_batch=int(max_batch), max_wait_ms=float(max_wait_ms),
                      concurrency=int(concurrency))
        if new == w.batching:
            return
        self.reconfigs.append({"time_s": time.perf_counter() - self.t0, "what": "batching",
                               "detail": f"{variant}: batch {max_batch}, wait {max_wait_ms:.1f} ms, "
                                         f"workers {concurrency}"})
        self._on_loop(lambda: self.runtime.set_batching(self.deployment, new, variant=variant))

    def submit_shadow(self, profiler: Any, request: Any, outcome: Any) -> None:
        """Shadow-run a served request on other variants, off the event loop and within the budget."""
        from leanml.serve.control.profiler import ShadowRunner

        if self._shadow is None:
            dep = self.runtime.deployment(self.deployment)

            def run(v: str, inputs: Any) -> Any:
                model = dep.workers[v].variant.model
                return model.run([model.parse(inputs)], [{}])[0]

            self._shadow = ShadowRunner(profiler, run, max_queue=self._shadow_queue)
        self._shadow.submit(outcome.variant, outcome.output, request.inputs, request.label,
                            time.perf_counter())

    def close(self) -> None:
        if self._shadow is not None:
            self._shadow.close()


class Controller:
    """Attaches a policy's ``tick``/``observe`` hooks to a live runtime deployment.

    With ``policy=None`` it drives whatever policy the deployment has at the moment (so a policy
    swapped in by ``PUT /v1/config`` is driven too).
    """

    def __init__(self, runtime: Any, deployment: str, policy: Any = None, tick_s: float = 1.0) -> None:
        if tick_s <= 0:
            raise ValueError(f"tick_s must be > 0, got {tick_s}")
        self.runtime, self.deployment, self._policy, self.tick_s = runtime, deployment, policy, tick_s
        self.surface: RuntimeSurface | None = None
        self._task: asyncio.Task | None = None
        self._lock = threading.Lock()
        self.errors: list[str] = []
        runtime.add_observer(self._observe)

    @property
    def policy(self) -> Any:
        if self._policy is not None:
            return self._policy
        dep = self.runtime.deployments.get(self.deployment)
        return dep.policy if dep is not None else None

    def start_on_loop(self) -> None:
        """Start ticking on the running event loop (call from the loop; idempotent)."""
        if self._task is None:
            loop = asyncio.get_running_loop()
            self.surface = RuntimeSurface(self.runtime, self.deployment, loop)
            self._task = loop.create_task(self._loop())

    def _observe(self, request: Any, outcome: Any) -> None:
        if self._task is None:
            self.start_on_loop()
        if request.deployment == self.deployment and hasattr(self.policy, "observe"):
            try:
                self.policy.observe(request, outcome, self.surface)
            except Exception as e:  # never break serving
                self.errors.append(f"observe: {type(e).__name__}: {e}")

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.policy is not None:
                try:
                    await loop.run_in_executor(None, self._tick)
                except Exception as e:
                    self.errors.append(f"tick: {type(e).__name__}: {e}")
            await asyncio.sleep(self.tick_s)

    def _tick(self) -> None:
        with self._lock:
            pol = self.policy
            if pol is not None and hasattr(pol, "tick"):
                pol.tick(time.perf_counter(), self.surface)

    def stop(self) -> None:
        if self._task is not None and not self.surface.loop.is_closed():
            self.surface.loop.call_soon_threadsafe(self._task.cancel)
        if self.surface is not None:
            self.surface.close()


def attach_controllers(runtime: Any, tick_s: float = 1.0) -> list[Controller]:
    """A `Controller` for every deployment of ``runtime`` (what `leanml serve start` needs for planned
    policies such as ``adaptive`` or ``proteus``: without it they route but never re-plan)."""
    return [Controller(runtime, name, None, tick_s) for name in runtime.deployments]

