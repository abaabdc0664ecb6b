"""Abstract devices and systems as validated data: dataclasses built from TOML tables.

A file holds ``[devices.<id>]`` and ``[systems.<id>]`` tables. Every error names the field path
(``devices.h200.memory[1].bandwidth``) so a broken catalog entry is found at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from leanml.hw.errors import SchemaError
from leanml.hw.units import parse_quantity

DEVICE_CLASSES = ("cpu", "gpu", "accelerator")
DTYPES = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8")
DTYPE_BYTES = {"fp64": 8, "fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}
LINK_TOPOLOGIES = ("point-to-point", "switch", "ring", "mesh")
COLLECTIVES = ("point_to_point", "all_reduce", "all_gather", "reduce_scatter", "broadcast")
COLLECTIVE_ALGORITHMS = {
    "point_to_point": ("alpha_beta",),
    "all_reduce": ("ring", "tree"),
    "all_gather": ("ring",),
    "reduce_scatter": ("ring",),
    "broadcast": ("tree", "ring"),
}


@dataclass(frozen=True)
class MemoryLevel:
    """One level of a device's memory hierarchy (aggregate over the device's compute units)."""

    name: str
    capacity: float  # bytes
    bandwidth: float  # bytes/s
    latency: float | None = None  # seconds; None = not known
    granularity: int = 64  # bytes moved per access (cache line, DRAM burst, GPU sector)
    # How a growing working set spills to the next level: it starts at ``spill_start`` x capacity and is
    # complete ``spill_span`` times later, linear in log(size) (`leanml.hw.cache_spill`; calibrated on a CPU's
    # last cache level, this default elsewhere).
    spill_start: float = 0.25
    spill_span: float = 4.0

    def spill_share(self, working_set: float) -> float:
        """Share of ``working_set`` bytes served by the next level (0: this level alone)."""
        return spill_share(working_set, self.capacity, self.spill_start, self.spill_span)


def spill_share(ws: float, capacity: float, start: float, span: float) -> float:
    """Share of a ``ws``-byte working set served by the level after one of ``capacity`` bytes: 0 up to
    ``start * capacity``, then linear in log(size), 1 from ``start * span * capacity`` on."""
    return min(max(math.log(max(ws, 1.0) / (start * capacity)) / math.log(span), 0.0), 1.0)


@dataclass(frozen=True)
class Efficiency:
    """Achieved fraction of a peak as a saturating function of work size.

    ``eff(w) = max * w / (w + half_work)``: ``half_work`` is the work (FLOPs or bytes) at which
    half of ``max`` is reached. The time it implies, ``(w + half_work) / (peak * max)``, is a rate
    plus a fixed start-up cost, which is how small kernels behave.
    """

    max: float
    half_work: float = 0.0
    source: str = ""

    def at(self, work: float) -> float:
        if work <= 0:
            return self.max
        return self.max * work / (work + self.half_work)


@dataclass(frozen=True)
class Power:
    """Power model: ``idle + utilization * (max - idle)`` watts; an estimate, not a measurement."""

    idle: float
    max: float
    source: str = ""

    def at(self, utilization: float) -> float:
        u = min(max(utilization, 0.0), 1.0)
        return self.idle + u * (self.max - self.idle)


@dataclass(frozen=True)
class HostLink:
    """The link between a device and its host (PCIe, NVLink-C2C): per-direction bandwidth."""

    bandwidth: float
    latency: float = 0.0
    kind: str = "pcie"


@dataclass(frozen=True)
class Device:
    """An abstract device: compute units, peak rates per dtype, memory levels, functions, power."""

    id: str
    name: str
    cls: str
    compute_units: int
    peak_flops: dict[str, float]
    memory: tuple[MemoryLevel, ...]
    functions: tuple[str, ...]
    power: Power
    efficiency: dict[str, Efficiency] = field(default_factory=dict)
    op_overhead: float = 0.0  # seconds of framework dispatch / kernel launch per operation
    view_overhead: float = 0.0  # seconds per metadata-only op (view, transpose, detach)
    autograd_overhead: float = 0.0  # extra seconds per kernel of a step that records and runs autograd
    backward_overhead: float = 0.0  # fixed seconds per backward() call (engine start, graph root, grad setup)
    module_overhead: float = 0.0  # seconds of Python per torch.nn module forward call (around its kernels)
    library_module_overhead: float = 0.0  # the same for modules of other packages (transformers, peft, user code)
    # Outputs at least this large get fresh pages from the OS every call (glibc mmaps big blocks), paid at
    # first_touch_bandwidth on top of the kernel (page faults + zeroing); None = not modelled.
    fresh_alloc_threshold: float | None = None
    first_touch_bandwidth: float | None = None
    # GEMM operand traffic beyond the compute term, seconds per input byte, by the memory level the operands
    # come from: ``{level: ((m, s_per_byte), ...)}`` over the GEMM's thin dimension m (m = 1 is the GEMV path,
    # m >= 2 the blocked path that packs its operands on every call). Measured by `hw calibrate` on a CPU;
    # empty (no term) for devices whose libraries do not repack per call.
    gemm_pack: dict[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    host_link: HostLink | None = None
    peak_source: str = "datasheet"  # "datasheet" or "measured"
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def main_memory(self) -> MemoryLevel:
        """The largest (last) memory level: HBM, DRAM."""
        return self.memory[-1]

    def level(self, name: str) -> MemoryLevel:
        for lv in self.memory:
            if lv.name == name:
                return lv
        raise SchemaError(f"devices.{self.id}.memory", f"no level named {name!r}; have {[m.name for m in self.memory]}")

    def peak(self, dtype: str) -> float:
        if dtype not in self.peak_flops:
            raise SchemaError(f"devices.{self.id}.peak_flops.{dtype}",
                              f"device has no {dtype} rate; it supports {sorted(self.peak_flops)}")
        return self.peak_flops[dtype]

    def ridge_point(self, dtype: str = "fp32", level: str | None = None) -> float:
        """Compute-to-memory ratio in FLOP/byte: peak FLOP/s of ``dtype`` over the level's bandwidth."""
        lv = self.main_memory if level is None else self.level(level)
        return self.peak(dtype) / lv.bandwidth

    def level_for(self, working_set: float) -> MemoryLevel:
        """The smallest level that holds ``working_set`` bytes in half its capacity (main memory if none).

        Half, because caches are shared (with other data of the program, other cores and processes) and
        not perfectly associative. (The cost model blends neighbouring levels near the boundary.)"""
        for lv in self.memory[:-1]:
            if working_set <= 0.5 * lv.capacity:
                return lv
        return self.main_memory

    def efficiency_for(self, op: str, dtype: str | None = None) -> Efficiency:
        """Efficiency curve for an op class, most specific first: ``op_dtype``, ``op``, ``default``."""
        for key in ((f"{op}_{dtype}",) if dtype else ()) + (op, "default"):
            if key in self.efficiency:
                return self.efficiency[key]
        return Efficiency(1.0, 0.0, "no curve given: peak assumed reachable")

    def pack_cost(self, level: str, m: int) -> float:
        """Seconds per GEMM input byte at thin dimension ``m`` with operands in ``level`` (0 if not measured).

        Piecewise linear in log2(m) between the measured points, flat beyond them; a level without points
        takes the nearest measured level (slower levels first: a cache is never slower than memory)."""
        if not self.gemm_pack:
            return 0.0
        names = [lv.name for lv in self.memory]
        i = names.index(level) if level in names else len(names) - 1
        order = names[i:] + names[:i][::-1]
        pts = next((self.gemm_pack[n] for n in order if n in self.gemm_pack), ())
        if not pts:
            return 0.0
        import math

        x = math.log2(max(m, 1))
        xs = [math.log2(max(p[0], 1)) for p in pts]
        if x <= xs[0]:
            return pts[0][1]
        for i in range(1, len(pts)):
            if x <= xs[i]:
                x0, x1, y0, y1 = xs[i - 1], xs[i], pts[i - 1][1], pts[i][1]
                return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
        return pts[-1][1]


