"""How the last cache level hands a growing working set over to main memory, measured on this machine.

A cache does not serve a working set fully up to its capacity and then stop: other data, associativity
and (on a shared level) other cores take part of it, so the share the next level serves grows with the
working set. The cost model blends the two levels' bandwidths by that share,

    x(ws) = clip(log(ws / (start * capacity)) / log(span), 0, 1)      (0: this level alone, 1: the next)

and ``(start, span)`` default to (0.25, 4): the level alone up to a quarter of its capacity, main memory
alone from its capacity on. That guess is wrong on real parts (a 32 MiB L3 served a 16 MiB sweep at 93% of
its own bandwidth, and a 96 MiB triad still ran 20% faster than main memory), so on a CPU the calibration
times a STREAM triad (``a = b + 3c``, the read-read-write pattern of most elementwise kernels) over working
sets from 1/8 to 8x the last cache level, turns each time into the share served by main memory, and fits
``(start, span)`` to it. The 8x point is also main memory's bandwidth with no cache in it (the level
probe's working set, 2-4x the cache, is still partly served by it), and a sum over the same 8x set gives
main memory's reduction efficiency.
"""

from __future__ import annotations

import numpy as np
import torch

from leanml.hw.schema import spill_share
from leanml.hw.timing import best_time

SPILL_FACTORS = (0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0)  # working sets, in units of the level's capacity
DEFAULT_SPILL = (0.25, 4.0)


def spill_rows(capacity: float, reps: int, sync=None, device: str = "cpu") -> tuple[list[tuple[float, float]], float]:
    """``(working_set_bytes, seconds)`` of a triad at `SPILL_FACTORS` x ``capacity``, and the seconds of a sum
    over the largest set. The three arrays are slices of one buffer (one allocation, every page touched
    before any timing), each a third of the working set."""
    third = int(SPILL_FACTORS[-1] * capacity) // 12
    buf = torch.ones(3 * third, device=device)
    rows = []
    for f in SPILL_FACTORS:
        n = max(int(f * capacity) // 12, 1024)
        a, b, c = buf[:n], buf[third:third + n], buf[2 * third:2 * third + n]
        torch.add(b, c, alpha=3.0, out=a)  # warm: bring the set in before timing its repeated sweeps
        rows.append((float(3 * n * 4), best_time(lambda a=a, b=b, c=c: torch.add(b, c, alpha=3.0, out=a), reps,
                                                 sync=sync)))
    t_sum = best_time(lambda whole=buf: torch.sum(whole), reps, sync=sync)
    del buf
    return rows, t_sum


def fit_spill(rows: list[tuple[float, float]], capacity: float, op_overhead: float) -> tuple[float, float, dict]:
    """Fit ``(start, span)`` to measured sweep times; returns them and what was measured.

    The share served by main memory at each size is ``(t/ws - 1/b_cache) / (1/b_mem - 1/b_cache)``, with
    ``b_cache`` the bandwidth at the smallest size and ``b_mem`` at the largest. A grid search over
    ``start`` in [1/16, 2] and ``span`` in [1.5, 64] minimises the squared error in that share. When the two
    bandwidths are within 15% of each other the handover cannot be seen: the default is kept and said so."""
    ws = np.array([w for w, _ in rows])
    t = np.maximum(np.array([s for _, s in rows]) - op_overhead, 1e-9)
    inv_bw = t / ws
    b_cache, b_mem = 1.0 / inv_bw[0], 1.0 / inv_bw[-1]
    meta = {"sizes_bytes": ws.tolist(), "seconds": [float(s) for _, s in rows],
            "cache_GBps": round(float(b_cache) / 1e9, 2), "memory_GBps": round(float(b_mem) / 1e9, 2)}
    if b_mem > 0.85 * b_cache:
        meta["fit"] = f"default {DEFAULT_SPILL}: cache and memory bandwidth too close to see a handover"
        return (*DEFAULT_SPILL, meta)
    share = np.clip((inv_bw - inv_bw[0]) / (inv_bw[-1] - inv_bw[0]), 0.0, 1.0)
    best = (float("inf"), *DEFAULT_SPILL)
    for start in np.geomspace(1 / 16, 2.0, 49):
        for span in np.geomspace(1.5, 64.0, 49):
            pred = np.array([spill_share(w, capacity, start, span) for w in ws])
            err = float(np.sum((pred - share) ** 2))
            if err < best[0]:
                best = (err, float(start), float(span))
    err, start, span = best
    meta.update(share=[round(float(s), 3) for s in share], fit=f"least squares, residual {err:.4f}",
                start=round(start, 4), span=round(span, 3))
    return start, span, meta


def calibrate_spill(levels: list, reps: int, sync, op_overhead: float, log) -> tuple[list, dict, float | None]:
    """CPU: measure and fit the last cache level's handover to main memory. Returns the levels with it set
    (and main memory at its cache-free triad bandwidth, when that is the lower figure), the probe's record
    for the device file, and main memory's sum/triad ratio (None when not measured); the other levels keep
    the default rule."""
    from dataclasses import replace

    if len(levels) < 2:
        return levels, {}, None
    i = len(levels) - 2
    llc, mem = levels[i], levels[-1]
    rows, t_sum = spill_rows(llc.capacity, reps, sync)
    start, span, meta = fit_spill(rows, llc.capacity, op_overhead)
    big_ws, big_t = rows[-1]
    triad_bw = big_ws / max(big_t - op_overhead, 1e-9)
    sum_ratio = (big_ws / max(t_sum - op_overhead, 1e-9)) / triad_bw
    out = list(levels)
    out[i] = replace(llc, spill_start=start, spill_span=span)
    if triad_bw < mem.bandwidth:
        out[-1] = replace(mem, bandwidth=float(triad_bw))
        meta["memory_bandwidth"] = (f"{mem.name} triad at {SPILL_FACTORS[-1]:.0f}x {llc.name}: "
                                    f"{triad_bw / 1e9:.1f} GB/s "
                                    f"(the level probe read {mem.bandwidth / 1e9:.1f}, partly from {llc.name})")
    log(f"{llc.name} -> {mem.name} handover: alone up to {start:.2f}x capacity, all in {mem.name} from "
        f"{start * span:.2f}x ({meta['fit']}; triad {meta['cache_GBps']} -> {meta['memory_GBps']} GB/s)")
    return out, {"cache_spill_probe": {"level": llc.name, **meta}}, float(sum_ratio)
