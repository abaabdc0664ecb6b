"""Cache handover (`leanml.hw.cache_spill`): the fit recovers a known rule, the cost model blends by it,
the device file keeps it, and bad values are refused by field."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from leanml.hw import CostModel, get_device
from leanml.hw import costmodel as cm
from leanml.hw.cache_spill import DEFAULT_SPILL, SPILL_FACTORS, fit_spill
from leanml.hw.catalog import device_to_toml
from leanml.hw.errors import SchemaError
from leanml.hw.schema import MemoryLevel, parse_device, spill_share

CAP = 32 * 2**20


def _rows(start: float, span: float, b_cache: float = 90e9, b_mem: float = 30e9, ovh: float = 1e-6):
    """Sweep times a level with this handover rule would give (harmonic blend of the two bandwidths)."""
    rows = []
    for f in SPILL_FACTORS:
        ws = f * CAP
        x = spill_share(ws, CAP, start, span)
        rows.append((ws, ovh + ws * ((1 - x) / b_cache + x / b_mem)))
    return rows


@pytest.mark.parametrize("start,span", [(0.5, 8.0), (0.25, 4.0), (0.35, 12.0)])
def test_fit_recovers_a_known_handover(start, span):
    got_start, got_span, meta = fit_spill(_rows(start, span), CAP, 1e-6)
    # the grid is geometric (49 points per axis): within one step of it
    assert got_start == pytest.approx(start, rel=0.08)
    assert got_start * got_span == pytest.approx(start * span, rel=0.12)
    assert meta["cache_GBps"] == pytest.approx(90.0, rel=0.02)


def test_no_visible_handover_keeps_the_default_and_says_so():
    start, span, meta = fit_spill(_rows(0.5, 8.0, b_mem=85e9), CAP, 1e-6)
    assert (start, span) == DEFAULT_SPILL
    assert "default" in meta["fit"]


def test_share_is_zero_then_log_linear_then_one():
    assert spill_share(0.4 * CAP, CAP, 0.5, 8.0) == 0.0
    assert spill_share(0.5 * CAP * 8**0.5, CAP, 0.5, 8.0) == pytest.approx(0.5)
    assert spill_share(4.0 * CAP, CAP, 0.5, 8.0) == 1.0
    assert spill_share(100 * CAP, CAP, 0.5, 8.0) == 1.0


def test_cost_model_blends_by_the_level_rule():
    dev = get_device("dev_vm")
    llc = len(dev.memory) - 2
    cap = dev.memory[llc].capacity
    late = dataclasses.replace(dev, memory=tuple(dataclasses.replace(lv, spill_start=0.5, spill_span=8.0)
                                                 if i == llc else lv for i, lv in enumerate(dev.memory)))
    op = cm.reduction(int(0.45 * cap) // 4)  # under half the cache: served by it alone under the later rule
    fast_bw = dev.memory[llc].bandwidth
    t_late = CostModel(late, overhead=False).time(op)
    t_default = CostModel(dev, overhead=False).time(op)
    assert t_late < t_default  # the default rule already sends part of it to main memory
    eff = CostModel(late)._memory_efficiency(op, dev.memory[llc].name).at(op.bytes)
    assert t_late == pytest.approx(op.bytes / (fast_bw * eff))


def test_spill_fields_round_trip_and_are_validated():
    dev = get_device("dev_vm")
    llc = len(dev.memory) - 2
    tuned = dataclasses.replace(dev, memory=tuple(dataclasses.replace(lv, spill_start=0.4, spill_span=9.5)
                                                  if i == llc else lv for i, lv in enumerate(dev.memory)))
    d = tomllib.loads(device_to_toml(tuned))["devices"][dev.id]
    assert parse_device(dev.id, d) == tuned
    d["memory"][llc]["spill_span"] = 1.0
    with pytest.raises(SchemaError) as e:
        parse_device(dev.id, d)
    assert e.value.path == f"devices.{dev.id}.memory[{llc}].spill_span"
    d["memory"][llc]["spill_span"] = 4.0
    d["memory"][llc]["spill_start"] = "half"
    with pytest.raises(SchemaError) as e:
        parse_device(dev.id, d)
    assert e.value.path == f"devices.{dev.id}.memory[{llc}].spill_start"


def test_default_rule_is_the_old_quarter_to_full():
    lv = MemoryLevel("L3", CAP, 1e11)
    assert lv.spill_share(0.25 * CAP) == 0.0
    assert lv.spill_share(CAP) == 1.0
