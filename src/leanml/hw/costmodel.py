"""Roofline cost of single operations, with size-dependent efficiency curves.

    time = op_overhead + max(flops / (peak[dtype] * eff_c(flops)) + pack, bytes / (bw[level] * eff_m(bytes)))

``eff_c``/``eff_m`` are the device's saturating efficiency curves (calibrated on this machine,
assumed elsewhere); ``level`` is the smallest memory level holding the op's working set. Op
constructors below count FLOPs as 2 per multiply-add, bytes as tensors read plus written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from leanml.hw.errors import HwError
from leanml.hw.schema import DTYPE_BYTES, Device

COMPUTE_KINDS = ("matmul", "conv", "attention")
MEMORY_KINDS = ("elementwise", "reduction", "copy")
KINDS = COMPUTE_KINDS + MEMORY_KINDS + ("view",)


@dataclass(frozen=True)
class OpSpec:
    """One operation: its class, FLOPs and bytes moved (a kernel, as the cost model sees it)."""

    kind: str
    flops: float
    bytes: float
    dtype: str = "fp32"
    name: str = ""
    working_set: float | None = None  # bytes resident at once; default = ``bytes``
    count: int = 1  # identical repetitions
    vclass: str = ""  # elementwise/reduction work class: "" (plain), "transcendental", "pool"
    alloc_bytes: float = 0.0  # bytes of the largest output the kernel allocates (fresh memory)
    gemm: tuple[int, int, int, int] | None = None  # (batch, m, n, k) of a GEMM: [m x k] @ [k x n], batch times

    @property
    def gemm_thin(self) -> int:
        """The GEMM's smaller output dimension (1: a matrix-vector product); 0 when not a known GEMM."""
        return min(self.gemm[1], self.gemm[2]) if self.gemm else 0

    @property
    def gemm_input_bytes(self) -> float:
        """Bytes of the GEMM's two input matrices (what the blocked kernel streams and packs); for attention,
        Q, K and V once per query head (the flash kernel's micro-GEMMs re-read a shared K/V head per query
        head under grouped-query attention)."""
        if not self.gemm:
            return 0.0
        b, m, n, k = self.gemm
        if self.kind == "attention":
            return float(b * (m * k + 2 * n * k) * DTYPE_BYTES[self.dtype])
        return float(b * (m * k + k * n) * DTYPE_BYTES[self.dtype])

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise HwError(f"OpSpec.kind: unknown op class {self.kind!r}; expected one of {list(KINDS)}")
        if self.flops < 0 or self.bytes < 0:
            raise HwError(f"OpSpec {self.name or self.kind}: flops and bytes must be >= 0")
        if self.dtype not in DTYPE_BYTES:
            raise HwError(f"OpSpec.dtype: unknown dtype {self.dtype!r}; expected one of {list(DTYPE_BYTES)}")

    @property
    def intensity(self) -> float:
        """Arithmetic intensity in FLOP/byte."""
        return self.flops / self.bytes if self.bytes else float("inf")


@dataclass(frozen=True)
class OpEstimate:
    """Predicted time of one op (all repetitions) and which roof bounds it."""

    op: OpSpec
    time_s: float
    compute_s: float
    memory_s: float
    overhead_s: float
    level: str
    bound: str  # "compute", "memory" or "overhead"


