"""Calibration micro-benchmarks: measure this machine and write it as a device file.

Measures, through the same PyTorch kernels the cost model will be asked about:
GEMM rate per dtype (fp32, fp64, bf16; int8 only where a real int8 GEMM path exists), convolution
and attention rates, copy and triad bandwidth at working sets that fit each cache level and main
memory (sizes read from sysfs), the per-op dispatch overhead, and host-device transfer on a GPU.
Each efficiency curve ``eff(w) = max * w / (w + half_work)`` is fitted to the measured times.

The machine may be shared with other processes, so every figure is the BEST of several
repetitions (minimum time): interference only ever slows a run down, never speeds it up.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

import leanml.hw.timing as _timing
from leanml.hw.cache_spill import calibrate_spill
from leanml.hw.errors import HwError
from leanml.hw.gemm_pack import calibrate_gemm_pack, gemm_curves
from leanml.hw.schema import Device, Efficiency, HostLink, MemoryLevel, Power
from leanml.hw.sysinfo import CacheLevel, cpu_caches, cpu_model_name, cpu_theoretical_peak_per_core
from leanml.hw.timing import TimingMemo, best_time, default_clock, fit_efficiency, release_free_heap

__all__ = ["CacheLevel", "CalibrationPlan", "TimingMemo", "best_time", "calibrate", "catalog_base_for_gpu",
           "cpu_caches", "cpu_model_name", "cpu_theoretical_peak_per_core", "default_clock", "fit_efficiency"]

_TORCH_DT = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class CalibrationPlan:
    """Sizes and repetitions; ``quick`` keeps the same code path at smaller sizes (a few seconds)."""

    quick: bool = False
    reps: int = 5
    gemm_sizes: dict[str, list[int]] = field(default_factory=dict)
    conv_shapes: list[tuple[int, int, int, int]] = field(default_factory=list)  # (batch, c_in, hw, c_out)
    attn_shapes: list[tuple[int, int, int, int]] = field(default_factory=list)  # (batch, heads, seq, dim)

    @classmethod
    def make(cls, quick: bool) -> CalibrationPlan:
        if quick:
            return cls(True, 9,
                       {"fp32": [32, 64, 128, 256, 512], "fp64": [64, 128, 256], "bf16": [64, 128], "int8": [256]},
                       [(8, 3, 32, 16), (8, 16, 32, 32), (16, 32, 16, 64), (16, 64, 8, 128)],
                       [(2, 4, 64, 32), (4, 8, 128, 64), (8, 12, 64, 32)])
        return cls(False, 21,
                   {"fp32": [16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024], "fp64": [64, 128, 256, 384, 512],
                    "bf16": [64, 128, 256], "int8": [256, 512]},
                   [(8, 3, 32, 16), (8, 16, 32, 32), (16, 32, 16, 64), (32, 32, 32, 32), (8, 64, 16, 128),
                    (64, 3, 32, 32), (16, 128, 8, 128)],
                   [(2, 4, 64, 32), (4, 8, 128, 64), (8, 12, 128, 32), (2, 8, 256, 64)])



# ---------------------------------------------------------------- micro-benchmarks
def _gemm(n: int, dtype: str, dev: str, reps: int, sync) -> float:
    if dtype == "int8":
        a = torch.randint(-64, 64, (n, n), dtype=torch.int8, device=dev)
        b = torch.randint(-64, 64, (n, n), dtype=torch.int8, device=dev)
        return best_time(lambda: torch._int_mm(a, b), reps, sync=sync)
    a = torch.randn(n, n, device=dev).to(_TORCH_DT[dtype])
    b = torch.randn(n, n, device=dev).to(_TORCH_DT[dtype])
    out = torch.empty(n, n, device=dev, dtype=_TORCH_DT[dtype])
    return best_time(lambda: torch.mm(a, b, out=out), reps, sync=sync)


def _addmm(n: int, dev: str, reps: int, sync) -> tuple[float, float]:
    x, w, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev), torch.randn(n, device=dev)
    return 2.0 * n**3, best_time(lambda: torch.addmm(b, x, w), reps, sync=sync)


def _conv(shape: tuple[int, int, int, int], dev: str, reps: int, sync) -> tuple[float, float]:
    bsz, cin, hw, cout = shape
    x = torch.randn(bsz, cin, hw, hw, device=dev)
    w = torch.randn(cout, cin, 3, 3, device=dev)
    flops = 2.0 * bsz * cout * hw * hw * cin * 9
    return flops, best_time(lambda: torch.nn.functional.conv2d(x, w, padding=1), reps, sync=sync)


def _attn(shape: tuple[int, int, int, int], dev: str, reps: int, sync) -> tuple[float, float]:
    bsz, h, s, d = shape
    q, k, v = (torch.randn(bsz, h, s, d, device=dev) for _ in range(3))
    flops = 4.0 * bsz * h * s * s * d
    return flops, best_time(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), reps, sync=sync)


def _stream(nbytes: int, dev: str, reps: int, sync) -> dict[str, float]:
    """STREAM-style copy (2 arrays) and triad (3 arrays) at ``nbytes`` per array, and a sum over one array
    as large as triad's working set (so both read from the same level); seconds per call."""
    n = max(nbytes // 4, 16)
    a, b, c = (torch.rand(n, device=dev) for _ in range(3))
    big = torch.cat([a, b, c])
    return {"copy": best_time(lambda: a.copy_(b), reps, sync=sync),
            "triad": best_time(lambda: torch.add(b, c, alpha=3.0, out=a), reps, sync=sync),
            "sum": best_time(lambda: torch.sum(big), reps, sync=sync), "n": float(n)}


def _vector_efficiencies(dev: str, reps: int, sync, peak: float) -> dict[str, Efficiency]:
    """Elements per second of transcendental (GELU), window (2x2 max-pool) and selection (top-k) kernels as a
    fraction of the fp32 peak, one FLOP per element, at a size that sits in the last cache level."""
    n = 2**18 if dev == "cpu" else 2**24
    x = torch.randn(n, device=dev)
    img = torch.randn(n // 1024, 16, 8, 8, device=dev)
    rows = torch.randn(16, n // 16, device=dev)  # few queries over many stored rows, as in a store search
    out = {}
    # Plain arithmetic (add, relu, mul) is never the bottleneck of an elementwise kernel: it gets no curve
    # (the vector units' rate is the fp32 peak) and its time comes from the memory roof.
    for key, fn, elems in (("vector_transcendental", lambda: torch.nn.functional.gelu(x), n),
                           ("vector_pool", lambda: torch.nn.functional.max_pool2d(img, 2), img.numel()),
                           ("vector_sort", lambda: torch.topk(rows, 10, dim=1), rows.numel())):
        t = best_time(fn, reps, sync=sync)
        out[key] = Efficiency(float(min(elems / t / peak, 1.0)), 0.0, f"calibrated: {key} elements/s over fp32 peak")
    return out


def _autograd_overhead(dev: str, reps: int, sync, op_ovh: float, view_ovh: float,
                       mod_ovh: float = 0.0) -> tuple[float, float]:
    """(seconds per kernel, seconds per backward() call) of a tiny training step beyond dispatch and module
    Python: steps of 2 and 8 Linear+ReLU layers on 2x4 inputs, the line through both (time beyond dispatch
    against kernel count) gives the per-kernel slope and the fixed cost of each backward pass."""
    from leanml.hw.trace import trace_callable

    pts = []
    for n_layers in (2, 8):
        torch.manual_seed(0)
        layers: list[torch.nn.Module] = []
        for _ in range(n_layers):
            layers += [torch.nn.Linear(4, 4), torch.nn.ReLU()]
        net = torch.nn.Sequential(*layers).to(dev)
        x, y = torch.randn(2, 4, device=dev), torch.randint(0, 4, (2,), device=dev)

        def step(net=net, x=x, y=y) -> None:
            for p in net.parameters():
                p.grad = None
            torch.nn.functional.cross_entropy(net(x), y).backward()

        step()
        prof = trace_callable(step, "autograd probe")
        kernels = sum(1 for o in prof.ops if o.kind != "view")
        t = best_time(step, reps, sync=sync)
        rest = t - kernels * op_ovh - (len(prof.ops) - kernels) * view_ovh - sum(prof.module_calls.values()) * mod_ovh
        pts.append((kernels, rest))
    (k0, r0), (k1, r1) = pts
    per_kernel = max((r1 - r0) / (k1 - k0), 0.0)
    return per_kernel, max(r0 - per_kernel * k0, 0.0)


def _first_touch(quick: bool, reps: int) -> tuple[float, float]:
    """(threshold, bandwidth): above glibc's largest mmap threshold (32 MiB on 64-bit Linux) every
    allocation is fresh from the OS; the extra time of zeros() on it over zero_() on a warm buffer is the
    cost of first-touching its pages (faults + kernel zeroing)."""
    n = (48 if quick else 96) * 2**20 // 4
    warm = torch.empty(n)
    t_warm = best_time(lambda: warm.zero_(), reps)
    release_free_heap()  # else a free heap top left by earlier probes can serve the "fresh" buffer warm
    t_fresh = best_time(lambda: torch.zeros(n), reps)
    extra = max(t_fresh - t_warm, 1e-9)
    return float(32 * 2**20), float(n * 4 / extra)


def _overheads(dev: str, reps: int, sync) -> tuple[float, float]:
    x = torch.ones(1, device=dev)
    y = torch.ones(1, device=dev)
    op = best_time(lambda: torch.add(x, y), reps, inner=500, sync=sync)
    view = best_time(lambda: x.view(-1), reps, inner=500, sync=sync)
    return op, view


# ---------------------------------------------------------------- the calibration
def calibrate(quick: bool = False, device: str = "cpu", *, device_id: str = "local", base: Device | None = None,
              log: Callable[[str], None] | None = None, rounds: int = 1, memo: TimingMemo | None = None) -> Device:
    """Measure this machine (``device`` "cpu" or "cuda") and return it as a `Device`.

    ``rounds`` > 1 repeats every measurement that many times, spread over the run, keeping each one's best;
    passing the same ``memo`` to several calls does the same across calls (the accuracy benchmark
    interleaves calibration rounds with its own measurements this way).
    """
    if rounds < 1:
        raise HwError(f"calibrate: rounds must be >= 1, got {rounds}")
    memo = memo or TimingMemo()
    dev = None
    for r in range(rounds):
        memo.start_round()
        _timing._MEMO = memo
        try:
            dev = _calibrate_once(quick, device, device_id, base, (log or (lambda s: None)) if r == rounds - 1
                                  else (lambda s: None))
        finally:
            _timing._MEMO = None
    assert dev is not None
    dev.calibration["rounds"] = memo.rounds
    return dev


def _calibrate_once(quick: bool, device: str, device_id: str, base: Device | None,
                    log: Callable[[str], None]) -> Device:
    if device not in ("cpu", "cuda"):
        raise HwError(f"calibrate: device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise HwError("calibrate: device='cuda' but no CUDA GPU is visible to PyTorch")
    plan = CalibrationPlan.make(quick)
    sync = torch.cuda.synchronize if device == "cuda" else None
    started = time.perf_counter()
    op_ovh, view_ovh = _overheads(device, plan.reps, sync)
    log(f"dispatch overhead: op {op_ovh * 1e6:.2f} us, view {view_ovh * 1e6:.2f} us")

    # GEMM per dtype
    gemm: dict[str, list[tuple[float, float]]] = {}
    unsupported: dict[str, str] = {}
    dtypes = ["fp32", "fp64", "bf16", "int8"] + (["fp16"] if device == "cuda" else [])
    for dt in dtypes:
        sizes = plan.gemm_sizes.get(dt, plan.gemm_sizes["bf16"])
        if device == "cuda":
            sizes = [s * 8 for s in sizes]
        rows = []
        try:
            for n in sizes:
                t = _gemm(n, dt, device, plan.reps, sync)
                rows.append((2.0 * n**3, t))
        except (RuntimeError, NotImplementedError) as e:
            unsupported[dt] = f"no {dt} GEMM kernel: {str(e).splitlines()[0][:120]}"
            continue
        gemm[dt] = rows
        log(f"GEMM {dt}: best {max(f / t for f, t in rows) / 1e9:.2f} GFLOP/s over sizes {sizes}")
    if "int8" in gemm and "fp32" in gemm:
        # _int_mm has a reference (scalar loop) fallback on CPU builds without an int8 GEMM library:
        # an int8 "GEMM" slower than half the fp32 rate is that fallback, not an int8 path.
        i8 = max(f / t for f, t in gemm["int8"])
        f32 = max(f / t for f, t in gemm["fp32"])
        if i8 < 0.5 * f32:
            unsupported["int8"] = (f"torch._int_mm ran at {i8 / 1e9:.2f} GOP/s vs fp32 GEMM {f32 / 1e9:.1f} "
                                   "GFLOP/s: a reference fallback, not a real int8 GEMM path")
            del gemm["int8"]

    measured_peak = {dt: max(f / t for f, t in rows) for dt, rows in gemm.items()}
    peaks = dict(base.peak_flops) if base is not None else measured_peak
    # GEMM with a bias (what nn.Linear runs): some backends add the bias in a separate pass over the output
    bias_rows = [_addmm(n, device, plan.reps, sync) for n in plan.gemm_sizes["fp32"] if n >= 64]
    eff: dict[str, Efficiency] = gemm_curves(gemm, bias_rows, peaks, op_ovh, [], {})
    conv_rows = [_conv(s, device, plan.reps, sync) for s in plan.conv_shapes]
    eff["conv"] = fit_efficiency([f for f, _ in conv_rows], [t for _, t in conv_rows], peaks["fp32"], op_ovh,
                                 "calibrated conv2d 3x3 fp32")
    attn_rows = [_attn(s, device, plan.reps, sync) for s in plan.attn_shapes]
    eff["attention"] = fit_efficiency([f for f, _ in attn_rows], [t for _, t in attn_rows], peaks["fp32"], op_ovh,
                                      "calibrated scaled_dot_product_attention fp32")
    eff.update(_vector_efficiencies(device, plan.reps, sync, peaks["fp32"]))
    from leanml.hw.probes import module_overheads

    mod_ovh, lib_ovh, mod_probe = module_overheads(device, plan.reps, sync, op_ovh, view_ovh)
    ag_ovh, bwd_ovh = _autograd_overhead(device, plan.reps, sync, op_ovh, view_ovh, mod_ovh)
    log(f"module overhead {mod_ovh * 1e6:.2f} us per torch.nn call, {lib_ovh * 1e6:.2f} us per library call "
        f"({mod_probe})")
    log(f"conv eff max {eff['conv'].max:.2f}, attention eff max {eff['attention'].max:.2f}, vector eff "
        f"{eff['vector_transcendental'].max:.4f}/{eff['vector_pool'].max:.4f}/{eff['vector_sort'].max:.4f} "
        f"(transcendental/pool/sort), autograd overhead {ag_ovh * 1e6:.2f} us/kernel + {bwd_ovh * 1e6:.1f} us "
        "per backward()")

    # memory levels
    levels, stream_meta, reduction_ratio = _memory_levels(device, plan, sync, op_ovh, log)
    pack, pack_meta = calibrate_gemm_pack(device, plan.quick, plan.reps, sync, op_ovh, levels, gemm, bias_rows,
                                          peaks, eff, log)
    spill_meta: dict[str, Any] = {}
    if device == "cpu":
        levels, spill_meta, mem_ratio = calibrate_spill(levels, plan.reps, sync, op_ovh, log)
        if mem_ratio is not None:  # main memory's, measured with no cache in the set
            reduction_ratio = [(n, r) for n, r in reduction_ratio if n != levels[-1].name]
            reduction_ratio.append((levels[-1].name, mem_ratio))
    # reductions read one array: their bandwidth over triad's at the same working set, per level (the cost
    # model looks up reduction_<level> first), and the median for a level that could not be resolved
    for lv_name, ratio in reduction_ratio:
        if lv_name:
            eff[f"reduction_{lv_name}"] = Efficiency(float(np.clip(ratio, 0.05, 1.0)), 0.0,
                                                     f"calibrated torch.sum / triad bandwidth, {lv_name}-sized set")
    eff["reduction"] = Efficiency(float(np.clip(np.median([r for _, r in reduction_ratio]), 0.05, 1.0)), 0.0,
                                  "calibrated torch.sum bandwidth / triad bandwidth at the same working set")

    host = _host_link(plan, log) if device == "cuda" else None
    fresh_thr, touch_bw = _first_touch(plan.quick, plan.reps) if device == "cpu" else (None, None)
    if touch_bw:
        log(f"first touch of fresh pages: {touch_bw / 1e9:.2f} GB/s above {fresh_thr / 2**20:.0f} MiB")
    power = _power(device, base, log)
    theo = cpu_theoretical_peak_per_core() if device == "cpu" else {}
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    calib: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "quick": quick, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "method": "best (minimum time) of repeated runs: the machine may be shared, and interference only slows",
        "clock": default_clock(device),
        "reps": plan.reps, "seconds": round(time.perf_counter() - started, 1),
        "measured_peak_flops": {k: float(v) for k, v in measured_peak.items()},
        "unsupported": unsupported,
        "stream": stream_meta, "module_overhead_probe": mod_probe, **pack_meta, **spill_meta,
    }
    if theo:
        calib["theoretical_peak_flops_per_core"] = {k: float(v) for k, v in theo.items()}
    if device == "cpu":
        # The figures are those of the torch threads used, so the device is that many cores of the machine.
        units = min(torch.get_num_threads(), ncpu)
        name = (f"{cpu_model_name()} ({units} of {ncpu} CPUs, torch threads {torch.get_num_threads()}, "
                f"{platform.machine()})")
    else:
        props = torch.cuda.get_device_properties(0)
        name, units = props.name, int(props.multi_processor_count)
    functions = ["gemm", "conv", "attention", "elementwise", "reduction"] + (["int8_gemm"] if "int8" in gemm else [])
    return Device(
        id=device_id, name=name, cls="cpu" if device == "cpu" else "gpu", compute_units=units,
        peak_flops={k: float(v) for k, v in peaks.items()}, memory=tuple(levels), functions=tuple(functions),
        power=power, efficiency=eff, op_overhead=float(op_ovh), view_overhead=float(view_ovh),
        autograd_overhead=float(ag_ovh), backward_overhead=float(bwd_ovh), module_overhead=float(mod_ovh),
        library_module_overhead=float(lib_ovh), host_link=host,
        fresh_alloc_threshold=fresh_thr,
        first_touch_bandwidth=touch_bw, gemm_pack=pack,
        peak_source="datasheet" if base is not None else "measured", calibration=calib,
    )


def _memory_levels(device: str, plan: CalibrationPlan, sync, op_ovh: float, log) -> tuple[list, dict, list]:
    """Memory levels with their triad bandwidth, the probes' record, and (level, sum/triad) ratios."""
    import psutil

    levels: list[MemoryLevel] = []
    meta: dict[str, Any] = {}
    ratios: list[float] = []
    if device == "cpu":
        ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        caches = cpu_caches()
        total_mem = float(psutil.virtual_memory().total)
        largest_cache = max((c.size * c.instances for c in caches), default=32 * 2**20)
        # working set per array: half of one instance of the level over 3 arrays (triad), so it fits
        # private caches count once per core in use (torch threads); shared ones once
        used = max(1, torch.get_num_threads())
        # working set (3 arrays for triad): a quarter of a private level, where the cost model lets that
        # level serve alone; an eighth of a shared level (one instance for the machine), which others also fill
        targets = [(c.name, c.size * min(c.instances, used),
                    max(c.size // (24 if c.instances == 1 and ncpu > 1 else 12), 4096)) for c in caches]
        dram_bytes = int(min(4 * largest_cache, total_mem / 16)) if not plan.quick else int(min(2 * largest_cache,
                                                                                               total_mem / 16))
        targets.append(("DRAM", total_mem, max(dram_bytes // 3, 2**20)))
    else:
        props = torch.cuda.get_device_properties(0)
        l2 = int(getattr(props, "L2_cache_size", 50 * 2**20))
        total = float(props.total_memory)
        targets = [("L2", float(l2), l2 // 6), ("HBM", total, 2**30 if not plan.quick else 2**28)]
    for name, capacity, per_array in targets:
        r = _stream(int(per_array), device, plan.reps, sync)
        n_bytes = r["n"] * 4
        # A level is "resolved" when moving its bytes takes clearly longer than dispatching the op; below
        # that (an L1-sized op through PyTorch) the bandwidth is not measurable this way.
        resolved = r["triad"] - op_ovh > 0.5 * r["triad"]
        body = {k: max(r[k] - op_ovh, 0.05 * r[k]) for k in ("copy", "triad", "sum")}
        copy_bw, triad_bw, sum_bw = 2 * n_bytes / body["copy"], 3 * n_bytes / body["triad"], 3 * n_bytes / body["sum"]
        meta[name] = {"array_bytes": float(n_bytes), "copy_Bps": float(copy_bw), "triad_Bps": float(triad_bw),
                      "sum_Bps": float(sum_bw), "copy_s": float(r["copy"]), "triad_s": float(r["triad"]),
                      "resolved": bool(resolved)}
        if resolved:
            ratios.append((name, sum_bw / triad_bw))
        levels.append(MemoryLevel(name, float(capacity), float(triad_bw), None, 64 if device == "cpu" else 32))
        log(f"{name}: {n_bytes / 1024:.0f} KiB/array copy {copy_bw / 1e9:.1f} GB/s triad {triad_bw / 1e9:.1f} GB/s"
            + ("" if resolved else " (dispatch-bound: not resolvable through framework ops)"))
    # A cache is never slower than the level behind it: a level measured below that (dispatch-bound, or
    # disturbed by other processes) takes the next level's bandwidth as a floor, and the file says so.
    for i in range(len(levels) - 2, -1, -1):
        if levels[i].bandwidth < levels[i + 1].bandwidth:
            meta[levels[i].name]["floored_to_next_level"] = True
            levels[i] = replace(levels[i], bandwidth=levels[i + 1].bandwidth)
    if not ratios:
        ratios = [("", 1.0)]
    return levels, meta, ratios


def _host_link(plan: CalibrationPlan, log) -> HostLink:
    n = 2**26 if plan.quick else 2**28
    host = torch.empty(n, dtype=torch.uint8).pin_memory()
    dev = torch.empty(n, dtype=torch.uint8, device="cuda")
    sync = torch.cuda.synchronize
    h2d = best_time(lambda: dev.copy_(host, non_blocking=True), plan.reps, inner=3, sync=sync)
    d2h = best_time(lambda: host.copy_(dev, non_blocking=True), plan.reps, inner=3, sync=sync)
    small_h, small_d = torch.empty(8, dtype=torch.uint8).pin_memory(), torch.empty(8, dtype=torch.uint8, device="cuda")
    lat = best_time(lambda: (small_d.copy_(small_h), sync()), plan.reps, inner=50)
    bw = n / max(min(h2d, d2h) - lat, 1e-9)
    log(f"host link: H2D {n / h2d / 1e9:.1f} GB/s, D2H {n / d2h / 1e9:.1f} GB/s, latency {lat * 1e6:.1f} us")
    return HostLink(float(bw), float(lat), "measured")


def _power(device: str, base: Device | None, log) -> Power:
    """Measured idle and loaded package power where RAPL/NVML exist, else a stated estimate."""
    if base is not None:
        return base.power
    from leanml.meter import RaplReader

    rapl = RaplReader()
    rapl.start()
    if device == "cpu" and rapl.unavailable_reason is None:
        t0 = time.perf_counter()
        e0 = rapl.joules() or 0.0
        time.sleep(1.0)
        idle = ((rapl.joules() or 0.0) - e0) / (time.perf_counter() - t0)
        a = torch.randn(1024, 1024)
        t0, e0 = time.perf_counter(), rapl.joules() or 0.0
        while time.perf_counter() - t0 < 1.0:
            torch.mm(a, a)
        loaded = ((rapl.joules() or 0.0) - e0) / (time.perf_counter() - t0)
        log(f"RAPL power: idle {idle:.1f} W, loaded {loaded:.1f} W")
        return Power(float(idle), float(max(loaded, idle)), "measured with RAPL (package): idle 1 s, GEMM 1 s")
    from leanml.hw.catalog import load_catalog

    ref = load_catalog(include_local=False).device("server_cpu")
    ncpu = min(torch.get_num_threads(), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else (os.cpu_count() or 1))
    share = ncpu / ref.compute_units
    why = rapl.unavailable_reason or "no GPU power reading at calibration time"
    return Power(ref.power.idle * share, ref.power.max * share,
                 f"ESTIMATE: {ncpu}/{ref.compute_units} per-core share of {ref.id}'s power model ({why})")


_GPU_NAMES = (("gh200", "gh200_hopper"), ("h200", "h200"), ("h100", "h100_sxm"), ("a100", "a100_80gb"), ("l4", "l4"))


def catalog_base_for_gpu(gpu_name: str) -> Device | None:
    """The catalog device whose datasheet peaks a GPU of this name is calibrated against (None if unknown)."""
    import re

    from leanml.hw.catalog import load_catalog

    low = gpu_name.lower()
    for token, dev_id in _GPU_NAMES:
        if re.search(rf"(?<![a-z0-9]){token}(?![a-z0-9])", low):
            return load_catalog(include_local=False).device(dev_id)
    return None


def with_id(dev: Device, device_id: str) -> Device:
    return replace(dev, id=device_id)