@dataclass(frozen=True)
class Link:
    """A link between two device instances of a system: per-direction bandwidth and latency."""

    a: str
    b: str
    bandwidth: float
    latency: float
    kind: str = ""


@dataclass(frozen=True)
class System:
    """Devices (instances of catalog devices) joined by links, with collective algorithms."""

    id: str
    name: str
    instances: dict[str, Device]  # instance id -> device
    links: tuple[Link, ...]
    topology: str
    collectives: dict[str, str]

    def link(self, a: str, b: str) -> Link:
        for ln in self.links:
            if {ln.a, ln.b} == {a, b}:
                return ln
        raise SchemaError(f"systems.{self.id}.links", f"no link between {a!r} and {b!r}")


# ---------------------------------------------------------------- parsing helpers
def _table(d: Any, path: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise SchemaError(path, f"expected a table, got {type(d).__name__}")
    return d


def _known(d: dict[str, Any], path: str, allowed: set[str]) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise SchemaError(f"{path}.{unknown[0]}", f"unknown field; allowed fields are {sorted(allowed)}")


def _req(d: dict[str, Any], key: str, path: str) -> Any:
    if key not in d:
        raise SchemaError(f"{path}.{key}", "required field is missing")
    return d[key]


def _str(d: dict[str, Any], key: str, path: str, default: str | None = None) -> str:
    v = d.get(key, default) if default is not None else _req(d, key, path)
    if not isinstance(v, str) or not v:
        raise SchemaError(f"{path}.{key}", f"expected a non-empty string, got {v!r}")
    return v


def _int(d: dict[str, Any], key: str, path: str, default: int | None = None, minimum: int = 1) -> int:
    v = d.get(key, default) if default is not None else _req(d, key, path)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise SchemaError(f"{path}.{key}", f"expected an integer >= {minimum}, got {v!r}")
    return v


def _qty(d: dict[str, Any], key: str, path: str, kind: str, *, default: float | None = None,
         optional: bool = False, positive: bool = True) -> float | None:
    if key not in d:
        if optional:
            return default
        raise SchemaError(f"{path}.{key}", "required field is missing")
    v = parse_quantity(d[key], kind, f"{path}.{key}")
    if positive and v <= 0:
        raise SchemaError(f"{path}.{key}", f"must be > 0, got {d[key]!r}")
    return v


def _efficiency(d: Any, path: str) -> Efficiency:
    d = _table(d, path)
    _known(d, path, {"max", "half_work", "source"})
    mx = _req(d, "max", path)
    if isinstance(mx, bool) or not isinstance(mx, int | float) or not 0 < mx <= 1.0:
        raise SchemaError(f"{path}.max", f"expected a fraction of the peak in (0, 1], got {mx!r}")
    hw = d.get("half_work", 0.0)
    if isinstance(hw, bool) or not isinstance(hw, int | float) or hw < 0:
        raise SchemaError(f"{path}.half_work", f"expected a number >= 0 (FLOPs or bytes), got {hw!r}")
    src = d.get("source", "")
    if not isinstance(src, str):
        raise SchemaError(f"{path}.source", "expected a string")
    return Efficiency(float(mx), float(hw), src)


_DEVICE_FIELDS = {"name", "class", "compute_units", "peak_flops", "memory", "functions", "power",
                  "efficiency", "op_overhead", "view_overhead", "autograd_overhead", "backward_overhead",
                  "module_overhead",
                  "library_module_overhead", "host_link",
                  "peak_source",
                  "fresh_alloc_threshold", "first_touch_bandwidth", "gemm_pack",
                  "calibration"}


def parse_device(dev_id: str, d: Any, path: str | None = None) -> Device:
    """Validate one ``[devices.<id>]`` table into a `Device`."""
    path = path or f"devices.{dev_id}"
    d = _table(d, path)
    _known(d, path, _DEVICE_FIELDS)
    cls = _str(d, "class", path)
    if cls not in DEVICE_CLASSES:
        raise SchemaError(f"{path}.class", f"expected one of {list(DEVICE_CLASSES)}, got {cls!r}")
    peaks_raw = _table(_req(d, "peak_flops", path), f"{path}.peak_flops")
    if not peaks_raw:
        raise SchemaError(f"{path}.peak_flops", "needs at least one dtype, e.g. fp32 = \"67 TFLOP/s\"")
    peaks: dict[str, float] = {}
    for dt in peaks_raw:
        if dt not in DTYPES:
            raise SchemaError(f"{path}.peak_flops.{dt}", f"unknown dtype; expected some of {list(DTYPES)}")
        peaks[dt] = _qty(peaks_raw, dt, f"{path}.peak_flops", "flops")  # type: ignore[assignment]
    mem_raw = _req(d, "memory", path)
    if not isinstance(mem_raw, list) or not mem_raw:
        raise SchemaError(f"{path}.memory", "expected a non-empty array of tables ([[...memory]])")
    levels = []
    for i, m in enumerate(mem_raw):
        mp = f"{path}.memory[{i}]"
        m = _table(m, mp)
        _known(m, mp, {"name", "capacity", "bandwidth", "latency", "granularity", "spill_start", "spill_span"})
        levels.append(MemoryLevel(
            name=_str(m, "name", mp),
            capacity=_qty(m, "capacity", mp, "bytes"),  # type: ignore[arg-type]
            bandwidth=_qty(m, "bandwidth", mp, "bandwidth"),  # type: ignore[arg-type]
            latency=_qty(m, "latency", mp, "time", optional=True),
            granularity=_int(m, "granularity", mp, default=64),
            spill_start=_qty(m, "spill_start", mp, "ratio", optional=True, default=0.25),  # type: ignore[arg-type]
            spill_span=_qty(m, "spill_span", mp, "ratio", optional=True, default=4.0),  # type: ignore[arg-type]
        ))
        if levels[-1].spill_span <= 1.0:
            raise SchemaError(f"{mp}.spill_span", f"must be > 1 (a factor of sizes), got {levels[-1].spill_span}")
    names = [lv.name for lv in levels]
    if len(set(names)) != len(names):
        raise SchemaError(f"{path}.memory", f"level names must be unique, got {names}")
    for i in range(1, len(levels)):
        if levels[i].capacity < levels[i - 1].capacity:
            raise SchemaError(f"{path}.memory[{i}].capacity",
                              "levels must be ordered smallest (closest to compute) first")
    funcs = d.get("functions", [])
    if not isinstance(funcs, list) or not all(isinstance(f, str) for f in funcs):
        raise SchemaError(f"{path}.functions", "expected an array of strings, e.g. [\"gemm\", \"conv\"]")
    pw = _table(_req(d, "power", path), f"{path}.power")
    _known(pw, f"{path}.power", {"idle", "max", "source"})
    idle = _qty(pw, "idle", f"{path}.power", "power", positive=False)
    pmax = _qty(pw, "max", f"{path}.power", "power")
    if idle > pmax:  # type: ignore[operator]
        raise SchemaError(f"{path}.power.idle", f"idle ({idle} W) exceeds max ({pmax} W)")
    power = Power(idle, pmax, str(pw.get("source", "")))  # type: ignore[arg-type]
    eff_raw = _table(d.get("efficiency", {}), f"{path}.efficiency")
    eff = {k: _efficiency(v, f"{path}.efficiency.{k}") for k, v in eff_raw.items()}
    host = None
    if "host_link" in d:
        hp = f"{path}.host_link"
        h = _table(d["host_link"], hp)
        _known(h, hp, {"bandwidth", "latency", "kind"})
        host = HostLink(_qty(h, "bandwidth", hp, "bandwidth"),  # type: ignore[arg-type]
                        _qty(h, "latency", hp, "time", optional=True, default=0.0, positive=False),  # type: ignore[arg-type]
                        str(h.get("kind", "pcie")))
    peak_source = _str(d, "peak_source", path, default="datasheet")
    if peak_source not in ("datasheet", "measured"):
        raise SchemaError(f"{path}.peak_source", f"expected \"datasheet\" or \"measured\", got {peak_source!r}")
    calib = _table(d.get("calibration", {}), f"{path}.calibration")
    return Device(
        id=dev_id, name=_str(d, "name", path), cls=cls, compute_units=_int(d, "compute_units", path),
        peak_flops=peaks, memory=tuple(levels), functions=tuple(funcs), power=power, efficiency=eff,
        op_overhead=_qty(d, "op_overhead", path, "time", optional=True, default=0.0, positive=False),  # type: ignore[arg-type]
        view_overhead=_qty(d, "view_overhead", path, "time", optional=True, default=0.0, positive=False),  # type: ignore[arg-type]
        autograd_overhead=_qty(d, "autograd_overhead", path, "time", optional=True, default=0.0,  # type: ignore[arg-type]
                               positive=False),
        backward_overhead=_qty(d, "backward_overhead", path, "time", optional=True, default=0.0,  # type: ignore[arg-type]
                               positive=False),
        module_overhead=_qty(d, "module_overhead", path, "time", optional=True, default=0.0,  # type: ignore[arg-type]
                             positive=False),
        library_module_overhead=_qty(d, "library_module_overhead", path, "time", optional=True,  # type: ignore[arg-type]
                                     default=0.0, positive=False),
        fresh_alloc_threshold=_qty(d, "fresh_alloc_threshold", path, "bytes", optional=True),
        first_touch_bandwidth=_qty(d, "first_touch_bandwidth", path, "bandwidth", optional=True),
        gemm_pack=_gemm_pack(d.get("gemm_pack", {}), f"{path}.gemm_pack", {lv.name for lv in levels}),
        host_link=host, peak_source=peak_source, calibration=dict(calib),
    )


def _gemm_pack(d: Any, path: str, levels: set[str]) -> dict[str, tuple[tuple[float, float], ...]]:
    d = _table(d, path)
    out = {}
    for name, pts in d.items():
        if name not in levels:
            raise SchemaError(f"{path}.{name}", f"no memory level named {name!r}; levels are {sorted(levels)}")
        ok = isinstance(pts, list) and pts and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, int | float) and not isinstance(v, bool)
                                                        for v in p) and p[0] >= 1 and p[1] >= 0 for p in pts)
        if not ok or [p[0] for p in pts] != sorted({p[0] for p in pts}):
            raise SchemaError(f"{path}.{name}", "expected [[m, seconds_per_byte], ...] with m >= 1 strictly "
                                                "increasing and seconds >= 0")
        out[name] = tuple((float(m), float(v)) for m, v in pts)
    return out


