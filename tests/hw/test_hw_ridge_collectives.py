"""Ridge points of catalog devices equal hand arithmetic; collective formulas equal the alpha-beta model."""

from __future__ import annotations

import pytest

from leanml.hw import collective_time, get_device, get_system
from leanml.hw.collectives import ring_all_gather, ring_all_reduce
from leanml.hw.errors import HwError


@pytest.mark.parametrize("dev,dtype,expected", [
    ("h200", "fp32", 67e12 / 4.8e12),
    ("h200", "bf16", 989.5e12 / 4.8e12),
    ("h100_sxm", "bf16", 989.5e12 / 3.35e12),
    ("a100_80gb", "fp16", 312e12 / 2039e9),
    ("gh200_hopper", "fp8", 1979e12 / 4e12),
    ("l4", "fp32", 30.3e12 / 300e9),
    ("server_cpu", "fp64", 2.509e12 / 204.8e9),
    ("grace", "fp64", 3.55e12 / 512e9),
])
def test_ridge_points_match_hand_arithmetic(dev, dtype, expected):
    assert get_device(dev).ridge_point(dtype) == pytest.approx(expected, rel=1e-12)


def test_ridge_point_per_level_and_missing_dtype():
    cpu = get_device("server_cpu")
    assert cpu.ridge_point("fp32", "L2") == pytest.approx(5.018e12 / 10e12)
    with pytest.raises(HwError, match="fp64"):
        get_device("l4").ridge_point("fp64")


def test_collective_formulas():
    n, p, bw, lat = 1e9, 8, 450e9, 3e-6
    assert ring_all_reduce(n, p, bw, lat) == pytest.approx(2 * 7 / 8 * n / bw + 2 * 7 * lat)
    assert ring_all_gather(n, p, bw, lat) == pytest.approx(7 / 8 * n / bw + 7 * lat)
    assert ring_all_reduce(n, 1, bw, lat) == 0.0
    hgx = get_system("hgx_h200_8")
    assert collective_time(hgx, "all_reduce", n) == pytest.approx(ring_all_reduce(n, 8, bw, lat))
    assert collective_time(hgx, "point_to_point", n, ["gpu0", "gpu5"]) == pytest.approx(lat + n / bw)
    gh = get_system("gh200")
    assert collective_time(gh, "point_to_point", 4.5e9, ["cpu", "gpu"]) == pytest.approx(0.01 + 1e-6)
    # all-reduce costs about twice an all-gather of the same size on the same ring
    assert collective_time(hgx, "all_reduce", n) > 1.9 * collective_time(hgx, "all_gather", n)
    with pytest.raises(HwError, match="participants"):
        collective_time(hgx, "all_reduce", n, ["gpu0", "gpu99"])
