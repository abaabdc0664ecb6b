"""Per-operator calibration of `nearest`'s physical candidates on this machine and this source.

The roofline (`leanml.hw`) gets how each candidate's cost grows with the matches, queries, k and codec
right, but not the fixed cost of a call (Python, torch dispatch, FAISS setup) nor the efficiency FAISS's
list scan and numpy's gather reach here; measured, those dominate small queries by 10-30x. Each runnable
candidate is therefore timed twice on the source itself, once tiny (8 rows, 1 query, k = 1: the overhead)
and once at up to 4096 rows, 4 queries, k = 10; ``scale`` is the measured growth over the roofline's
growth between the two. The prediction becomes ``overhead + scale * roofline``. Cached per source
generation and index, so a query pays it once (tens of milliseconds).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from leanml.store.query.source import QuerySource

_CACHE: dict[tuple, dict[str, tuple[float, float]]] = {}


def _time(fn: Any, *args: Any, reps: int = 3) -> float:
    best = np.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best


def operator_costs(source: QuerySource, ivf: Any, host: Any, block_rows: int = 65536) -> dict[str, tuple[float, float]]:
    """{candidate: (overhead_s, scale)} measured on ``source`` (see module docstring)."""
    from leanml.store.query.physical import plan_nearest, run_nearest

    key = (str(source.root), source.manifest.generation, len(source.ids()), id(ivf), id(host))
    if key in _CACHE:
        return _CACHE[key]
    n = len(source.ids())
    small = np.arange(min(n, 8))
    big = np.unique(np.linspace(0, n - 1, min(n, 4096)).astype(np.int64))
    names = source.checkpoint_names()
    out = {}
    points = []
    for pos, nq, k in ((small, 1, 1), (big, 4, 10)):
        qpos = np.unique(np.linspace(0, n - 1, nq).astype(np.int64))
        qs = [source.read(c, qpos) + 1e-3 for c in names]
        cands, facts = plan_nearest(source, pos, qs, k, host=host, recall=0.5, ivf=ivf, block_rows=block_rows)
        meas = {c.name: _time(run_nearest, c.name, source, pos, qs, k, facts, ivf, block_rows)
                for c in cands if c.runnable}
        points.append((facts["roofline_s"], meas))
    (r0, m0), (r1, m1) = points
    for name in m0:
        scale = (m1[name] - m0[name]) / max(r1[name] - r0[name], 1e-12)
        scale = float(np.clip(scale, 0.1, 1000.0))
        out[name] = (max(m0[name] - scale * r0[name], 0.0), scale)
    _CACHE[key] = out
    return out
