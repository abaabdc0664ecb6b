import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leanml.meter import Cost

opt_float = st.one_of(st.none(), st.floats(min_value=0, max_value=1e12, allow_nan=False))
opt_int = st.one_of(st.none(), st.integers(min_value=0, max_value=2**62))


@st.composite
def costs(draw):
    return Cost(
        wall_s=draw(opt_float), cpu_s=draw(opt_float), energy_cpu_j=draw(opt_float),
        energy_gpu_j=draw(opt_float), peak_rss_bytes=draw(opt_int), peak_gpu_bytes=draw(opt_int),
        flops=draw(opt_int),
    )


def test_addition_sums_times_and_takes_max_of_peaks():
    a = Cost(wall_s=1.0, cpu_s=2.0, energy_cpu_j=3.0, peak_rss_bytes=100, flops=10)
    b = Cost(wall_s=0.5, cpu_s=1.0, energy_cpu_j=1.0, peak_rss_bytes=300, flops=5)
    c = a + b
    assert (c.wall_s, c.cpu_s, c.energy_cpu_j, c.peak_rss_bytes, c.flops) == (1.5, 3.0, 4.0, 300, 15)


def test_unavailable_is_never_turned_into_a_number():
    a = Cost(wall_s=1.0, energy_cpu_j=None)
    b = Cost(wall_s=1.0, energy_cpu_j=5.0)
    assert (a + b).energy_cpu_j is None
    assert "unavailable" in str(a)
    assert Cost.format_field("energy_cpu_j", None) == "unavailable"


def test_sum_of_costs_and_zero_identity():
    parts = [Cost(wall_s=1.0, cpu_s=1.0, energy_cpu_j=2.0, energy_gpu_j=0.0, peak_rss_bytes=5,
                  peak_gpu_bytes=0, flops=1) for _ in range(3)]
    total = sum(parts)
    assert total.wall_s == 3.0 and total.flops == 3 and total.peak_rss_bytes == 5
    z = Cost.zero() + parts[0]
    assert z.to_dict() == parts[0].to_dict()


def test_stages_nest_and_total_is_their_sum():
    select = Cost(wall_s=2.0, cpu_s=1.0, flops=100)
    train = Cost(wall_s=10.0, cpu_s=9.0, flops=1000)
    study = Cost.of_stages({"select": select, "train": train})
    assert study.wall_s == 12.0 and study.flops == 1100
    assert study.stages["select"].wall_s == 2.0
    again = study + study
    assert again.stages["train"].wall_s == 20.0 and again.wall_s == 24.0
    with pytest.raises(ValueError):
        Cost.of_stages({})


@given(costs(), costs())
def test_json_round_trip_with_stages(a, b):
    study = Cost.of_stages({"a": a, "b": b})
    back = Cost.from_json(study.to_json())
    assert back.to_dict() == study.to_dict()
    assert json.loads(study.to_json())["stages"]["a"] == a.to_dict()


def test_from_dict_names_unknown_fields():
    with pytest.raises(ValueError, match="wall_seconds"):
        Cost.from_dict({"wall_seconds": 1.0})
