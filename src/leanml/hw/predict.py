"""Model-level predictions: time, bound and (estimated) energy of a traced workload on a device.

The small API other packages call:

* ``predict(profile, device)`` -> `Prediction` (time, energy estimate, bound, per-layer breakdown)
* ``predict_latency(model_or_profile, device, batch, ...)`` -> seconds (the serving planner)
* ``project_cost(measured, from_device, to_device, ...)`` -> `Projection` (the study)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from leanml.hw.catalog import get_device
from leanml.hw.costmodel import COMPUTE_KINDS, CostModel, OpEstimate, OpSpec
from leanml.hw.errors import HwError
from leanml.hw.precision import cast_ops, resolve_dtype
from leanml.hw.schema import Device
from leanml.hw.trace import Profile


@dataclass
class Prediction:
    """Predicted cost of a workload on one device. ``energy_j`` is a power-model ESTIMATE."""

    device: str
    time_s: float
    compute_s: float  # sum over ops of their compute-roof time
    memory_s: float  # sum over ops of their memory-roof time
    overhead_s: float  # per-op dispatch/launch time
    bound: str  # what most of the time is spent on: "compute", "memory" or "overhead"
    flops: float
    bytes: float
    utilization: float  # time-weighted fraction of the binding roof in use
    power_w: float
    energy_j: float
    by_kind: dict[str, float] = field(default_factory=dict)  # seconds per op class
    by_module: dict[str, float] = field(default_factory=dict)  # seconds per layer
    notes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def estimate_ops(ops: list[OpSpec], device: str | Device, *, overhead: bool = True) -> list[OpEstimate]:
    model = CostModel(get_device(device), overhead=overhead)
    return [model.estimate(o) for o in ops]


def calibration_source(dev: Device) -> str:
    """Where the device's efficiency curves come from: "measured" (``hw calibrate`` ran on it) or "datasheet"."""
    cal = sorted(k for k, e in dev.efficiency.items() if e.source.startswith("calibrated"))
    if cal:
        when = dev.calibration.get("date", "")
        return f"measured: calibrated curves ({', '.join(cal[:4])}{', ...' if len(cal) > 4 else ''}) {when}".strip()
    return (f"datasheet: {dev.peak_source} peaks and bandwidths with assumed efficiencies "
            f"(run `leanml hw calibrate` on a {dev.id} to measure them)")


def _utilization(dev: Device, est: OpEstimate) -> float:
    """Fraction of the binding roof an op keeps busy while it runs (0 during pure overhead)."""
    if est.time_s <= 0:
        return 0.0
    body = est.time_s - est.overhead_s
    op = est.op
    peak = dev.peak_flops.get(op.dtype) or dev.peak_flops.get("fp32") or max(dev.peak_flops.values())
    lv = dev.level_for(op.working_set if op.working_set is not None else op.bytes)
    u_c = op.flops * op.count / (est.time_s * peak) if op.kind in COMPUTE_KINDS else 0.0
    u_m = op.bytes * op.count / (est.time_s * lv.bandwidth)
    return min(1.0, max(u_c, u_m)) if body > 0 else 0.0


def predict(profile: Profile | list[OpSpec], device: str | Device, *, overhead: bool = True,
            modules: list[str] | None = None, dtype: str | None = None,
            dtype_fallback: str | None = None) -> Prediction:
    """Predicted time, bound and energy estimate of a traced workload on ``device``.

    ``dtype`` re-costs the workload as run in that precision (`leanml.hw.precision.cast_ops`: GEMMs at the
    device's ``dtype`` peak, activations in its storage dtype); None keeps each kernel's traced dtype. A
    device without that peak raises, unless ``dtype_fallback`` names the peak to use (stated in ``notes``).
    """
    dev = get_device(device)
    autograd = False
    if isinstance(profile, Profile):
        specs, mods = profile.specs(), [o.module for o in profile.ops]
        autograd = any(o.phase == "backward" for o in profile.ops)
    else:
        specs, mods = list(profile), modules or ["(ops)"] * len(profile)
    if not specs:
        raise HwError("predict: the profile has no operations")
    dtype_note = "as traced: " + ", ".join(sorted({o.dtype for o in specs if o.kind in COMPUTE_KINDS})
                                            or ["no GEMM kernels"])
    if dtype is not None:
        gemm_dt, dtype_note = resolve_dtype(dev, dtype, dtype_fallback)
        specs = cast_ops(specs, dtype, gemm_dt)
    elif dtype_fallback is not None:
        raise HwError("dtype_fallback: only meaningful together with dtype (the precision to cost the run in)")
    else:  # traced dtypes must still have a peak: a bf16 GEMM on a device without one is an error, not fp32
        for o in specs:
            if o.kind in COMPUTE_KINDS and o.flops > 0:
                resolve_dtype(dev, o.dtype)
    ests = estimate_ops(specs, dev, overhead=overhead)
    if autograd and overhead and dev.autograd_overhead > 0:
        # A training step pays autograd's graph recording and backward-engine scheduling per kernel.
        ests = [replace(e, time_s=e.time_s + dev.autograd_overhead, overhead_s=e.overhead_s + dev.autograd_overhead)
                if e.op.kind != "view" else e for e in ests]
    t = sum(e.time_s for e in ests)
    calls = profile.module_calls if isinstance(profile, Profile) else {}
    framework = (calls.get("torch", 0) * dev.module_overhead + calls.get("library", 0) * dev.library_module_overhead
                 if overhead else 0.0)  # Python of each nn.Module call around its kernels
    if autograd and overhead:  # each backward() pays the engine's fixed start (one per run of backward kernels)
        phases = [o.phase for o in profile.ops] if isinstance(profile, Profile) else []
        framework += dev.backward_overhead * sum(1 for i, ph in enumerate(phases)
                                                 if ph == "backward" and (i == 0 or phases[i - 1] != "backward"))
    t += framework
    by_kind: dict[str, float] = defaultdict(float)
    by_module: dict[str, float] = defaultdict(float)
    by_bound: dict[str, float] = defaultdict(float)
    busy = 0.0
    for e, m in zip(ests, mods, strict=True):
        by_kind[e.op.kind] += e.time_s
        by_module[m] += e.time_s
        by_bound[e.bound] += e.time_s
        busy += _utilization(dev, e) * e.time_s
    if framework > 0:
        by_kind["framework"] = framework
        by_bound["overhead"] += framework
    util = busy / t if t > 0 else 0.0
    power = dev.power.at(util)
    return Prediction(
        device=dev.id, time_s=t, compute_s=sum(e.compute_s for e in ests), memory_s=sum(e.memory_s for e in ests),
        overhead_s=sum(e.overhead_s for e in ests) + framework, bound=max(by_bound, key=by_bound.get),
        flops=sum(o.flops * o.count for o in specs), bytes=sum(o.bytes * o.count for o in specs),
        utilization=util, power_w=power, energy_j=power * t, by_kind=dict(by_kind), by_module=dict(by_module),
        notes={"energy_j": "estimate: (idle + utilization x (max - idle)) x time from the device's power model",
               "peaks": f"{dev.peak_source} peaks of {dev.id}", "dtype": dtype_note,
               "calibration": calibration_source(dev)},
    )


