"""Timing on a shared machine: best-of-N with both clocks, rounds merged by a memo, curve fitting."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from leanml.hw.errors import HwError
from leanml.hw.schema import Efficiency


def default_clock(device: str = "cpu") -> str:
    """"auto" on a single-threaded CPU run, else "wall".

    "auto" reads both clocks around each repetition and keeps the smaller: on a shared machine a long
    op is almost always preempted, and the calling thread's CPU clock leaves that time out (with one
    intra-op thread all the work runs on the calling thread); a short op is best caught whole by
    the wall clock between preemptions. With intra-op threads or on a GPU only the wall clock sees
    all the work, so the minimum wall time over repetitions is used.
    """
    return "auto" if device == "cpu" and torch.get_num_threads() == 1 else "wall"


class TimingMemo:
    """Keeps the best time of each measurement across repeated calibration rounds.

    Calibration's sequence of measurements is deterministic, so the i-th timing of every round measures
    the same thing; rounds spread in time (``calibrate(rounds=3)``, or one memo passed to several calls)
    catch quiet moments of a shared machine that back-to-back repetitions miss.
    """

    def __init__(self) -> None:
        self.best: list[float] = []
        self.i = 0
        self.rounds = 0

    def start_round(self) -> None:
        self.i = 0
        self.rounds += 1

    def merge(self, t: float) -> float:
        if self.i < len(self.best):
            self.best[self.i] = t = min(t, self.best[self.i])
        else:
            self.best.append(t)
        self.i += 1
        return t


_MEMO: TimingMemo | None = None


def best_time(fn: Callable[[], Any], reps: int, *, inner: int | None = None, sync: Callable[[], None] | None = None,
              budget_s: float = 0.002, clock: str | None = None) -> float:
    """Min over ``reps`` of the mean time of ``inner`` back-to-back calls (inner sized to ~budget_s)."""
    on_gpu = sync is not None
    sync = sync or _noop
    clock = clock or default_clock("cuda" if on_gpu else "cpu")
    if clock not in ("wall", "thread", "auto"):
        raise HwError(f"best_time: clock must be wall, thread or auto, got {clock!r}")
    fn()
    sync()
    if inner is None:
        t0 = time.perf_counter()
        fn()
        sync()
        one = max(time.perf_counter() - t0, 1e-7)
        inner = int(min(max(1, budget_s / one), 2000))
    best = float("inf")
    for _ in range(reps):
        w0, c0 = time.perf_counter(), time.thread_time()
        for _ in range(inner):
            fn()
        sync()
        wall, cpu = (time.perf_counter() - w0) / inner, (time.thread_time() - c0) / inner
        t = wall if clock == "wall" else cpu if clock == "thread" else min(wall, cpu)
        best = min(best, t)
    return _MEMO.merge(best) if _MEMO is not None else best


def _noop() -> None:
    return None


def release_free_heap() -> bool:
    """Hand the heap's free memory back to the OS (glibc ``malloc_trim(0)``); False where there is no glibc.

    Whether a large output costs page faults depends on the heap's history: a phase that freed big buffers
    leaves a free heap top that later allocations reuse warm. Calling this before a timing makes it start
    from the state of a process that has not freed big buffers, whatever ran before it in the process.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        import ctypes
        import ctypes.util

        try:  # musl and macOS have no malloc_trim
            _MALLOC_TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM is False:
        return False
    _MALLOC_TRIM(0)
    return True


_MALLOC_TRIM: Any = None


def fit_efficiency(works: list[float], times: list[float], peak: float, overhead: float, source: str) -> Efficiency:
    """Fit ``t - overhead = (w + half_work) / (peak * max)`` by non-negative least squares on relative error."""
    from scipy.optimize import nnls

    w, t = np.asarray(works, float), np.asarray(times, float)
    keep = t > 2 * overhead  # points dominated by dispatch overhead say nothing about the rate
    if keep.sum() >= 2:
        w, t = w[keep], t[keep]
    body = np.maximum(t - overhead, 0.02 * t)
    a_mat = np.stack([w / body, 1.0 / body], axis=1)
    (a, b), _ = nnls(a_mat, np.ones_like(w))
    if a <= 0:  # noisy points that contradict each other: fall back to a constant rate
        a, b = float(np.median(body / w)), 0.0
    mx = min(1.0 / (a * peak), 1.0)
    return Efficiency(float(mx), float(b / a), source)
