"""The live Controller ticks a policy in a worker thread while the event loop routes: no race between them.

Issue 18: `AdaptivePolicy.tick` iterated the per-class arrival dict that ``route`` grows when a request
class first appears, so a tick could raise "dictionary changed size during iteration"; the Controller
caught it into ``errors`` and that period's re-plan was silently skipped. Here many new request classes
arrive on the loop while ticks run; every tick must finish and re-plan (run the planner), with no error.
"""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest
from serve_helpers import gate_variant

from leanml.serve.config import Batching
from leanml.serve.control.controller import Controller
from leanml.serve.control.policies_adaptive import AdaptivePolicy, ProteusPolicy
from leanml.serve.dataplane.runtime import Runtime


def _counting(cls):
    class Counting(cls):
        """The policy, counting the ticks that returned (raised ones are the Controller's errors)."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.ticks_done = 0
            self.tick_threads: set[str] = set()

        def tick(self, now, surface):
            super().tick(now, surface)
            self.ticks_done += 1
            self.tick_threads.add(threading.current_thread().name)

    return Counting


def fixed_planner(variants, calls):
    """A stand-in for the MILP that returns one real plan (solved once, here) and counts its calls.

    With the real solver a tick's time is the MILP's (0.1-1 s for hundreds of classes) and the window
    where loop and tick touch the same state is microseconds of it, so a failure would be luck; with
    this one, a tick is the policy's own bookkeeping over the classes, which is where the race was.
    """
    from leanml.serve.control import policies_adaptive as pa

    real = pa.plan({n: v.profile for n, v in variants.items()}, [pa.RequestClass("default", 1.0, 100.0)],
                   pa.PlannerConfig(batch_sizes=(1,), max_workers=1), [pa.PlannerDevice("local", 1)])

    def fake(profiles, classes, cfg, devices):
        calls.append(len(classes))
        return real

    return fake


@pytest.mark.parametrize("cls", [AdaptivePolicy, ProteusPolicy], ids=lambda c: c.name)
def test_new_request_classes_while_ticks_run_never_skip_a_replan(cls, monkeypatch):
    from leanml.serve.control import policies_adaptive as pa

    variants = {"acc": gate_variant("acc", acc=0.9, ms=1.0), "fast": gate_variant("fast", acc=0.8, ms=0.5)}
    calls: list[int] = []
    monkeypatch.setattr(pa, "plan", fixed_planner(variants, calls))
    # period_s below tick_s: every tick is due to re-plan
    pol = _counting(cls)(list(variants), period_s=1e-4, batch_sizes=(1,), min_rate_rps=0.01, admission=False,
                         accuracy_target=0.85)
    rt = Runtime(threads=1)
    rt.add_deployment("d", variants, pol, batching=Batching(max_batch=8, max_queue=100_000))
    ctl = Controller(rt, "d", pol, tick_s=0.001)

    async def go():
        await rt.start()
        ctl.start_on_loop()
        tasks, j = [], 0
        while (pol.ticks_done < 8 or j < 500) and j < 3000 and not ctl.errors:
            # a stream of new classes; the loop stays busy routing them while ticks run
            tasks.append(asyncio.create_task(rt.submit("d", [[1.0, 0, 0, 0]], request_class=f"c{j}")))
            j += 1
            if j % 8 == 0:
                await asyncio.sleep(0)
        outs = await asyncio.gather(*tasks)
        ctl.stop()
        await asyncio.sleep(0.05)
        await rt.stop()
        return outs

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so loop and tick interleave inside each other's loops
    try:
        outs = asyncio.run(go())
    finally:
        sys.setswitchinterval(old)
    assert all(o.status == 200 for o in outs)
    assert ctl.errors == [], ctl.errors[:3]
    assert pol.ticks_done >= 8 and threading.main_thread().name not in pol.tick_threads
    assert len(calls) == pol.ticks_done  # every tick re-planned: none was cut short by an error
    assert max(calls) > 100  # and the plans saw the classes that arrived