def predict_latency(model_or_profile: Any, device: str | Device, batch: int, *,
                    input_fn: Callable[[int], Any] | None = None, mode: str = "infer",
                    target_fn: Callable[[int], Any] | None = None) -> float:
    """Predicted seconds for one batch of ``batch`` on ``device`` (what the serving planner asks).

    ``model_or_profile`` is a Profile traced at that batch size, a dict {batch: Profile}, or an
    ``nn.Module`` with ``input_fn(batch)`` building its input (traced on the meta device when the
    module lives there). ``mode``: "infer" or "train" (train needs ``target_fn``).
    """
    if batch < 1:
        raise HwError(f"predict_latency: batch must be >= 1, got {batch}")
    if isinstance(model_or_profile, dict):
        if batch not in model_or_profile:
            raise HwError(f"predict_latency: no profile at batch {batch}; have {sorted(model_or_profile)}")
        model_or_profile = model_or_profile[batch]
    if isinstance(model_or_profile, Profile):
        if model_or_profile.batch != batch:
            raise HwError(f"predict_latency: profile was traced at batch {model_or_profile.batch}, asked for {batch}; "
                          "pass the module with input_fn to retrace")
        return predict(model_or_profile, device).time_s
    import torch

    from leanml.hw.trace import trace_inference, trace_train_step

    if not isinstance(model_or_profile, torch.nn.Module):
        raise HwError(f"predict_latency: expected a Profile or an nn.Module, got {type(model_or_profile).__name__}")
    if input_fn is None:
        raise HwError("predict_latency: pass input_fn(batch) to trace a module")
    if mode == "infer":
        prof = trace_inference(model_or_profile, input_fn(batch))
    elif mode == "train":
        if target_fn is None:
            raise HwError("predict_latency: mode='train' needs target_fn(batch)")
        prof = trace_train_step(model_or_profile, input_fn(batch), target_fn(batch))
    else:
        raise HwError(f"predict_latency: mode must be 'infer' or 'train', got {mode!r}")
    return predict(prof, device).time_s


@dataclass
class Projection:
    """A measured cost carried over to another device by the ratio of predicted times."""

    from_device: str
    to_device: str
    measured_s: float
    projected_s: float
    ratio: float  # projected / measured
    energy_j: float  # estimate on the target device (power model)
    method: str
    notes: dict[str, str] = field(default_factory=dict)


def project_cost(measured: Any, from_device: str | Device, to_device: str | Device, *,
                 profile: Profile | None = None, flops: float | None = None,
                 bytes_moved: float | None = None) -> Projection:
    """Project a measured wall time (seconds or a `leanml.meter.Cost`) from one device to another.

    With a ``profile`` the ratio is per kernel (most faithful); with ``flops`` (and ``bytes_moved``)
    it is the roofline ratio of that total work; with neither, the ratio of fp32 peaks (stated).
    """
    src, dst = get_device(from_device), get_device(to_device)
    wall = getattr(measured, "wall_s", measured)
    if flops is None and getattr(measured, "flops", None) is not None:
        flops = float(measured.flops)
    if wall is None or not isinstance(wall, int | float) or wall <= 0:
        raise HwError(f"project_cost: measured wall time must be a positive number, got {wall!r}")
    if profile is not None:
        a, b = predict(profile, src), predict(profile, dst)
        ratio, method = b.time_s / a.time_s, "per-kernel roofline of the traced profile"
        util = b.utilization
    elif flops is not None:
        op = OpSpec("matmul", float(flops), float(bytes_moved or 0.0), "fp32", "projected work")
        ea, eb = CostModel(src, overhead=False).estimate(op), CostModel(dst, overhead=False).estimate(op)
        ratio, method = eb.time_s / ea.time_s, "roofline of total FLOPs" + (" and bytes" if bytes_moved else "")
        util = _utilization(dst, eb)
    else:
        ratio = src.peak("fp32") / dst.peak("fp32")
        method, util = "ratio of fp32 peaks (no FLOP count given: a coarse guess)", 1.0
    proj = float(wall) * ratio
    return Projection(src.id, dst.id, float(wall), proj, ratio, dst.power.at(util) * proj, method,
                      {"energy_j": "estimate from the target's power model"})
