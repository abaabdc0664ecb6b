"""Facts about this CPU read from sysfs and /proc: cache levels, model name, vector ISA, theoretical peak."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CacheLevel:
    name: str
    size: int  # bytes, one instance
    instances: int  # how many on this machine


def cpu_caches(root: Path = Path("/sys/devices/system/cpu")) -> list[CacheLevel]:
    """Data/unified cache levels from sysfs (cpu0's view), with how many instances the machine has."""
    out: list[CacheLevel] = []
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    base = root / "cpu0" / "cache"
    if not base.is_dir():
        return out
    for idx in sorted(base.glob("index*")):
        try:
            kind = (idx / "type").read_text().strip()
            if kind == "Instruction":
                continue
            level = int((idx / "level").read_text())
            size = _parse_cache_size((idx / "size").read_text().strip())
            shared = _count_cpus((idx / "shared_cpu_list").read_text().strip())
        except (OSError, ValueError):
            continue
        out.append(CacheLevel(f"L{level}" + ("d" if kind == "Data" else ""), size, max(1, ncpu // max(shared, 1))))
    return out


def _parse_cache_size(s: str) -> int:
    mult = {"K": 1024, "M": 1024**2, "G": 1024**3}
    return int(s[:-1]) * mult[s[-1]] if s[-1] in mult else int(s)


def _count_cpus(lst: str) -> int:
    n = 0
    for part in lst.split(","):
        if "-" in part:
            a, b = part.split("-")
            n += int(b) - int(a) + 1
        elif part:
            n += 1
    return n


def _flags(info: str) -> set[str]:
    return set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))


def cpu_vector_isa() -> str:
    """The widest vector extension this CPU reports (kernel choices differ by it: AVX-512 BF16 runs bf16 and
    weight-only int8 GEMMs natively, AVX2 does not), or "unknown" without /proc/cpuinfo."""
    try:
        flags = _flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return "unknown"
    return next((f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags), "no AVX2")


def cpu_theoretical_peak_per_core() -> dict[str, float]:
    """FLOP/s per core from cpuinfo: vector width x 2 FMA pipes x 2 x clock (an upper bound in a VM)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags = _flags(info)
    mhz = next((float(ln.split(":", 1)[1]) for ln in info.splitlines() if ln.startswith("cpu MHz")), 0.0)
    if not mhz:
        return {}
    lanes64 = 8 if "avx512f" in flags else 4 if "avx2" in flags else 2
    fma = 2 if ("fma" in flags or "avx512f" in flags) else 1
    per_cycle64 = lanes64 * 2 * fma  # two FMA pipes x lanes x (mul+add)
    return {"fp64": per_cycle64 * mhz * 1e6, "fp32": 2 * per_cycle64 * mhz * 1e6}


def cpu_model_name() -> str:
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
