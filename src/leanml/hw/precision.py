"""Precision: which catalog peak a dtype runs at, and re-costing a traced workload in another dtype.

A traced profile records each kernel's real dtype (what its tensors were). ``cast_ops`` re-costs the same
program as if it ran in ``dtype`` the way mixed-precision training and inference run on accelerators:

* GEMM, convolution and attention kernels run at ``peak_flops[dtype]`` (tensor cores) and move
  ``DTYPE_BYTES[dtype]``-byte elements; ``tf32`` keeps 4-byte tensors (it only changes the GEMM rate);
* elementwise, reduction and copy kernels keep running on the vector units (the fp32 rate) but move
  elements of the storage dtype: bf16/fp16 for bf16/fp16/fp8/int8 runs (8-bit formats are GEMM-only:
  activations stay 16-bit, as in FP8 transformer-engine recipes and W8A8 int8 inference), fp32 for tf32;
* kernels on integer tensors (indices, masks) and fp64 are left alone.

A device without a peak for the dtype is an error naming the dtypes it has, unless the caller states a
``fallback`` dtype, which is then reported in the prediction's notes (never a silent fp32).
"""

from __future__ import annotations

from dataclasses import replace

from leanml.hw.errors import HwError
from leanml.hw.schema import DTYPE_BYTES, DTYPES, Device

FLOAT_DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8")
GEMM_KINDS = ("matmul", "conv", "attention")
# Storage dtype of activations (elementwise work) when GEMMs run in the key's dtype.
STORAGE = {"fp32": "fp32", "tf32": "fp32", "bf16": "bf16", "fp16": "fp16", "fp8": "bf16", "int8": "bf16",
           "fp64": "fp64"}


def check_dtype(dtype: str, param: str = "dtype") -> str:
    """``dtype`` if leanml knows it, else an HwError naming the parameter and the choices."""
    if dtype not in DTYPES:
        raise HwError(f"{param}: unknown dtype {dtype!r}; expected one of {list(DTYPES)}")
    return dtype


def resolve_dtype(device: Device, dtype: str, fallback: str | None = None) -> tuple[str, str]:
    """(dtype to cost GEMMs at, note) on ``device``: ``dtype`` itself, or the stated ``fallback``.

    Raises HwError when the device has no peak for ``dtype`` and no fallback (or an unusable one) is given.
    """
    check_dtype(dtype)
    if dtype in device.peak_flops:
        return dtype, f"{dtype} at {device.id}'s {device.peak_source} {dtype} peak"
    have = sorted(device.peak_flops)
    if fallback is None:
        raise HwError(f"dtype: device {device.id} has no {dtype} peak (it has {have}); pick one of those, or pass "
                      f"a fallback dtype (fallback=... / --dtype-fallback) to cost it at that rate explicitly")
    check_dtype(fallback, "fallback")
    if fallback not in device.peak_flops:
        raise HwError(f"fallback: device {device.id} has no {fallback} peak either (it has {have})")
    return fallback, (f"FALLBACK: {device.id} has no {dtype} peak; GEMMs costed at its {fallback} peak "
                      f"({device.peak_source}), bytes at {dtype} sizes")


def cast_ops(specs: list, dtype: str, gemm_dtype: str | None = None) -> list:
    """The same kernels run in ``dtype`` (see the module docstring); ``gemm_dtype`` overrides the GEMM rate
    (a stated fallback) while bytes follow ``dtype``."""
    check_dtype(dtype)
    gemm_dtype = gemm_dtype or dtype
    store = STORAGE[dtype]
    out = []
    for op in specs:
        if op.dtype not in FLOAT_DTYPES or op.kind == "view":
            out.append(op)
            continue
        gemm = op.kind in GEMM_KINDS
        new_bytes_dt = dtype if gemm and dtype not in ("tf32",) else store
        scale = DTYPE_BYTES[new_bytes_dt] / DTYPE_BYTES[op.dtype]
        ws = op.working_set * scale if op.working_set is not None else None
        out.append(replace(op, dtype=gemm_dtype if gemm else store, bytes=op.bytes * scale, working_set=ws,
                           alloc_bytes=op.alloc_bytes * scale))
    return out
