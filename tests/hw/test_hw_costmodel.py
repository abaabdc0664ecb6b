"""Cost model: monotone in size, correct roofline arithmetic, tracing counts the right FLOPs, energy bounds."""

from __future__ import annotations

import pytest
import torch

from leanml.hw import (
    CostModel,
    OpSpec,
    get_device,
    predict,
    predict_latency,
    project_cost,
    trace_inference,
    trace_per_example_grads,
    trace_train_step,
)
from leanml.hw import costmodel as cm
from leanml.hw.errors import HwError
from leanml.models import build_cnn, build_mlp

DEVICES = ["h200", "l4", "server_cpu", "a100_80gb", "dev_vm"]


@pytest.mark.parametrize("dev", DEVICES)
def test_op_times_are_monotone_in_size(dev):
    m = CostModel(get_device(dev))
    sizes = [1, 2, 8, 32, 128, 512, 2048, 8192]
    for f in (lambda s: cm.matmul(s, s, s), lambda s: cm.matmul(64, 64, s),
              lambda s: cm.elementwise(s * 1024), lambda s: cm.reduction(s * 1024),
              lambda s: cm.conv2d(s, 16, 32, 32, 32, 3, 3, padding=1),
              lambda s: cm.attention(2, 4, s, s, 64), lambda s: cm.projection(s, 4096, 512),
              lambda s: cm.copy(s * 4096.0)):
        times = [m.time(f(s)) for s in sizes]
        assert all(b >= a for a, b in zip(times, times[1:], strict=False)), times
    search = [cm.total(m, cm.search(4, s * 100, 128)) for s in sizes]
    assert all(b >= a for a, b in zip(search, search[1:], strict=False))


def test_roofline_arithmetic_without_overhead():
    h200 = get_device("h200")
    m = CostModel(h200, overhead=False)
    op = cm.matmul(8192, 8192, 8192, "bf16")
    eff = h200.efficiency_for("matmul", "bf16")
    assert m.time(op) == pytest.approx(op.flops / (989.5e12 * eff.at(op.flops)))
    assert m.estimate(op).bound == "compute"
    add = cm.elementwise(2**28, dtype="bf16")  # 1.5 GiB moved at 4.8 TB/s x 0.9 efficiency
    e = m.estimate(add)
    assert e.bound == "memory"
    assert e.time_s == pytest.approx(add.bytes / (4.8e12 * h200.efficiency_for("memory").at(add.bytes)))
    assert cm.projection(10, 1000, 64).flops == 2 * 10 * 1000 * 64  # k*d multiply-adds per example


def test_op_spec_validation():
    with pytest.raises(HwError, match="kind"):
        OpSpec("teleport", 1.0, 1.0)
    with pytest.raises(HwError, match="dtype"):
        cm.matmul(2, 2, 2, "fp7")
    with pytest.raises(HwError, match="fp64"):
        CostModel(get_device("l4")).time(cm.matmul(64, 64, 64, "fp64"))
    with pytest.raises(HwError, match="m must be"):
        cm.matmul(0, 2, 2)


def test_trace_counts_mlp_flops_and_backward():
    model = build_mlp(64, 10, (128,))
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    inf = trace_inference(model, x)
    mm = [o for o in inf.ops if o.kind == "matmul"]
    assert sum(o.flops for o in mm) == 2 * 32 * (64 * 128 + 128 * 10)
    assert {o.module for o in mm} == {"Sequential.0", "Sequential.2"}
    tr = trace_train_step(model, x, y)
    assert any(o.phase == "backward" for o in tr.ops)
    # backward of a linear layer costs about twice its forward
    assert sum(o.flops for o in tr.ops if o.kind == "matmul") == pytest.approx(3 * sum(o.flops for o in mm), rel=0.35)
    pe = trace_per_example_grads(model, x, y)
    assert any("bmm" in o.aten for o in pe.ops)  # batched per-example weight gradients, not a loop
    assert pe.batch == 32


def test_predictions_monotone_in_batch_and_mode():
    model = build_cnn(10, 3, 16)
    for dev in ("h200", "dev_vm"):
        inf = [predict_latency(model, dev, b, input_fn=lambda b: torch.randn(b, 3, 32, 32)) for b in (1, 4, 16, 64)]
        assert all(b2 > b1 for b1, b2 in zip(inf, inf[1:], strict=False)), inf
        train = predict_latency(model, dev, 16, input_fn=lambda b: torch.randn(b, 3, 32, 32), mode="train",
                                target_fn=lambda b: torch.randint(0, 10, (b,)))
        assert train > inf[2]


def test_meta_device_trace_matches_real_flops():
    real = trace_inference(build_mlp(64, 10, (128,)), torch.randn(8, 64))
    with torch.device("meta"):
        meta_model, meta_x = build_mlp(64, 10, (128,)), torch.randn(8, 64)
    meta = trace_inference(meta_model, meta_x)
    assert meta.flops == real.flops and meta.bytes == real.bytes


def test_energy_is_power_model_times_time_and_bounded():
    prof = trace_inference(build_cnn(10, 3, 32), torch.randn(8, 3, 32, 32))
    for dev_id in ("h200", "l4", "server_cpu"):
        dev = get_device(dev_id)
        p = predict(prof, dev)
        assert dev.power.idle * p.time_s <= p.energy_j <= dev.power.max * p.time_s
        assert p.energy_j == pytest.approx(p.power_w * p.time_s)
        assert "estimate" in p.notes["energy_j"]
        assert p.bound in ("compute", "memory", "overhead")


def test_faster_device_predicts_less_time_and_projection():
    prof = trace_train_step(build_cnn(10, 3, 32), torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)))
    t_cpu, t_h200 = predict(prof, "server_cpu").time_s, predict(prof, "h200").time_s
    assert t_h200 < t_cpu
    same = project_cost(2.0, "h200", "h200", profile=prof)
    assert same.projected_s == pytest.approx(2.0)
    proj = project_cost(2.0, "server_cpu", "h200", profile=prof)
    assert proj.projected_s == pytest.approx(2.0 * t_h200 / t_cpu)
    from leanml.meter import Cost

    by_flops = project_cost(Cost(wall_s=1.0, flops=int(1e12)), "server_cpu", "h200")
    assert by_flops.projected_s < 1.0 and "FLOPs" in by_flops.method
    with pytest.raises(HwError, match="positive"):
        project_cost(Cost(), "server_cpu", "h200")


def test_predict_latency_validates():
    with pytest.raises(HwError, match="input_fn"):
        predict_latency(build_mlp(4, 2), "h200", 4)
    with pytest.raises(HwError, match="batch"):
        predict_latency(build_mlp(4, 2), "h200", 0, input_fn=lambda b: torch.randn(b, 4))
