"""One batching rule: the runtime's batcher and the simulator call the same code and form the same batches."""

from __future__ import annotations

import asyncio
import time
from collections import deque

import numpy as np
from serve_helpers import flat_profile, gate_variant

from leanml.serve.config import Batching
from leanml.serve.dataplane.batching import flush_time, take_batch
from leanml.serve.dataplane.routing import StaticPolicy
from leanml.serve.dataplane.runtime import Runtime
from leanml.serve.sim.simulator import Simulator
from leanml.serve.types import SLO


def test_flush_time_on_known_numbers():
    b = Batching(max_batch=4, max_wait_ms=100.0)
    p99 = {1: 0.002, 2: 0.003, 3: 0.004, 4: 0.005}.__getitem__
    assert flush_time(Batching(max_batch=4, max_wait_ms=0.0), 1, 10.0, None, p99) is None  # no window: now
    assert flush_time(b, 4, 10.0, None, p99) is None  # full: now
    assert flush_time(b, 2, 10.0, None, p99) == 10.1  # oldest + max_wait
    # a deadline at 10.05 s: flush when the batch the next request makes (3) still finishes in time
    assert flush_time(b, 2, 10.0, 10.05, p99) == 10.05 - 0.004


def test_take_batch_is_fifo_within_max_batch_and_drops_what_it_is_told():
    q = deque([("a", 2), ("b", 1), ("x", 1), ("c", 2), ("d", 1)])
    batch, dropped, removed = take_batch(q, 4, lambda it: it[1], lambda it: it[0] == "x")
    assert [i[0] for i in batch] == ["a", "b"] and [i[0] for i in dropped] == ["x"] and removed == 4
    assert [i[0] for i in q] == ["c", "d"]  # "c" would make 5 > 4: it waits for the next batch
    big = deque([("huge", 9), ("e", 1)])
    assert [i[0] for i in take_batch(big, 4, lambda it: it[1], lambda it: False)[0]] == ["huge"]  # first always goes


def test_simulator_defaults_are_the_runtimes():
    sim = Simulator({"g": flat_profile("g", 0.9, 1.0)}, StaticPolicy(["g"], "g"))
    assert sim.v["g"].batching == Batching()
    assert Batching().max_wait_ms == 0.0


# Bursts of 1, 3, 6 and 9 requests, 2 ms apart inside a burst, 400 ms between bursts; max_batch 4 and a
# 100 ms fill window. A burst smaller than max_batch waits out the window and goes as one batch; a larger
# one goes in full batches as soon as 4 are queued, and its remainder waits out a window. Timing noise
# of tens of ms (a loaded machine) cannot change the sequence, only a delay near the 100 ms window could.
BURSTS = (1, 3, 6, 9)
EXPECTED = [1, 3, 4, 2, 4, 4, 1]


def _arrivals() -> np.ndarray:
    return np.concatenate([k * 0.4 + 0.002 * np.arange(n) for k, n in enumerate(BURSTS)])


def test_runtime_and_simulator_form_the_same_batches_from_one_arrival_list():
    batching = Batching(max_batch=4, max_wait_ms=100.0, max_queue=1000, concurrency=1)
    arrivals = _arrivals()

    sim = Simulator({"g": flat_profile("g", 0.9, 1.0)}, StaticPolicy(["g"], "g"), cores=1, batching=batching)
    rows = sim.run(arrivals, slo=SLO())
    assert all(r["status"] == 200 for r in rows)
    sim_batches = [n for _, _, n in sim.batches]

    v = gate_variant("g", acc=0.9, ms=1.0)
    rt = Runtime(threads=1)
    rt.add_deployment("d", {"g": v}, StaticPolicy(["g"], "g"), batching=batching)

    async def go():
        await rt.start()
        t0 = time.perf_counter()
        tasks = []
        for a in arrivals:
            delay = t0 + a - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(rt.submit("d", [[1.0, 0, 0, 0]])))
        outs = await asyncio.gather(*tasks)
        await rt.stop()
        return outs

    outs = asyncio.run(go())
    assert all(o.status == 200 for o in outs)
    assert sim_batches == EXPECTED
    assert v.model.calls == EXPECTED  # the live batcher's model calls, in order
