"""The runtime's worker for a continuously batched generator: queue, KV admission, deadlines, metrics.

`GenerationWorker` has the interface of `leanml.serve.dataplane.batching.VariantWorker` (``submit``,
``queue``, ``queued_examples``, ``in_flight_examples``, ``start``, ``drain``, ``update_batching``), so
the runtime routes to it and accounts for it like any other variant; the runtime picks it for a
``generate`` variant whose deployment sets ``batching.continuous = true``. Behind it one thread runs a
`ContinuousBatcher` iteration after iteration.

Admission by KV memory (``batching.kv_cache_mb``): a request reserves ``prompt + max_new_tokens``
tokens of KV cache per prompt (after its ``kv_cache_cap`` cut). A request that needs more than the whole
budget, or more prompts than ``max_batch`` rows, can never run: 503 at once. One that fits the budget
but not what is free now waits in the queue, earliest deadline first (``batching.queue = "edf"``, the
default: the TTFT SLO's deadline; ``"fifo"``: arrival order), and the engine prefills in the same order;
when ``max_queue`` requests already wait, it gets 429 with Retry-After. A queued request whose deadline
passes is answered 503 ``expired`` (``drop_expired``). Running requests are never evicted, so memory
pressure refuses; it never crashes.

Per request the answer carries ``ttft_ms`` (arrival to the first token of every prompt) and
``tpot_ms`` (the mean time per output token after the first); both go to the Prometheus histograms
``leanml_serve_ttft_seconds`` and ``leanml_serve_tpot_seconds``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from leanml.serve.config import Batching
from leanml.serve.dataplane.batching import Pending
from leanml.serve.dataplane.generation import ContinuousBatcher, Sequence, kv_bytes_per_token
from leanml.serve.queue_order import insert_by_deadline
from leanml.serve.types import Outcome
from leanml.serve.variants.base import Variant
from leanml.serve.variants.llm import CausalLM


def _due(g: _Group) -> float:
    """A queued request's deadline (perf_counter s); none: last."""
    return g.pending.deadline_s if g.pending.deadline_s is not None else float("inf")


@dataclass(eq=False)
class _Group:
    """One request: its pending entry and one sequence per prompt."""

    pending: Pending
    seqs: list[Sequence]
    left: int = 0  # prompts not finished yet
    max_rows: int = 0  # the largest running batch it was part of

    def __post_init__(self) -> None:
        self.left = len(self.seqs)
        for s in self.seqs:
            s.tag = self
            if self.pending.deadline_s is not None:
                s.deadline_s = self.pending.deadline_s

    @property
    def need(self) -> int:
        return sum(s.reserve for s in self.seqs)


