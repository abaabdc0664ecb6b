import mmap

import torch

from leanml.meter import Meter, measure


def _spin(n: int) -> int:
    s = 0
    for i in range(n):
        s += i * i
    return s


def test_cpu_bound_loop_cpu_close_to_wall():
    with Meter() as m:
        _spin(3_000_000)
    c = m.cost
    assert c.wall_s > 0.05
    # One busy Python thread: CPU time tracks wall time (loose bounds: shared CI machines).
    assert 0.6 * c.wall_s <= c.cpu_s <= 1.3 * c.wall_s + 0.05


def test_sleep_uses_wall_not_cpu():
    import time

    with Meter() as m:
        time.sleep(0.3)
    assert m.cost.wall_s >= 0.29 and m.cost.cpu_s < 0.15


def test_unmeasurable_fields_are_none_with_reason(tmp_path):
    with Meter(powercap_root=tmp_path / "absent") as m:
        pass
    assert m.cost.energy_cpu_j is None and "energy_cpu_j" in m.cost.notes
    assert m.cost.flops is None and "not requested" in m.cost.notes["flops"]
    if not torch.cuda.is_available():
        assert m.cost.peak_gpu_bytes is None and m.cost.energy_gpu_j is None


def test_flops_of_matmul_counted_on_request():
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    with Meter(count_flops=True) as m:
        a @ b
    assert m.cost.flops == 2 * 64 * 32 * 16


def test_peak_rss_sees_allocation_inside_block():
    with Meter() as small:
        pass
    with Meter() as big:
        # A fresh anonymous mapping, so the pages are new whatever the allocator holds in reserve.
        size = 200 * 1024 * 1024
        buf = mmap.mmap(-1, size)
        for off in range(0, size, mmap.PAGESIZE):  # touch every page
            buf[off] = 1
        buf.close()
    assert big.cost.peak_rss_bytes - small.cost.peak_rss_bytes > 150 * 1024 * 1024


def test_stages_are_kept_by_name_and_sum_below_total():
    with Meter() as m:
        with m.stage("select"):
            _spin(200_000)
        with m.stage("train"):
            _spin(400_000)
        with m.stage("select"):  # repeated stage names accumulate
            _spin(200_000)
    st = m.cost.stages
    assert set(st) == {"select", "train"}
    assert st["select"].wall_s + st["train"].wall_s <= m.cost.wall_s + 1e-6
    assert st["select"].cpu_s > 0 and st["train"].cpu_s > 0


def test_measure_returns_result_and_cost():
    result, cost = measure(_spin, 1000)
    assert result == _spin(1000) and cost.wall_s >= 0