@dataclass
class CostModel:
    """Roofline with efficiency curves for one device; ``overhead=False`` drops the per-op dispatch cost."""

    device: Device
    overhead: bool = True
    memory_kind_efficiency: dict[str, str] = field(default_factory=lambda: {"reduction": "reduction"})

    def estimate(self, op: OpSpec) -> OpEstimate:
        dev = self.device
        ovh = dev.op_overhead if (self.overhead and op.kind != "view") else 0.0
        if op.kind == "view":
            v = dev.view_overhead * op.count if self.overhead else 0.0
            return OpEstimate(op, v, 0.0, 0.0, v, dev.memory[0].name, "overhead")
        compute = 0.0
        if op.flops > 0:
            eff = None
            bias_key = f"matmul_bias_{op.dtype}" if op.dtype != "fp32" else "matmul_bias"
            biased = op.name.startswith(("aten.addmm", "aten.baddbmm"))
            if op.kind == "matmul" and biased and bias_key in dev.efficiency:
                eff = dev.efficiency[bias_key]  # GEMM + bias, calibrated where the backend adds it separately
            elif op.kind in COMPUTE_KINDS:
                eff = dev.efficiency_for(op.kind, op.dtype)
            if eff is None:  # elementwise/reduction work: one FLOP per element at the vector class's efficiency
                key = f"vector_{op.vclass}" if op.vclass else "vector"
                eff = dev.efficiency[key] if key in dev.efficiency else dev.efficiency_for("vector", op.dtype)
            peak = self._peak(op)
            compute = op.flops / (peak * eff.at(op.flops))
        ws = op.working_set if op.working_set is not None else op.bytes
        lv = dev.level_for(ws)
        pack = 0.0
        if op.kind in ("matmul", "attention") and op.gemm and dev.gemm_pack:
            pack = op.gemm_input_bytes * sum(w * dev.pack_cost(lvl.name, op.gemm_thin)
                                             for lvl, w in self._level_mix(ws))
        memory = 0.0
        if op.bytes > 0:
            memory = sum(w * op.bytes / (lvl.bandwidth * self._memory_efficiency(op, lvl.name).at(op.bytes))
                         for lvl, w in self._level_mix(ws))
        if (dev.first_touch_bandwidth and dev.fresh_alloc_threshold is not None
                and op.alloc_bytes >= dev.fresh_alloc_threshold):
            memory += op.alloc_bytes / dev.first_touch_bandwidth  # page faults on memory fresh from the OS
        body = max(compute + pack, memory)
        bound = "compute" if compute >= max(memory, pack) else "memory"
        memory = max(memory, pack)
        if ovh > body:
            bound = "overhead"
        t = (ovh + body) * op.count
        return OpEstimate(op, t, compute * op.count, memory * op.count, ovh * op.count, lv.name, bound)

    def time(self, op: OpSpec) -> float:
        return self.estimate(op).time_s

    def _peak(self, op: OpSpec) -> float:
        dev, dt = self.device, op.dtype
        if op.kind not in COMPUTE_KINDS and "fp32" in dev.peak_flops:
            return dev.peak_flops["fp32"]  # elementwise/reduction work runs on the vector units, not tensor cores
        if dt in dev.peak_flops:
            return dev.peak_flops[dt]
        raise HwError(f"device {dev.id} has no {dt} rate (it has {sorted(dev.peak_flops)}); "
                      f"cannot cost a {dt} {op.kind}")

    def _level_mix(self, ws: float) -> list[tuple]:
        """Memory levels serving a working set, with weights: a level serves alone up to ``spill_start`` of
        its capacity, then hands over to the next level linearly in log(size) over a factor ``spill_span``
        (caches fill gradually: associativity, other data, other cores and processes; `leanml.hw.cache_spill`
        measures the handover of a CPU's last cache level)."""
        levels = self.device.memory
        for i, lv in enumerate(levels[:-1]):
            if ws <= lv.spill_start * lv.spill_span * lv.capacity:
                x = lv.spill_share(ws)
                return [(lv, 1.0 - x), (levels[i + 1], x)] if x > 0 else [(lv, 1.0)]
        return [(levels[-1], 1.0)]

    def _memory_efficiency(self, op: OpSpec, level: str):
        dev = self.device
        extra = self.memory_kind_efficiency.get(op.kind)
        for key in ([f"{extra}_{level}", extra] if extra else []) + [f"memory_{level}", "memory"]:
            if key in dev.efficiency:
                return dev.efficiency[key]
        return dev.efficiency_for("memory")


