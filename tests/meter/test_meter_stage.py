"""`leanml.meter.stage`: work attributed to named stages of the innermost open Meter."""

import time

import pytest

from leanml.meter import Meter, stage


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_stage_without_a_meter_is_a_noop():
    with stage("train") as child:
        _spin(0.001)
    assert child is None


def test_stages_land_in_the_innermost_meter_and_sum_to_at_most_its_wall():
    with Meter() as m:
        with stage("train"):
            _spin(0.02)
        with stage("infer"):
            _spin(0.01)
        with stage("train"):  # repeated: summed
            _spin(0.01)
        _spin(0.01)  # outside any stage: the "other" remainder
    c = m.cost
    assert set(c.stages) == {"train", "infer"}
    assert c.stages["train"].wall_s >= 0.03 and c.stages["infer"].wall_s >= 0.01
    assert sum(s.wall_s for s in c.stages.values()) <= c.wall_s
    assert c.wall_s - sum(s.wall_s for s in c.stages.values()) >= 0.01


def test_nested_stage_goes_to_the_enclosing_stage_not_the_top():
    with Meter() as outer:
        with Meter() as inner, stage("grads"):  # a library's own meter owns what runs inside it
            _spin(0.005)
        with stage("train"), stage("infer"):
            _spin(0.005)
    assert "grads" in inner.cost.stages and "grads" not in outer.cost.stages
    train = outer.cost.stages["train"]
    assert set(outer.cost.stages) == {"train"} and "infer" in train.stages
    assert train.stages["infer"].wall_s <= train.wall_s <= outer.cost.wall_s


def test_stage_name_is_validated():
    with pytest.raises(ValueError, match="non-empty string"), stage(""):
        pass


def test_stages_only_keeps_the_split_not_the_totals():
    with Meter() as m, stage("infer"):
        _spin(0.002)
    z = m.cost.stages_only()
    assert z.wall_s == 0 and set(z.stages) == {"infer"}
    both = m.cost.without_stages() + z
    assert both.wall_s == m.cost.wall_s and "infer" in both.stages
