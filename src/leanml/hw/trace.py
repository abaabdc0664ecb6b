"""Trace a PyTorch workload into per-operation FLOPs and bytes (a `Profile`) for the cost model.

A `TorchDispatchMode` records every ATen kernel as it actually runs (after autograd, functorch
batching and composite decomposition), so a traced training step holds the backward kernels and a
traced ``vmap(grad(...))`` the batched per-example ones. FLOPs of GEMM/conv/attention come from
``torch.utils.flop_counter``'s formulas; bytes are the tensors each kernel reads plus writes.
Tracing works on the ``meta`` device too, which costs shapes only (no weights, no compute).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry
from torch.utils.module_tracker import ModuleTracker

from leanml.hw.costmodel import OpSpec
from leanml.hw.errors import HwError

_DTYPES = {torch.float64: "fp64", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
           torch.int8: "int8", torch.uint8: "int8"}
_MATMUL = {"mm", "addmm", "bmm", "baddbmm", "_int_mm", "_scaled_mm", "addmv", "mv", "dot", "addbmm"}
_CONV = {"convolution", "_convolution", "convolution_backward", "mkldnn_convolution", "_slow_conv2d_forward",
         "_slow_conv2d_backward", "cudnn_convolution", "convolution_overrideable"}
_COPY = {"copy_", "_to_copy", "clone", "contiguous", "_copy_from"}
_GATHER = {"embedding", "index_select"}
_FREE = {"empty", "empty_like", "empty_strided", "detach", "alias", "lift_fresh", "_local_scalar_dense",
         "set_", "resize_", "scalar_tensor"}


# Elementwise kernels differ in work per element: exp/erf/tanh-based ones and window ops (pooling) are far
# slower per element than an add. Each elementwise/reduction kernel is counted at one FLOP per element and
# tagged with a vector class; the device's calibrated ``vector_<class>`` efficiency turns that into time.
_TRANSCENDENTAL = frozenset({
    "exp", "exp_", "expm1", "log", "log_", "log1p", "log2", "erf", "erfinv", "tanh", "tanh_", "tanh_backward",
    "sigmoid", "sigmoid_", "sigmoid_backward", "gelu", "gelu_", "gelu_backward", "silu", "silu_", "silu_backward",
    "_softmax", "_log_softmax", "_softmax_backward_data", "_log_softmax_backward_data", "softplus", "elu",
    "elu_backward", "sin", "cos", "mish", "logsumexp",
})
_SORT = frozenset({"topk", "sort", "argsort", "kthvalue", "median", "msort", "unique_dim", "_unique2"})


_POOL = ("max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool", "upsample", "im2col", "col2im")


def vector_class(name: str) -> str:
    """"transcendental", "pool", "sort" or "" (plain arithmetic) for an elementwise/reduction ATen kernel."""
    if name in _TRANSCENDENTAL:
        return "transcendental"
    if name in _SORT:
        return "sort"
    if name.startswith(_POOL):
        return "pool"
    return ""


@dataclass(frozen=True)
class OpRecord:
    """One kernel as executed: ATen name, op class, FLOPs, bytes, dtype, module and phase."""

    aten: str
    kind: str
    flops: float
    bytes: float
    dtype: str
    module: str
    phase: str  # "forward", "backward" or "other" (loss, optimizer)
    vclass: str = ""  # vector class of elementwise/reduction kernels: "", "transcendental", "pool"
    alloc_bytes: float = 0.0  # largest newly allocated output
    reuse_bytes: float | None = None  # bytes touched since its inputs were last used (see `_reuse_distances`)
    gemm: tuple[int, int, int, int] | None = None  # (batch, m, n, k) of a GEMM kernel

    def spec(self) -> OpSpec:
        ws = max(self.bytes, self.reuse_bytes) if self.reuse_bytes is not None else None
        return OpSpec(self.kind, self.flops, self.bytes, self.dtype, self.aten, vclass=self.vclass,
                      alloc_bytes=self.alloc_bytes, working_set=ws,
                      gemm=tuple(int(v) for v in self.gemm) if self.gemm else None)  # type: ignore[arg-type]


@dataclass
class Profile:
    """The kernels of one traced workload (e.g. a training step at batch 32)."""

    name: str
    batch: int
    mode: str  # "infer", "train", "per_example_grads", ...
    ops: list[OpRecord] = field(default_factory=list)
    param_bytes: int = 0
    # nn.Module forward calls while tracing, by family: "torch" (torch.nn's own modules) and "library" (modules of
    # other packages: transformers, peft, user code), whose forwards run more Python; each pays a per-call time.
    module_calls: dict[str, int] = field(default_factory=dict)

    @property
    def flops(self) -> float:
        return sum(o.flops for o in self.ops)

    @property
    def bytes(self) -> float:
        return sum(o.bytes for o in self.ops)

    def specs(self) -> list[OpSpec]:
        return [o.spec() for o in self.ops]

    def by_module(self) -> dict[str, dict[str, float]]:
        """FLOPs, bytes and kernel count per module (layer), forward and backward together."""
        out: dict[str, dict[str, float]] = defaultdict(lambda: {"flops": 0.0, "bytes": 0.0, "ops": 0})
        for o in self.ops:
            row = out[o.module]
            row["flops"] += o.flops
            row["bytes"] += o.bytes
            row["ops"] += 1
        return dict(out)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "batch": self.batch, "mode": self.mode, "param_bytes": self.param_bytes,
                "module_calls": self.module_calls, "ops": [o.__dict__ for o in self.ops]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Profile:
        return cls(d["name"], int(d["batch"]), d["mode"], [OpRecord(**o) for o in d["ops"]],
                   int(d.get("param_bytes", 0)), dict(d.get("module_calls", {})))


def _tensors(x: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor)]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _dtype(ts: list[torch.Tensor]) -> str:
    for t in ts:
        if t.dtype in _DTYPES:
            return _DTYPES[t.dtype]
    return "fp32"


def classify(func: Any, ins: list[torch.Tensor], outs: list[torch.Tensor]) -> str:
    """Op class of an ATen kernel: view/matmul/conv/attention/copy/reduction/elementwise."""
    name = func._overloadpacket.__name__
    if func.is_view or name in _FREE or not outs:
        return "view"
    if name in _MATMUL:
        return "matmul"
    if name in _CONV:
        return "conv"
    if "attention" in name:
        return "attention"
    if name in _COPY:
        return "copy"
    in_max = max((t.numel() for t in ins), default=0)
    if outs and max(t.numel() for t in outs) < in_max:
        return "reduction"
    return "elementwise"


def _attention_flops(name: str, args: tuple) -> float:
    """FLOPs of a CPU flash-attention kernel (not in torch's registry): 2 matmuls forward, 5 backward."""
    q, k = (args[1], args[2]) if "backward" in name else (args[0], args[1])
    b, h, sq, d = q.shape[0], q.shape[1], q.shape[-2], q.shape[-1]
    sk = k.shape[-2]
    per_mm = 2.0 * b * h * sq * sk * d
    return per_mm * (5 if "backward" in name else 2)


def _storage_key(t: torch.Tensor) -> int | None:
    try:
        return int(t.untyped_storage()._cdata)
    except (RuntimeError, NotImplementedError, AttributeError):  # functorch-batched or other storage-less tensors
        return None


def _reuse_distances(accesses: list[list[tuple[int, int, float]]], total: float) -> list[float | None]:
    """Per op, the bytes-weighted mean reuse distance of its inputs: the bytes all kernels touched between the
    previous use of an input's storage and this one (LRU stack distance, counted with repeats).

    The traced callable is taken as one period of a loop (a training or decode step repeated, a benchmark's
    repetitions), so a storage first used at this op was last used in the previous period. This is what puts
    a decode step's weights in main memory: each weight fits a cache on its own, but the whole model does
    not, and everything else runs through the cache before the weight is read again.
    """
    last: dict[int, float] = {}
    for op in accesses:  # the last access of each storage in the period
        for key, _, pos in op:
            last[key] = pos
    seen: dict[int, float] = {}
    out: list[float | None] = []
    for op in accesses:
        num = den = 0.0
        for key, nbytes, pos in op:
            prev = seen.get(key)
            dist = pos - prev if prev is not None else total - last[key] + pos
            num, den = num + nbytes * dist, den + nbytes
            seen[key] = pos
        out.append(num / den if den > 0 else None)
    return out


def gemm_shape(name: str, args: tuple) -> tuple[int, int, int, int] | None:
    """(batch, m, n, k) of a GEMM-family ATen kernel from its arguments; None for others (dot, int8 paths)."""
    ts = [a for a in args if isinstance(a, torch.Tensor)]
    try:
        if name in ("mm", "addmm", "bmm", "baddbmm"):
            a, b = ts[-2], ts[-1]
            if a.dim() == 2 and b.dim() == 2:
                return (1, int(a.shape[0]), int(b.shape[1]), int(a.shape[1]))
            if a.dim() == 3 and b.dim() == 3:
                return (int(a.shape[0]), int(a.shape[1]), int(b.shape[2]), int(a.shape[2]))
        if name in ("mv", "addmv"):
            a = ts[-2]
            return (1, int(a.shape[0]), 1, int(a.shape[1]))
        if "attention" in name and "backward" not in name:  # per query head: [sq x d] @ [d x sk], then x V
            q, k = ts[0], ts[1]
            return (int(q.shape[0] * q.shape[1]), int(q.shape[-2]), int(k.shape[-2]), int(q.shape[-1]))
    except (IndexError, AttributeError):
        return None
    return None


class _Recorder(TorchDispatchMode):
    def __init__(self, tracker: ModuleTracker, phase_fn: Callable[[], str]) -> None:
        super().__init__()
        self.tracker, self.phase_fn = tracker, phase_fn
        self.ops: list[OpRecord] = []
        self.accesses: list[list[tuple[int, int, float]]] = []  # per op: (storage, bytes, position) of inputs
        self.pos = 0.0  # bytes touched so far

    def reuse(self) -> list[OpRecord]:
        """The ops with their inputs' reuse distances filled in."""
        from dataclasses import replace

        dists = _reuse_distances(self.accesses, self.pos)
        return [replace(o, reuse_bytes=d) for o, d in zip(self.ops, dists, strict=True)]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        ins = list({id(t): t for t in _tensors((args, kwargs))}.values())
        outs = list({id(t): t for t in _tensors(out)}.values())
        kind = classify(func, ins, outs)
        if kind == "view":
            by, flops = 0.0, 0.0
        else:
            by = float(sum(_nbytes(t) for t in ins) + sum(_nbytes(t) for t in outs))
            packet = func._overloadpacket
            name = packet.__name__
            if name in _GATHER:  # a lookup reads the rows it gathers (= its output) and the indices, not the table
                by = float(sum(2 * _nbytes(t) for t in outs) + sum(_nbytes(t) for t in ins[1:]))
            if packet in flop_registry:
                flops = float(flop_registry[packet](*args, **kwargs, out_val=out))
            elif kind == "attention":
                flops = _attention_flops(name, args)
            elif kind == "matmul":  # e.g. _int_mm: 2 * output elements * inner dimension
                flops = 2.0 * sum(t.numel() for t in outs) * ins[0].shape[-1]
            elif kind == "conv":
                raise HwError(f"trace: no FLOP formula for {func}; add one to leanml.hw.trace")
            elif kind == "copy":
                flops = 0.0
            else:
                flops = float(max((t.numel() for t in ins + outs), default=0))
        parents = [p for p in self.tracker.parents if p != "Global"]
        module = max(parents, key=len) if parents else "(top)"
        dtype = _dtype(ins if kind in ("matmul", "conv", "attention") else outs + ins)
        vc = vector_class(func._overloadpacket.__name__) if kind in ("elementwise", "reduction") else ""
        in_ids = {id(t) for t in ins}
        alloc = float(max((_nbytes(t) for t in outs if id(t) not in in_ids), default=0)) if kind != "view" else 0.0
        acc = []
        if kind != "view":
            for t in ins:
                key = _storage_key(t)
                if key is not None:
                    acc.append((key, _nbytes(t), self.pos))
            self.pos += by
        gemm = gemm_shape(func._overloadpacket.__name__, args) if kind in ("matmul", "attention") else None
        self.ops.append(OpRecord(str(func), kind, flops, by, dtype, module, self.phase_fn(), vc, alloc, gemm=gemm))
        self.accesses.append(acc)
        return out


def _record(fn: Callable[[], Any], name: str, batch: int, mode: str, module: torch.nn.Module | None) -> Profile:
    tracker = ModuleTracker()
    with tracker:
        def phase() -> str:
            if tracker.is_bw:
                return "backward"
            return "forward" if len(tracker.parents) > 1 else "other"

        rec = _Recorder(tracker, phase)
        calls = {"torch": 0, "library": 0}

        def count(m, _args):
            calls["torch" if type(m).__module__.startswith("torch.") else "library"] += 1
        handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
        try:
            with rec:
                fn()
        finally:
            handle.remove()
    pb = sum(_nbytes(p) for p in module.parameters()) if module is not None else 0
    return Profile(name, batch, mode, rec.reuse(), pb, calls)


def trace_callable(fn: Callable[[], Any], name: str = "ops", batch: int = 1, mode: str = "ops") -> Profile:
    """Kernels of an arbitrary callable (a single op, a search, a projection)."""
    return _record(fn, name, batch, mode, None)


def trace_inference(module: torch.nn.Module, inputs: Any, name: str = "model") -> Profile:
    """Kernels of one forward pass (eval mode, no autograd) on ``inputs`` (a tensor, tuple or dict)."""
    batch = _batch_of(inputs)
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            prof = _record(lambda: _call(module, inputs), name, batch, "infer", module)
    finally:
        module.train(was)
    return prof


def trace_train_step(module: torch.nn.Module, inputs: Any, targets: torch.Tensor,
                     loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
                     optimizer: torch.optim.Optimizer | None = None, name: str = "model") -> Profile:
    """Kernels of forward + loss + backward (+ ``optimizer.step()`` when given) at this batch."""
    loss_fn = loss_fn or _default_loss
    batch = _batch_of(inputs)
    module.train()

    def step() -> None:
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(_call(module, inputs), targets)
        loss.backward()
        if optimizer is not None:
            optimizer.step()

    return _record(step, name, batch, "train", module)


def trace_per_example_grads(module: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                            loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
                            name: str = "model") -> Profile:
    """Kernels of per-example gradients by ``torch.func.vmap(grad(loss))`` (batched, no batch-1 loop).

    Only parameters with ``requires_grad`` get per-example gradients (LoRA: the adapters); frozen ones are
    passed as constants, so the trace holds their forward and input-gradient kernels but no weight gradients."""
    from torch.func import functional_call, grad, vmap

    loss_fn = loss_fn or _default_loss
    params = {k: v.detach() for k, v in module.named_parameters() if v.requires_grad}
    frozen = {k: v.detach() for k, v in module.named_parameters() if not v.requires_grad}
    buffers = {**frozen, **{k: v.detach() for k, v in module.named_buffers()}}
    if not params:
        raise HwError("trace_per_example_grads: the module has no parameters with requires_grad "
                      "(nothing to differentiate)")

    def one(p, xi, yi):
        out = functional_call(module, (p, buffers), (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    module.eval()  # batch norm must not mix examples
    prof = _record(lambda: vmap(grad(one), in_dims=(None, 0, 0))(params, inputs, targets), name,
                   int(inputs.shape[0]), "per_example_grads", module)
    return prof


def _default_loss(out: Any, targets: torch.Tensor) -> torch.Tensor:
    logits = out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, tuple) else out)
    if hasattr(out, "last_hidden_state"):
        logits = out.last_hidden_state
    if logits.dim() == 3 and targets.dim() == 2:  # token-level: (B, T, V) vs (B, T)
        if logits.shape[-1] == 1 or targets.dtype.is_floating_point:
            return torch.nn.functional.mse_loss(logits, targets)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    if targets.dtype.is_floating_point:
        return torch.nn.functional.mse_loss(logits, targets)
    return torch.nn.functional.cross_entropy(logits, targets)


def _call(module: torch.nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return module(**inputs)
    if isinstance(inputs, tuple | list):
        return module(*inputs)
    return module(inputs)


def _batch_of(inputs: Any) -> int:
    ts = _tensors(inputs)
    if not ts or ts[0].dim() == 0:
        raise HwError("trace: inputs must contain a tensor whose first dimension is the batch")
    return int(ts[0].shape[0])
