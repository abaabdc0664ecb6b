"""Energy counters: Linux powercap (RAPL) for CPU packages, NVML for NVIDIA GPUs.

Each reader returns cumulative joules since it started, or None with a reason when the
machine does not expose the counter. Nothing is ever estimated.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

POWERCAP_ROOT = Path("/sys/class/powercap")
_TOP_LEVEL_ZONE = re.compile(r"^intel-rapl:\d+$")  # packages only: sub-zones (core, dram) nest inside


@dataclass
class _Zone:
    name: str
    energy_file: Path
    max_range_uj: int
    last_uj: int
    total_uj: int = 0


@dataclass
class RaplReader:
    """Accumulates energy of every top-level RAPL package, handling counter wrap-around.

    Call ``sample()`` more often than the counter wraps (minutes at full power); ``Meter``
    does this from a background thread. If any package's counter is unreadable, the total
    is unavailable: a sum over some packages would understate the energy.
    """

    root: Path = POWERCAP_ROOT
    zones: list[_Zone] = field(default_factory=list)
    unavailable_reason: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self.zones, self.unavailable_reason = [], None
        if not self.root.is_dir():
            self.unavailable_reason = f"no powercap interface at {self.root}"
            return
        dirs = sorted(p for p in self.root.iterdir() if _TOP_LEVEL_ZONE.match(p.name))
        if not dirs:
            self.unavailable_reason = f"no RAPL package zones under {self.root}"
            return
        for d in dirs:
            try:
                now = int((d / "energy_uj").read_text().strip())
                max_range = int((d / "max_energy_range_uj").read_text().strip())
            except (OSError, ValueError) as e:
                self.unavailable_reason = f"cannot read RAPL counter {d}: {e.__class__.__name__}: {e}"
                self.zones = []
                return
            self.zones.append(_Zone(d.name, d / "energy_uj", max_range, now))

    def sample(self) -> None:
        with self._lock:
            if self.unavailable_reason:
                return
            for z in self.zones:
                try:
                    now = int(z.energy_file.read_text().strip())
                except (OSError, ValueError) as e:
                    self.unavailable_reason = f"RAPL counter {z.energy_file} became unreadable: {e}"
                    return
                delta = now - z.last_uj
                if delta < 0:  # the counter wrapped past max_energy_range_uj
                    delta += z.max_range_uj + 1
                z.total_uj += delta
                z.last_uj = now

    def joules(self) -> float | None:
        self.sample()
        if self.unavailable_reason:
            return None
        return sum(z.total_uj for z in self.zones) / 1e6


@dataclass
class NvmlReader:
    """Total GPU energy over all visible NVIDIA devices (NVML's millijoule counter)."""

    start_mj: list[int] = field(default_factory=list)
    handles: list = field(default_factory=list)
    unavailable_reason: str | None = None

    def start(self) -> None:
        try:
            import pynvml  # from nvidia-ml-py
        except ImportError:
            self.unavailable_reason = "nvidia-ml-py not installed (pip install 'leanml[gpu]')"
            return
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self.start_mj = [pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles]
        except Exception as e:  # NVMLError subclasses: no driver, no GPU, unsupported
            self.unavailable_reason = f"NVML unavailable: {e}"
            return
        if not self.handles:
            self.unavailable_reason = "no NVIDIA GPU visible"

    def sample(self) -> None:  # NVML's counter is 64-bit and does not wrap in practice
        pass

    def joules(self) -> float | None:
        if self.unavailable_reason:
            return None
        import pynvml

        try:
            now = [pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles]
        except Exception as e:
            self.unavailable_reason = f"NVML energy read failed: {e}"
            return None
        return sum(n - s for n, s in zip(now, self.start_mj, strict=True)) / 1e3
