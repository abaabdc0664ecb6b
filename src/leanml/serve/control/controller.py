"""The live planner controller: drives a planned policy's ``tick``/``observe`` hooks inside a live `Runtime`.

`Controller` drives a planned policy (`leanml.serve.control.policies_adaptive`) inside a live
`Runtime`: ``tick`` runs every ``tick_s`` in a worker thread (a MILP solve must not block the event
loop), its reconfigurations are applied on the loop through a `RuntimeSurface`, and every answer is
fed to ``policy.observe`` (online profiling; shadow runs go through a budgeted `ShadowRunner`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from leanml.serve.policy import ControlSurface, Policy


class RuntimeSurface(ControlSurface):
    """What a planned policy drives, on a live runtime: the same `ControlSurface` the simulator is."""

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
        from leanml.serve.control.planner_types import _plan_text

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

    def __init__(self, runtime: Any, deployment: str, policy: Policy | None = None, tick_s: float = 1.0) -> None:
        if tick_s <= 0:
            raise ValueError(f"tick_s must be > 0, got {tick_s}")
        self.runtime, self.deployment, self._policy, self.tick_s = runtime, deployment, policy, tick_s
        self.surface: RuntimeSurface | None = None
        self._task: asyncio.Task | None = None
        self._lock = threading.Lock()
        self.errors: list[str] = []
        self.ticks = 0  # ticks that returned (a raising one is in ``errors``)
        runtime.add_observer(self._observe)

    @property
    def policy(self) -> Policy | None:
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
        pol = self.policy
        if request.deployment == self.deployment and pol is not None:
            try:
                pol.observe(request, outcome, self.surface)
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
            if pol is not None:
                pol.tick(time.perf_counter(), self.surface)
                self.ticks += 1

    def stop(self) -> None:
        if self._task is not None and not self.surface.loop.is_closed():
            self.surface.loop.call_soon_threadsafe(self._task.cancel)
        if self.surface is not None:
            self.surface.close()


def attach_controllers(runtime: Any, tick_s: float = 1.0) -> list[Controller]:
    """A `Controller` for every deployment of ``runtime`` (what `leanml serve start` needs for planned
    policies such as ``adaptive`` or ``proteus``: without it they route but never re-plan)."""
    return [Controller(runtime, name, None, tick_s) for name in runtime.deployments]

