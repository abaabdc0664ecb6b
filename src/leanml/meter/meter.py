"""`Meter`: measure wall, CPU, energy, peak memory and (on request) FLOPs of a block of code.

    with Meter() as m:
        with m.stage("select"):
            ...
        with m.stage("train"):
            ...
    print(m.cost.stages["select"].wall_s, m.cost.energy_cpu_j)  # None where unavailable

Library code that cannot see the caller's meter attributes work with the module-level ``stage``:

    with stage("train"):   # lands in the innermost open Meter's cost.stages["train"]; no-op without one
        ...
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from leanml.meter.cost import Cost
from leanml.meter.energy import POWERCAP_ROOT, NvmlReader, RaplReader
from leanml.meter.memory import children_peak_rss_bytes, peak_rss_bytes, reset_peak_rss

_active: list[Meter] = []  # open meters, outermost first; resets of the peak are reported to all


def _cpu_seconds(include_children: bool, children_only: bool = False) -> float:
    t = os.times()
    own = 0.0 if children_only else t.user + t.system
    return own + (t.children_user + t.children_system if include_children else 0.0)


def _torch_cuda():
    """torch.cuda if torch is already imported and a CUDA device is present, else None."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda
    return None


class Meter:
    """Context manager that records a `Cost` for the code it wraps.

    Args:
        count_flops: count FLOPs of PyTorch ops run inside (``torch.utils.flop_counter``);
            off by default because it slows execution. Unrequested FLOPs are "unavailable".
        include_children: add CPU time and peak RSS of child processes waited for inside
            the block.
        children_only: count only child processes (what ``leanml meter -- CMD`` needs, so the
            metering process's own interpreter is not billed to the command).
        sample_interval_s: how often a background thread reads the energy counters, so that
            RAPL wrap-around between reads is never missed.
        powercap_root: where RAPL zones live (tests point this at a fake tree).
    """

    def __init__(
        self,
        *,
        count_flops: bool = False,
        include_children: bool = False,
        children_only: bool = False,
        sample_interval_s: float = 5.0,
        powercap_root: Path = POWERCAP_ROOT,
        gpu: bool = True,
    ) -> None:
        self.count_flops = count_flops
        self.include_children = include_children or children_only
        self.children_only = children_only
        self.sample_interval_s = sample_interval_s
        self.rapl = RaplReader(root=Path(powercap_root))
        self.nvml = NvmlReader() if gpu else None
        self.cost: Cost | None = None
        self._stages: dict[str, Cost] = {}
        self._peak_seen = 0
        self._stack = ExitStack()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._flop_mode = None

    # ---- stages -----------------------------------------------------------
    def stage(self, name: str) -> Meter:
        """A nested meter whose cost is kept under ``self.cost.stages[name]`` (summed if repeated)."""
        child = Meter(
            count_flops=self.count_flops,
            include_children=self.include_children,
            sample_interval_s=self.sample_interval_s,
            powercap_root=self.rapl.root,
            gpu=self.nvml is not None,
        )
        child._parent_stage = (self, name)
        return child

    # ---- context manager --------------------------------------------------
    def __enter__(self) -> Meter:
        self._note_peak_for_all()
        self._reset_ok = reset_peak_rss()
        self._children_rss0 = children_peak_rss_bytes()
        cuda = _torch_cuda()
        if cuda is not None:
            cuda.synchronize()
            cuda.reset_peak_memory_stats()
        self.rapl.start()
        if self.nvml:
            self.nvml.start()
        if self.count_flops:
            from torch.utils.flop_counter import FlopCounterMode

            self._flop_mode = self._stack.enter_context(FlopCounterMode(display=False))
        self._thread = threading.Thread(target=self._sample_loop, daemon=True, name="leanml-meter")
        self._thread.start()
        _active.append(self)
        self._wall0 = time.perf_counter()
        self._cpu0 = _cpu_seconds(self.include_children, self.children_only)
        return self

    def __exit__(self, *exc) -> None:
        cuda = _torch_cuda()
        if cuda is not None:
            cuda.synchronize()
        wall = time.perf_counter() - self._wall0
        cpu = _cpu_seconds(self.include_children, self.children_only) - self._cpu0
        self._stop.set()
        if self._thread:
            self._thread.join()
        _active.remove(self)
        flops = int(self._flop_mode.get_total_flops()) if self._flop_mode is not None else None
        self._stack.close()

        notes: dict[str, str] = {}
        energy_cpu = self.rapl.joules()
        if energy_cpu is None:
            notes["energy_cpu_j"] = self.rapl.unavailable_reason or "unavailable"
        energy_gpu = self.nvml.joules() if self.nvml else None
        if energy_gpu is None:
            notes["energy_gpu_j"] = (self.nvml.unavailable_reason if self.nvml else "GPU metering off")
        if flops is None:
            notes["flops"] = "not requested (Meter(count_flops=True))"

        peak = peak_rss_bytes()
        if self.children_only:
            peak = children_peak_rss_bytes() if children_peak_rss_bytes() > self._children_rss0 else None
            if peak is None:
                notes["peak_rss_bytes"] = "no child process finished inside the block"
        elif peak is not None:
            peak = max(peak, self._peak_seen)
            if not self._reset_ok:
                notes["peak_rss_bytes"] = "kernel refused a peak reset: this is the process-lifetime peak"
            if self.include_children and children_peak_rss_bytes() > self._children_rss0:
                peak = max(peak, children_peak_rss_bytes())
        else:
            notes["peak_rss_bytes"] = "no /proc/self/status on this system"
        peak_gpu = int(cuda.max_memory_allocated()) if cuda is not None else None
        if peak_gpu is None:
            notes["peak_gpu_bytes"] = "no CUDA device in use"

        self.cost = Cost(
            wall_s=wall, cpu_s=cpu, energy_cpu_j=energy_cpu, energy_gpu_j=energy_gpu,
            peak_rss_bytes=peak, peak_gpu_bytes=peak_gpu, flops=flops, notes=notes,
        )
        self.cost.stages = dict(self._stages)
        parent = getattr(self, "_parent_stage", None)
        if parent is not None:
            owner, name = parent
            prev = owner._stages.get(name)
            owner._stages[name] = prev + self.cost if prev else self.cost
            owner._peak_seen = max(owner._peak_seen, peak or 0)

    # ---- internals --------------------------------------------------------
    def _sample_loop(self) -> None:
        while not self._stop.wait(self.sample_interval_s):
            self.rapl.sample()

    @staticmethod
    def _note_peak_for_all() -> None:
        """Before a nested meter resets the kernel's peak, hand the current peak to the open ones."""
        if _active:
            now = peak_rss_bytes() or 0
            for m in _active:
                m._peak_seen = max(m._peak_seen, now)


@contextmanager
def stage(name: str) -> Iterator[Meter | None]:
    """Attribute the wrapped block to stage ``name`` of the innermost open `Meter` (a no-op without one).

    Meant for coarse blocks (a warm-up, a scoring pass): each stage is a nested Meter, which costs a few
    hundred microseconds to open and close. A stage opened inside another stage lands in that stage's own
    ``stages``, so the top-level stages of a cost never overlap and their wall times sum to at most its own.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"stage: name must be a non-empty string, got {name!r}")
    if not _active:
        yield None
        return
    with _active[-1].stage(name) as child:
        yield child


def measure(fn, *args, count_flops: bool = False, **kwargs):
    """Run ``fn(*args, **kwargs)`` under a Meter; return ``(result, cost)``."""
    with Meter(count_flops=count_flops) as m:
        result = fn(*args, **kwargs)
    return result, m.cost
