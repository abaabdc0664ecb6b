"""Placement: respects memory capacities and beats round-robin on a constructed heterogeneous case."""

from __future__ import annotations

import pytest
import torch

from leanml.hw import WorkItem, get_system, greedy_lpt, milp, place, round_robin, trace_inference
from leanml.hw.errors import HwError
from leanml.models import build_cnn

GB = 1e9


def _items() -> list[WorkItem]:
    # H200 is ~8x faster than the L4 on these items; round-robin gives the L4 half of them.
    items = []
    for i, (t, mem) in enumerate([(8.0, 30 * GB), (6.0, 10 * GB), (5.0, 5 * GB), (4.0, 20 * GB), (3.0, 2 * GB),
                                  (2.0, 2 * GB), (1.0, 1 * GB), (1.0, 1 * GB)]):
        items.append(WorkItem(f"w{i}", {"h200": t / 8, "l4": t}, mem,
                              {"h200": 300 * t / 8, "l4": 60 * t}))
    return items


def test_optimizers_beat_round_robin_and_respect_capacity():
    system = get_system("mixed_h200_l4")
    items = _items()
    rr, lpt, opt = round_robin(items, system), greedy_lpt(items, system), milp(items, system)
    assert opt.makespan_s < rr.makespan_s and lpt.makespan_s < rr.makespan_s
    assert opt.makespan_s <= lpt.makespan_s + 1e-9
    assert opt.optimal
    for p in (rr, lpt, opt):
        assert set(p.assignment) == {it.name for it in items}
        for dev, used in p.memory_bytes.items():
            assert used <= system.instances[dev].main_memory.capacity
    # the 30 GB item cannot live on the 24 GB L4
    assert opt.assignment["w0"] == "h200" and lpt.assignment["w0"] == "h200"
    assert place(items, system).makespan_s == pytest.approx(opt.makespan_s)


def test_capacity_forces_spill_and_infeasible_raises():
    system = get_system("mixed_h200_l4")
    # two items of 100 GB: both cannot sit on the 141 GB H200, and the L4 holds neither
    big = [WorkItem(f"b{i}", {"h200": 1.0, "l4": 2.0}, 100 * GB) for i in range(2)]
    with pytest.raises(HwError, match="feasible|fits on no device"):
        milp(big, system)
    with pytest.raises(HwError, match="fits on no device"):
        greedy_lpt(big, system)
    # memory pressure moves the second item to the slower device even though it is slower there
    two = [WorkItem("a", {"h200": 1.0, "l4": 8.0}, 125 * GB), WorkItem("b", {"h200": 1.0, "l4": 8.0}, 20 * GB)]
    p = milp(two, system)
    assert p.assignment == {"a": "h200", "b": "l4"}


def test_energy_objective_trades_time_for_joules():
    system = get_system("mixed_h200_l4")
    items = [WorkItem(f"e{i}", {"h200": 1.0, "l4": 3.0}, GB, {"h200": 400.0, "l4": 150.0}) for i in range(4)]
    fast = milp(items, system, "makespan")
    frugal = milp(items, system, "energy")
    assert frugal.energy_j < fast.energy_j
    assert frugal.makespan_s >= fast.makespan_s
    bounded = milp(items, system, "energy", deadline_s=6.0)
    assert bounded.makespan_s <= 6.0 + 1e-9 and bounded.energy_j >= frugal.energy_j


def test_work_items_from_traced_profiles():
    system = get_system("mixed_h200_l4")
    prof = trace_inference(build_cnn(10, 3, 32), torch.randn(64, 3, 32, 32))
    item = WorkItem.from_profile("cnn", prof, system, repeats=100)
    assert item.time_s["h200"] < item.time_s["l4"]
    assert item.memory_bytes == prof.param_bytes > 0
    with pytest.raises(HwError, match="unique"):
        milp([item, item], system)