# ---------------------------------------------------------------- op constructors
def _b(dtype: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise HwError(f"unknown dtype {dtype!r}; expected one of {list(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def _pos(**kw: float) -> None:
    for k, v in kw.items():
        if v < 1:
            raise HwError(f"{k} must be >= 1, got {v}")


def matmul(m: int, n: int, k: int, dtype: str = "fp32", batch: int = 1) -> OpSpec:
    """(batch x) [m x k] @ [k x n]: 2mnk FLOPs, A + B + C bytes."""
    _pos(m=m, n=n, k=k, batch=batch)
    return OpSpec("matmul", 2.0 * batch * m * n * k, float(batch * (m * k + k * n + m * n) * _b(dtype)), dtype,
                  f"matmul {batch}x{m}x{n}x{k}", gemm=(batch, m, n, k))


def conv2d(n: int, c_in: int, h: int, w: int, c_out: int, kh: int, kw: int, stride: int = 1,
           padding: int = 0, dtype: str = "fp32") -> OpSpec:
    """2-D convolution as in PyTorch: 2 * N*Cout*Hout*Wout*Cin*kh*kw FLOPs; input + weight + output bytes."""
    _pos(n=n, c_in=c_in, h=h, w=w, c_out=c_out, kh=kh, kw=kw, stride=stride)
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    if ho < 1 or wo < 1:
        raise HwError(f"conv2d: kernel {kh}x{kw} does not fit input {h}x{w} with padding {padding}")
    flops = 2.0 * n * c_out * ho * wo * c_in * kh * kw
    by = (n * c_in * h * w + c_out * c_in * kh * kw + n * c_out * ho * wo) * _b(dtype)
    return OpSpec("conv", flops, float(by), dtype, f"conv {n}x{c_in}x{h}x{w}->{c_out} k{kh}")


def attention(batch: int, heads: int, seq_q: int, seq_k: int, head_dim: int, dtype: str = "fp32",
              fused: bool = True) -> OpSpec:
    """Scaled dot-product attention: 4*b*h*sq*sk*d FLOPs (QK^T and PV).

    ``fused`` (flash-style) moves Q, K, V and O once; unfused also writes and reads the sq x sk scores.
    """
    _pos(batch=batch, heads=heads, seq_q=seq_q, seq_k=seq_k, head_dim=head_dim)
    flops = 4.0 * batch * heads * seq_q * seq_k * head_dim
    by = batch * heads * (2 * seq_q + 2 * seq_k) * head_dim * _b(dtype)
    if not fused:
        by += 3 * batch * heads * seq_q * seq_k * _b(dtype)
    return OpSpec("attention", flops, float(by), dtype, f"attention b{batch} h{heads} s{seq_q}x{seq_k} d{head_dim}",
                  gemm=(batch * heads, seq_q, seq_k, head_dim) if fused else None)


def elementwise(numel: int, n_inputs: int = 2, n_outputs: int = 1, dtype: str = "fp32",
                vclass: str = "") -> OpSpec:
    """An elementwise op over ``numel`` elements reading ``n_inputs`` and writing ``n_outputs`` tensors.

    ``vclass`` "transcendental" (exp, erf, tanh...) or "pool" picks the device's slower vector rate."""
    _pos(numel=numel)
    if vclass not in ("", "transcendental", "pool", "sort"):
        raise HwError(f"elementwise: vclass must be '', 'transcendental', 'pool' or 'sort', got {vclass!r}")
    return OpSpec("elementwise", float(numel), float((n_inputs + n_outputs) * numel * _b(dtype)),
                  dtype, f"elementwise {numel}", vclass=vclass)


def reduction(numel: int, out_numel: int = 1, dtype: str = "fp32") -> OpSpec:
    """A reduction (sum, max, norm) of ``numel`` elements to ``out_numel``."""
    _pos(numel=numel, out_numel=out_numel)
    return OpSpec("reduction", float(numel), float((numel + out_numel) * _b(dtype)), dtype, f"reduction {numel}")


def copy(nbytes: float, name: str = "copy") -> OpSpec:
    """A copy of ``nbytes`` within one device: read once, write once."""
    if nbytes < 0:
        raise HwError(f"copy: nbytes must be >= 0, got {nbytes}")
    return OpSpec("copy", 0.0, 2.0 * nbytes, "fp32", name)


def projection(n_examples: int, d: int, k: int, dtype: str = "fp32") -> OpSpec:
    """Dense JL projection of ``n_examples`` d-dim gradients to k dims: k*d multiply-adds per example."""
    op = matmul(n_examples, k, d, dtype)
    return OpSpec("matmul", op.flops, op.bytes, dtype, f"projection n{n_examples} d{d}->k{k}", gemm=op.gemm)


def search(n_queries: int, n: int, k: int, dtype: str = "fp32") -> list[OpSpec]:
    """Exact inner-product search of ``n_queries`` k-dim queries over ``n`` stored rows: n*k
    multiply-adds per query, then a top-k pass over the n scores of each query."""
    scores = matmul(n_queries, n, k, dtype)
    top = reduction(n_queries * n, n_queries, "fp32")
    return [OpSpec("matmul", scores.flops, scores.bytes, dtype, f"search scores q{n_queries} n{n} k{k}",
                   gemm=scores.gemm),
            OpSpec("reduction", top.flops, top.bytes, "fp32", f"top-k of q{n_queries} x n{n}", vclass="sort")]


def transfer_time(nbytes: float, bandwidth: float, latency: float = 0.0) -> float:
    """Data movement over a link or between memory levels: latency + bytes / bandwidth."""
    if nbytes < 0 or bandwidth <= 0:
        raise HwError(f"transfer_time: need nbytes >= 0 and bandwidth > 0, got {nbytes}, {bandwidth}")
    return latency + nbytes / bandwidth


def level_transfer_time(device: Device, nbytes: float, src: str, dst: str) -> float:
    """Moving ``nbytes`` from memory level ``src`` to ``dst`` of one device: bounded by the slower level."""
    a, b = device.level(src), device.level(dst)
    return transfer_time(nbytes, min(a.bandwidth, b.bandwidth), max(a.latency or 0.0, b.latency or 0.0))


def host_transfer_time(device: Device, nbytes: float) -> float:
    """Host <-> device copy over the device's host link (PCIe, NVLink-C2C)."""
    if device.host_link is None:
        raise HwError(f"device {device.id} has no host_link (it shares the host's memory)")
    return transfer_time(nbytes, device.host_link.bandwidth, device.host_link.latency)


def total(model: CostModel, ops: list[OpSpec]) -> float:
    """Sum of the predicted times of ``ops`` run one after another."""
    return sum(model.time(o) for o in ops)
