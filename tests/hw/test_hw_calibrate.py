"""Calibration on this CPU: positive figures below the catalog peak of this CPU class; sysfs parsing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from leanml.hw.calibrate import best_time, calibrate, cpu_caches, cpu_theoretical_peak_per_core, fit_efficiency
from leanml.hw.catalog import get_device, load_files, write_device


@pytest.fixture(scope="module")
def local_dev():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield calibrate(quick=True)
    finally:
        torch.set_num_threads(before)


def test_calibration_is_positive_and_below_catalog_peak(local_dev):
    dev = local_dev
    assert dev.peak_source == "measured" and dev.compute_units >= 1
    server = get_device("server_cpu")
    threads = dev.calibration["torch_threads"]
    # Ceiling per core: cpuinfo's vector width x 2 FMA pipes at twice the reported clock (a VM reports the
    # base clock; turbo reaches ~1.8x it on the Xeon and EPYC parts these VMs run on). Without cpuinfo, the
    # catalog server part's per-core peak at the same margin.
    theo = cpu_theoretical_peak_per_core() or {k: v / server.compute_units for k, v in server.peak_flops.items()}
    for dt in ("fp32", "fp64"):
        measured = dev.calibration["measured_peak_flops"][dt]
        assert 0 < measured < 2.0 * theo[dt] * threads, (dt, measured, theo[dt])
    for lv in dev.memory:
        assert lv.bandwidth > 0 and lv.capacity > 0
    assert dev.main_memory.bandwidth < server.main_memory.bandwidth  # one core cannot beat 8 DDR4 channels
    assert dev.op_overhead > 0 and dev.autograd_overhead >= 0
    for e in dev.efficiency.values():
        assert 0 < e.max <= 1 and e.half_work >= 0
    # int8 is either a real fast path or reported unsupported with the reason
    assert "int8" in dev.peak_flops or "int8" in dev.calibration["unsupported"]
    assert dev.calibration["method"].startswith("best")


def test_calibrated_file_round_trips(local_dev, tmp_path):
    path = write_device(local_dev, tmp_path / "local.toml", "test")
    assert load_files([path]).device("local") == local_dev
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temporary file


def test_cpu_caches_from_fake_sysfs(tmp_path: Path):
    def level(idx: int, lvl: int, kind: str, size: str, shared: str) -> None:
        d = tmp_path / "cpu0" / "cache" / f"index{idx}"
        d.mkdir(parents=True)
        for name, val in (("level", str(lvl)), ("type", kind), ("size", size), ("shared_cpu_list", shared)):
            (d / name).write_text(val + "\n")

    level(0, 1, "Data", "32K", "0")
    level(1, 1, "Instruction", "32K", "0")
    level(2, 2, "Unified", "512K", "0")
    level(3, 3, "Unified", "32768K", "0-1")
    caches = cpu_caches(tmp_path)
    assert [c.name for c in caches] == ["L1d", "L2", "L3"]
    assert caches[0].size == 32 * 1024 and caches[2].size == 32 * 2**20
    assert caches[2].instances == 1


def test_fit_recovers_a_known_curve():
    peak, mx, half, ovh = 1e11, 0.8, 2e6, 2e-6
    works = [1e5, 1e6, 1e7, 1e8, 1e9]
    times = [ovh + (w + half) / (peak * mx) for w in works]
    e = fit_efficiency(works, times, peak, ovh, "synthetic")
    assert e.max == pytest.approx(mx, rel=1e-6) and e.half_work == pytest.approx(half, rel=1e-4)


def test_best_time_validates_clock():
    with pytest.raises(ValueError, match="clock"):
        best_time(lambda: None, 1, clock="sundial")


def test_cpu_vector_isa_is_the_widest_extension_present():
    from leanml.hw.sysinfo import _flags, cpu_vector_isa

    info = Path("/proc/cpuinfo")
    if not info.exists():
        pytest.skip("no /proc/cpuinfo")
    flags, isa = _flags(info.read_text()), cpu_vector_isa()
    order = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")
    assert isa in flags or (isa == "no AVX2" and not flags & set(order))
    if isa in order:
        assert not flags & set(order[: order.index(isa)])  # nothing wider was passed over
