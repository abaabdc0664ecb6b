"""Dynamic batching: one queue and one batcher task per served variant.

The batcher takes a model-call slot first (at most ``concurrency`` calls in flight), then collects
queued requests into one batch: up to ``max_batch`` examples, waiting at most ``max_wait_ms`` after
the oldest request arrived, and never so long that a queued request's deadline would pass before
its batch finishes (by the profiled batch latency). While the model is busy, new requests queue up,
so under load batches fill by themselves even with ``max_wait_ms = 0``. Model calls run in a thread
pool; the event loop only moves requests. Every queued request is answered exactly once: with its
output, with an error, or (``drop_expired``) with "deadline passed" when it can no longer make it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from leanml.serve.config import Batching
from leanml.serve.types import Outcome, Request  # noqa: F401  (Outcome re-exported)
from leanml.serve.variants.base import Variant

T = TypeVar("T")


# ---- the batching rule: shared by this runtime batcher and the simulator (leanml.serve.sim.simulator)
def flush_time(b: Batching, queued_examples: int, oldest_enqueued_s: float, earliest_deadline_s: float | None,
               batch_s: Callable[[int], float]) -> float | None:
    """When the head of a variant's queue goes to the model, on the clock of the times given; None = now.

    At once when the fill window is off (``max_wait_ms = 0``) or ``max_batch`` examples are queued;
    otherwise at the earlier of the oldest request's arrival + ``max_wait_ms`` and the earliest
    deadline minus ``batch_s(n)``, the predicted (p99) seconds of the batch the next request would
    make (``n`` = queued + 1, at most ``max_batch``). A caller whose clock has passed the time flushes.
    """
    if b.max_wait_ms <= 0 or queued_examples >= b.max_batch:
        return None
    t = oldest_enqueued_s + b.max_wait_ms / 1000.0
    if earliest_deadline_s is not None:
        t = min(t, earliest_deadline_s - batch_s(min(b.max_batch, queued_examples + 1)))
    return t


def take_batch(queue: deque[T], max_batch: int, size: Callable[[T], int],
               drop: Callable[[T], bool]) -> tuple[list[T], list[T], int]:
    """Remove the next batch from the head of ``queue`` (FIFO): items while their examples fit in
    ``max_batch`` (the first always goes, whatever its size). An item ``drop`` rejects (its deadline
    passed, its caller left) is removed but not batched. Returns (batch, dropped, examples removed)."""
    batch: list[T] = []
    dropped: list[T] = []
    n = removed = 0
    while queue:
        k = size(queue[0])
        if batch and n + k > max_batch:
            break
        item = queue.popleft()
        removed += k
        if drop(item):
            dropped.append(item)
            continue
        batch.append(item)
        n += k
    return batch, dropped, removed


@dataclass
class Pending:
    request: Request
    parsed: Any
    future: asyncio.Future
    deadline_s: float | None  # monotonic; None = no latency SLO
    enqueued_s: float = field(default_factory=time.perf_counter)


class VariantWorker:
    """Queue + batcher + in-flight accounting for one variant of one deployment."""

    def __init__(self, deployment: str, variant: Variant, batching: Batching,
                 slots: threading.BoundedSemaphore | None = None,
                 on_batch: Callable[[VariantWorker, int, float], None] | None = None) -> None:
        self.deployment, self.variant, self.batching = deployment, variant, batching
        # Model calls run on this variant's own threads (``concurrency`` of them): the same thread calls
        # the model every time, so its OpenMP pool stays warm instead of several pools fighting over
        # the cores. ``slots`` bounds model calls across all variants to the machine's cores.
        self.slots = slots
        self.executor: ThreadPoolExecutor | None = None
        self.on_batch = on_batch  # (worker, batch examples, model seconds), called on the loop
        self.queue: deque[Pending] = deque()
        self.queued_examples = 0
        self.in_flight_examples = 0
        self.in_flight_batches = 0
        self.accepting = True
        self._wake: asyncio.Event | None = None
        self._slot: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._runs: set[asyncio.Task] = set()

    @property
    def name(self) -> str:
        return self.variant.name

    # ---- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the batcher on the running event loop."""
        self._wake, self._slot, self._idle = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self._idle.set()
        self.executor = ThreadPoolExecutor(max_workers=self.batching.concurrency,
                                           thread_name_prefix=f"model-{self.deployment}-{self.name}")
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.deployment}-{self.name}")

    async def drain(self) -> None:
        """Stop accepting, answer everything queued or in flight, then stop the batcher."""
        self.accepting = False
        if self._wake is not None:
            self._wake.set()
        while self.queue or self.in_flight_batches:
            self._idle.clear()
            await self._idle.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.executor is not None:
            self.executor.shutdown(wait=False)

    def update_batching(self, b: Batching) -> None:
        """New limits; queued requests are batched under them. A new ``concurrency`` gets a new thread pool
        (calls running on the old one finish there)."""
        old = self.batching
        self.batching = b
        if self.executor is not None and b.concurrency != old.concurrency:
            prev, self.executor = self.executor, ThreadPoolExecutor(
                max_workers=b.concurrency, thread_name_prefix=f"model-{self.deployment}-{self.name}")
            prev.shutdown(wait=False)
        if self._wake is not None:
            self._wake.set()
        if self._slot is not None:
            self._slot.set()

    # ---- submission -------------------------------------------------------------------------------
    def submit(self, p: Pending) -> bool:
        """Queue a request; False (caller answers 429) when the queue is full or the worker is draining."""
        if not self.accepting or len(self.queue) >= self.batching.max_queue:
            return False
        self.queue.append(p)
        self.queued_examples += p.request.n_examples
        self._idle.clear()
        self._wake.set()
        return True

    def predicted_batch_ms(self, n: int) -> float:
        prof = self.variant.profile
        return prof.latency.at(max(1, n), "p99") if prof is not None else 0.0

    # ---- the batcher ------------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            while not self.queue:
                self._wake.clear()
                await self._wake.wait()
            while self.in_flight_batches >= self.batching.concurrency:
                self._slot.clear()
                await self._slot.wait()
            b = self.batching
            if self._flush_at(b) is not None:
                await self._fill_window(b)
            batch = self._pop(b)
            if batch:
                self._launch(batch)
            elif not self.queue:
                self._maybe_idle()

    def _flush_at(self, b: Batching) -> float | None:
        """`flush_time` for this queue (perf_counter clock)."""
        deadlines = [p.deadline_s for p in self.queue if p.deadline_s is not None]
        return flush_time(b, self.queued_examples, self.queue[0].enqueued_s, min(deadlines) if deadlines else None,
                          lambda n: self.predicted_batch_ms(n) / 1000.0)

    async def _fill_window(self, b: Batching) -> None:
        """Wait for more requests until `flush_time` says go (batch full, max_wait passed, a deadline close)."""
        while self.queue:
            t = self._flush_at(b)
            wait = t - time.perf_counter() if t is not None else 0.0
            if wait <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                return

    def _pop(self, b: Batching) -> list[Pending]:
        now = time.perf_counter()

        def gone(p: Pending) -> bool:  # the caller went away (cancelled), or its deadline passed
            return p.future.done() or (b.drop_expired and p.deadline_s is not None and now > p.deadline_s)

        batch, dropped, removed = take_batch(self.queue, b.max_batch, lambda p: p.request.n_examples, gone)
        self.queued_examples -= removed
        for p in dropped:
            if not p.future.done():
                p.future.set_result(Outcome(503, variant=self.name, outcome="expired",
                                            reason="the request's latency SLO passed while it was queued",
                                            queue_ms=(now - p.enqueued_s) * 1000.0))
        return batch

    def _launch(self, batch: list[Pending]) -> None:
        n = sum(p.request.n_examples for p in batch)
        self.in_flight_batches += 1
        self.in_flight_examples += n
        task = asyncio.get_running_loop().create_task(self._run(batch, n))
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    def _call(self, items: list[Any], knobs: list[dict[str, Any]]) -> tuple[list[Any], float]:
        if self.slots is not None:
            self.slots.acquire()
        try:
            t0 = time.perf_counter()
            out = self.variant.model.run(items, knobs)
            return out, time.perf_counter() - t0
        finally:
            if self.slots is not None:
                self.slots.release()

    async def _run(self, batch: list[Pending], n: int) -> None:
        start = time.perf_counter()
        try:
            outs, model_s = await asyncio.get_running_loop().run_in_executor(
                self.executor, self._call, [p.parsed for p in batch], [p.request.knobs for p in batch])
            if len(outs) != len(batch):
                raise RuntimeError(f"model returned {len(outs)} outputs for {len(batch)} requests")
            err = None
        except Exception as e:  # a failing model answers its batch with 500s and keeps serving
            outs, model_s, err = None, time.perf_counter() - start, f"{type(e).__name__}: {e}"
        finally:
            self.in_flight_batches -= 1
            self.in_flight_examples -= n
            self._slot.set()
        if self.on_batch is not None and err is None:
            self.on_batch(self, n, model_s)
        for i, p in enumerate(batch):
            if p.future.done():
                continue
            q_ms = (start - p.enqueued_s) * 1000.0
            if err is None:
                p.future.set_result(Outcome(200, outs[i], self.name, "ok", None, q_ms, model_s * 1000.0, n))
            else:
                p.future.set_result(Outcome(500, None, self.name, "error", f"model call failed: {err}", q_ms,
                                            model_s * 1000.0, n))
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if not self.queue and not self.in_flight_batches and self._idle is not None:
            self._idle.set()
