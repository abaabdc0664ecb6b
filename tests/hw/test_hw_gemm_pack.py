"""GEMM operand packing and the per-backward cost: hand arithmetic, the fit recovers a known cost, round trips."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from leanml.hw import CostModel, get_device, predict, trace_train_step
from leanml.hw import costmodel as cm
from leanml.hw.catalog import device_to_toml, parse_device
from leanml.hw.errors import SchemaError
from leanml.hw.gemm_pack import fit_gemm_pack
from leanml.hw.schema import Efficiency, MemoryLevel
from leanml.hw.trace import trace_callable
from leanml.models import build_mlp

LEVELS = (MemoryLevel("L2", 1e6, 100e9), MemoryLevel("DRAM", 1e12, 20e9))
PACK = {"L2": ((1.0, 20e-12), (2.0, 40e-12)), "DRAM": ((1.0, 80e-12), (2.0, 130e-12), (8.0, 150e-12))}


def _cpu(**kw):
    base = get_device("dev_vm")
    return replace(base, memory=LEVELS, peak_flops={"fp32": 100e9}, op_overhead=2e-6,
                   efficiency={"matmul": Efficiency(1.0, 0.0, "test")}, gemm_pack=PACK, **kw)


def test_pack_cost_interpolates_in_log_m_and_falls_back_to_the_next_level():
    dev = _cpu()
    assert dev.pack_cost("DRAM", 1) == pytest.approx(80e-12)
    assert dev.pack_cost("DRAM", 4) == pytest.approx(140e-12)  # halfway between m=2 and m=8 in log2
    assert dev.pack_cost("DRAM", 64) == pytest.approx(150e-12)  # flat beyond the last point
    assert dev.pack_cost("L2", 3) == pytest.approx(40e-12)
    assert replace(dev, gemm_pack={"DRAM": PACK["DRAM"]}).pack_cost("L2", 1) == pytest.approx(80e-12)
    assert get_device("h200").pack_cost("HBM", 4) == 0.0  # no curve: no term


def test_decode_shaped_gemm_time_is_dispatch_plus_compute_plus_packing_by_hand():
    dev = _cpu()
    m, n, k = 4, 1536, 576
    op = replace(cm.matmul(m, n, k), working_set=1e11)  # weight streamed from DRAM
    t = CostModel(dev).time(op)
    by_hand = 2e-6 + 2 * m * n * k / 100e9 + (m * k + k * n) * 4 * 140e-12
    assert t == pytest.approx(by_hand, rel=1e-9)
    # m = 1 is the GEMV point of the curve; the same GEMM without a curve falls back to the plain roofline
    gemv = replace(cm.matmul(1, n, k), working_set=1e11)
    assert CostModel(dev).time(gemv) == pytest.approx(2e-6 + 2 * n * k / 100e9 + (k + k * n) * 4 * 80e-12)
    plain = CostModel(replace(dev, gemm_pack={})).time(op)
    assert plain == pytest.approx(2e-6 + max(2 * m * n * k / 100e9, op.bytes / 20e9))


def test_fit_recovers_a_known_packing_cost():
    comp = 100e9
    rows = []
    for m in (1, 2, 8):
        for k, n, where, beta in ((256, 256, "hot", 30e-12 * m ** 0.5), (512, 2048, "stream", 100e-12 + m * 5e-12)):
            t = 2e-6 + 2 * m * n * k / comp + (m * k + k * n) * 4 * beta
            rows.append({"m": m, "n": n, "k": k, "where": where, "t": t})
    pack = fit_gemm_pack(rows, list(LEVELS), lambda f: f / comp, 2e-6)
    assert set(pack) == {"L2", "DRAM"}
    for m, beta in pack["DRAM"]:
        assert beta == pytest.approx(100e-12 + m * 5e-12, rel=1e-9)
    for m, beta in pack["L2"]:
        assert beta == pytest.approx(30e-12 * m ** 0.5, rel=1e-9)


def test_device_file_round_trips_the_curve_and_rejects_a_bad_one():
    import tomllib

    dev = _cpu(backward_overhead=1e-4)
    back = parse_device(dev.id, tomllib.loads(device_to_toml(dev))["devices"][dev.id])
    assert back.gemm_pack == dev.gemm_pack and back.backward_overhead == 1e-4
    raw = tomllib.loads(device_to_toml(dev))["devices"][dev.id]
    raw["gemm_pack"] = {"L2": [[2, 1e-11], [1, 1e-11]]}
    with pytest.raises(SchemaError, match="gemm_pack.L2"):
        parse_device(dev.id, raw)
    raw["gemm_pack"] = {"L9": [[1, 1e-11]]}
    with pytest.raises(SchemaError, match="no memory level named 'L9'"):
        parse_device(dev.id, raw)


def test_trace_records_linear_gemm_shape():
    x, w = torch.randn(4, 16), torch.randn(32, 16)
    prof = trace_callable(lambda: torch.nn.functional.linear(x, w), "linear")
    gemms = [o for o in prof.specs() if o.kind == "matmul"]
    assert [g.gemm for g in gemms] == [(1, 4, 32, 16)] and gemms[0].gemm_thin == 4
    assert gemms[0].gemm_input_bytes == (4 * 16 + 16 * 32) * 4


def test_backward_overhead_is_paid_once_per_backward_pass():
    torch.manual_seed(0)
    prof = trace_train_step(build_mlp(8, 2, (16,)), torch.randn(4, 8), torch.randint(0, 2, (4,)))
    dev = _cpu()
    with_b = predict(prof, replace(dev, backward_overhead=1e-3)).time_s
    assert with_b - predict(prof, dev).time_s == pytest.approx(1e-3, rel=1e-9)


def test_decode_attention_streams_k_and_v_once_per_query_head():
    """A traced q-length-1 flash-attention kernel is priced as its per-head micro-GEMMs at the GEMV point of the
    packing curve: under grouped-query attention (9 query heads over 3 K/V heads) K and V are read per query
    head, which the plain roofline (K/V once) misses."""
    q = torch.randn(2, 9, 1, 64)
    k, v = torch.randn(2, 3, 512, 64), torch.randn(2, 3, 512, 64)
    prof = trace_callable(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    (op,) = [o for o in prof.specs() if o.kind == "attention"]
    assert op.gemm == (18, 1, 512, 64)
    assert op.gemm_input_bytes == pytest.approx(18 * (64 + 2 * 512 * 64) * 4)  # 3x the K/V bytes the kernel reads
    dev = replace(_cpu(), efficiency={"attention": Efficiency(1.0, 0.0, "test")})
    streamed = replace(op, working_set=1e11)
    by_hand = 2e-6 + op.flops / 100e9 + op.gemm_input_bytes * 80e-12
    assert CostModel(dev).time(streamed) == pytest.approx(by_hand, rel=1e-9)
    assert CostModel(replace(dev, gemm_pack={})).time(streamed) < 0.5 * by_hand