def parse_system(sys_id: str, d: Any, devices: dict[str, Device], path: str | None = None) -> System:
    """Validate one ``[systems.<id>]`` table; ``devices`` resolves each instance's device id."""
    path = path or f"systems.{sys_id}"
    d = _table(d, path)
    _known(d, path, {"name", "instances", "links", "topology", "collectives"})
    inst_raw = _req(d, "instances", path)
    if not isinstance(inst_raw, list) or not inst_raw:
        raise SchemaError(f"{path}.instances", "expected a non-empty array of {id, device, count?} tables")
    instances: dict[str, Device] = {}
    for i, it in enumerate(inst_raw):
        ip = f"{path}.instances[{i}]"
        it = _table(it, ip)
        _known(it, ip, {"id", "device", "count"})
        dev_name = _str(it, "device", ip)
        if dev_name not in devices:
            raise SchemaError(f"{ip}.device", f"unknown device {dev_name!r}; known: {sorted(devices)}")
        base, count = _str(it, "id", ip), _int(it, "count", ip, default=1)
        for k in range(count):
            iid = base if count == 1 else f"{base}{k}"
            if iid in instances:
                raise SchemaError(f"{ip}.id", f"duplicate instance id {iid!r}")
            instances[iid] = devices[dev_name]
    topology = _str(d, "topology", path, default="point-to-point")
    if topology not in LINK_TOPOLOGIES:
        raise SchemaError(f"{path}.topology", f"expected one of {list(LINK_TOPOLOGIES)}, got {topology!r}")
    links = []
    for i, ln in enumerate(d.get("links", [])):
        lp = f"{path}.links[{i}]"
        ln = _table(ln, lp)
        _known(ln, lp, {"a", "b", "bandwidth", "latency", "kind", "all_pairs"})
        if ln.get("all_pairs"):
            ends = [(a, b) for ai, a in enumerate(instances) for b in list(instances)[ai + 1:]]
        else:
            ends = [(_str(ln, "a", lp), _str(ln, "b", lp))]
        bw = _qty(ln, "bandwidth", lp, "bandwidth")
        lat = _qty(ln, "latency", lp, "time", positive=False)
        for a, b in ends:
            for end, key in ((a, "a"), (b, "b")):
                if end not in instances:
                    raise SchemaError(f"{lp}.{key}", f"unknown instance {end!r}; instances are {sorted(instances)}")
            links.append(Link(a, b, bw, lat, str(ln.get("kind", ""))))  # type: ignore[arg-type]
    coll_raw = _table(d.get("collectives", {}), f"{path}.collectives")
    collectives = {"point_to_point": "alpha_beta", "all_reduce": "ring", "all_gather": "ring",
                   "reduce_scatter": "ring", "broadcast": "tree"}
    for k, v in coll_raw.items():
        if k not in COLLECTIVES:
            raise SchemaError(f"{path}.collectives.{k}", f"unknown primitive; expected some of {list(COLLECTIVES)}")
        if v not in COLLECTIVE_ALGORITHMS[k]:
            raise SchemaError(f"{path}.collectives.{k}",
                              f"unknown algorithm {v!r}; expected {COLLECTIVE_ALGORITHMS[k]}")
        collectives[k] = v
    return System(sys_id, _str(d, "name", path), instances, tuple(links), topology, collectives)