def kv_budget_tokens(lm: CausalLM, kv_cache_mb: float) -> int | None:
    """The KV budget in tokens for ``kv_cache_mb`` MiB of cache (None: unbounded)."""
    if kv_cache_mb <= 0:
        return None
    return max(2, int(kv_cache_mb * 2**20) // kv_bytes_per_token(lm.model))


class GenerationWorker:
    """Continuous batching for one generate variant, behind the runtime's queue and admission."""

    def __init__(self, deployment: str, variant: Variant, batching: Batching,
                 slots: threading.BoundedSemaphore | None = None,
                 on_batch: Callable[..., None] | None = None, metrics=None) -> None:
        if not isinstance(variant.model, CausalLM):
            raise TypeError(f"variant {variant.name!r}: continuous batching needs a CausalLM model, "
                            f"got {type(variant.model).__name__}; set batching.continuous = false")
        self.deployment, self.variant, self.batching = deployment, variant, batching
        self.lm: CausalLM = variant.model
        self.slots, self.on_batch, self.metrics = slots, on_batch, metrics
        self.engine = self._engine(batching)
        self.queue: deque[_Group] = deque()  # waiting for rows / KV memory
        self.active: set[_Group] = set()
        self.queued_examples = self.in_flight_examples = 0
        self.in_flight_batches = 0
        self.accepting = True
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _engine(self, b: Batching) -> ContinuousBatcher:
        return ContinuousBatcher(self.lm, max_batch=b.max_batch, prefill_chunk=b.prefill_chunk,
                                 kv_budget_tokens=kv_budget_tokens(self.lm, b.kv_cache_mb), order=b.queue)

    @property
    def name(self) -> str:
        return self.variant.name

    # ---- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"cb-{self.deployment}-{self.name}")
        self._thread.start()

    async def drain(self) -> None:
        """Stop accepting, answer everything queued or running, then stop the thread."""
        self.accepting = False
        while self.queue or self.active:
            await asyncio.sleep(0.005)
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 30)

    def update_batching(self, b: Batching) -> None:
        """New limits for the next iterations (max_batch, prefill_chunk, KV budget); running rows stay."""
        with self._cv:
            self.batching = b
            e = self.engine
            e.max_batch, e.prefill_chunk, e.edf = b.max_batch, b.prefill_chunk, b.queue == "edf"
            if e.edf:  # switched to EDF: order what already waits once; later arrivals are inserted in order
                self.queue = deque(sorted(self.queue, key=_due))
            e.kv_budget_tokens = kv_budget_tokens(self.lm, b.kv_cache_mb)
            self._cv.notify_all()

    def predicted_batch_ms(self, n: int) -> float:
        prof = self.variant.profile
        return prof.latency.at(max(1, n), "p99") if prof is not None else 0.0

    # ---- submission (event loop) ------------------------------------------------------------------
    def submit(self, p: Pending) -> bool:
        """Queue a request; False (the runtime answers 429) when the queue is full or the worker drains.
        A request that can never fit the KV budget or the batch is answered 503 here."""
        k = p.request.knobs
        mn = int(k.get("min_new_tokens") or 0)
        mx = int(k.get("max_new_tokens") or max(self.lm.default_max_new_tokens, mn))
        g = _Group(p, [self.engine.sequence(self.lm._ids(pr), mx, k.get("kv_cache_cap"), mn) for pr in p.parsed])
        e = self.engine
        if not e.fits_ever(g.need) or len(g.seqs) > self.batching.max_batch:
            why = (f"needs {g.need} KV-cache tokens (prompt + max_new_tokens per prompt) but variant {self.name} "
                   f"holds at most {e.kv_budget_tokens} (batching.kv_cache_mb = {self.batching.kv_cache_mb})"
                   if not e.fits_ever(g.need) else
                   f"has {len(g.seqs)} prompts but the batch holds {self.batching.max_batch} (batching.max_batch)")
            p.future.set_result(Outcome(503, variant=self.name, outcome="refused_kv",
                                        reason=f"request {why}: send fewer or shorter prompts, lower "
                                               f"max_new_tokens or set kv_cache_cap"))
            return True
        with self._cv:
            if not self.accepting or len(self.queue) >= self.batching.max_queue:
                return False
            if self.batching.queue == "edf":  # earliest deadline first; none last; ties in arrival order
                insert_by_deadline(self.queue, g, _due)
            else:
                self.queue.append(g)
            self.queued_examples += len(g.seqs)
            self._cv.notify_all()
        return True

    # ---- the iteration loop (its own thread) ------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self.queue and self.engine.idle:
                    self._cv.wait()
                if self._stop and not self.queue and self.engine.idle:
                    return
                self._admit_locked()
            if not self.engine.idle:
                self._iterate()

    def _admit_locked(self) -> None:
        now = time.perf_counter()
        b = self.batching
        if b.drop_expired:
            for g in [g for g in self.queue if g.pending.deadline_s is not None and now > g.pending.deadline_s]:
                self.queue.remove(g)
                self.queued_examples -= len(g.seqs)
                self._answer(g.pending, Outcome(503, variant=self.name, outcome="expired",
                                                reason="the request's latency SLO passed while it waited for "
                                                       "KV memory or a batch row",
                                                queue_ms=(now - g.pending.enqueued_s) * 1000.0))
        while self.queue and self.engine.admit_now(self.queue[0].seqs):
            g = self.queue.popleft()
            self.queued_examples -= len(g.seqs)
            self.in_flight_examples += len(g.seqs)
            self.active.add(g)
        if self.queue and self.engine.idle:  # limits lowered (update_batching) below what the head needs
            g = self.queue.popleft()
            self.queued_examples -= len(g.seqs)
            self._answer(g.pending, Outcome(503, variant=self.name, outcome="refused_kv",
                                            reason="the request no longer fits the variant's batch or KV "
                                                   "budget (limits were lowered while it waited)"))

    def _iterate(self) -> None:
        if self.slots is not None:
            self.slots.acquire()
        self.in_flight_batches = 1
        t0 = time.perf_counter()
        try:
            done, err = self.engine.step(), None
        except Exception as e:  # a failing model answers its running requests with 500 and keeps serving
            done, err = [], f"{type(e).__name__}: {e}"
        finally:
            self.in_flight_batches = 0
            if self.slots is not None:
                self.slots.release()
        dt = time.perf_counter() - t0
        rows = len(self.engine.rows) + len({id(s) for s in done})
        if err is not None:
            with self._cv:
                for g in list(self.active):
                    self._finish(g, Outcome(500, variant=self.name, outcome="error",
                                            reason=f"model call failed: {err}"))
                self.engine = self._engine(self.batching)
            return
        if self.on_batch is not None and self._loop is not None and rows:
            self._loop.call_soon_threadsafe(self.on_batch, self, rows, dt)
        for g in self.active:
            g.max_rows = max(g.max_rows, rows)
        with self._cv:
            for s in done:
                g: _Group = s.tag
                g.left -= 1
                if g.left == 0:
                    self._finish(g, self._outcome(g))

    def _outcome(self, g: _Group) -> Outcome:
        p, eos = g.pending, set(self.lm.eos_ids)
        texts = [self.lm.tok.decode(s.tokens[:-1] if s.tokens and s.tokens[-1] in eos else s.tokens,
                                    skip_special_tokens=True) for s in g.seqs]
        first = max(s.first_token_s for s in g.seqs)
        done = max(s.done_s for s in g.seqs)
        n = max(len(s.tokens) for s in g.seqs)
        ttft = (first - p.enqueued_s) * 1000.0
        tpot = (done - first) * 1000.0 / (n - 1) if n > 1 else None
        admitted = min(s.admitted_s for s in g.seqs)
        out = {"texts": texts, "new_tokens": [len(s.tokens) for s in g.seqs], "ttft_ms": round(ttft, 3),
               "tpot_ms": round(tpot, 3) if tpot is not None else None}
        if self.metrics is not None and self._loop is not None:
            m, dep = self.metrics, self.deployment
            self._loop.call_soon_threadsafe(m.ttft.labels(dep, self.name).observe, ttft / 1000.0)
            if tpot is not None:
                self._loop.call_soon_threadsafe(m.tpot.labels(dep, self.name).observe, tpot / 1000.0)
        return Outcome(200, out, self.name, "ok", None, (admitted - p.enqueued_s) * 1000.0,
                       (done - admitted) * 1000.0, g.max_rows)

    def _finish(self, g: _Group, out: Outcome) -> None:
        self.active.discard(g)
        self.in_flight_examples -= len(g.seqs)
        self._answer(g.pending, out)

    def _answer(self, p: Pending, out: Outcome) -> None:
        def resolve() -> None:
            if not p.future.done():
                p.future.set_result(out)

        if self._loop is not None:
            self._loop.call_soon_threadsafe(resolve)
