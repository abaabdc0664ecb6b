"""Per-operator calibration of `nearest`'s physical candidates on this machine and this source.

The roofline (`leanml.hw`) gets the shape of each candidate's cost roughly right but not its constants
here: the fixed cost of a call (Python, torch dispatch, FAISS setup), the efficiency of numpy's gather
and int8 decode, of FAISS's list scan with a bitmap, and of torch's top-k; measured, they put the roofline
off by 10-30x on small queries and in different directions per candidate. So each runnable candidate is
timed on the source itself over a small design (row counts 64, 1%, 10% and 50% of the rows, 1, 16 and
32 queries, k = 10 and 100, IVF probes 1 to 64: 24 points; the candidates interleaved, as queries meet
them, best of 2) and its time is fitted as a non-negative combination of the work terms of
`physical.features` (a fixed cost, rows x D, rows x queries x D, top-k entries; for IVF visited rows,
scored matches x D, queries, result heaps, rows on the minority side of the filter in the walked lists,
over-fetch), by NNLS on relative error (the planner compares ratios). Predicting is then one dot
product: planning stays cheap.

The candidates are timed with the filter's IVF state (matches per list, bitmap: `filters`) already built,
as a filter reused across queries meets them; building that state is timed on its own at each point
(``physical.FILTER_STATE``, linear in the matches and the rows), and the planner adds it to the IVF plans
only when the filter's state is not cached.

Cached per source generation and index (a query pays it once: ~0.7 s at 2*10^4 x 128, ~4.7 s at 10^5 x 256
on this 2-vCPU VM).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from leanml.store.query.filters import FilterState, filter_state, forget
from leanml.store.query.physical import FILTER_STATE, PLANNING
from leanml.store.query.source import QuerySource

_CACHE: dict[tuple, dict[str, tuple[float, ...]]] = {}
_LAST: dict[str, tuple] = {}  # the last call's (source, ivf, host, generation, costs): held, so ids cannot be reused


def _time(fn: Any, *args: Any, reps: int = 2, **kwargs: Any) -> float:
    best = np.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(*args, **kwargs)
        best = min(best, time.perf_counter() - t0)
    return best


def design(n: int) -> list[tuple[int, int, int, int]]:
    """(rows matched, queries, k, IVF probes) of the calibration points for a source of ``n`` rows."""
    sizes = sorted({min(n, 64), max(1, n // 100), max(1, n // 10), max(1, n // 2)})
    probes = (1, 4, 16, 64)
    return [(m, nq, min(k, m), probes[(i + j) % 4]) for i, m in enumerate(sizes)
            for j, (nq, k) in enumerate(((1, 10), (16, 10), (1, 100), (16, 100), (32, 10), (32, 100)))]


def operator_costs(source: QuerySource, ivf: Any, host: Any,
                   block_rows: int = 65536) -> dict[str, tuple[float, ...]]:
    """{candidate: NNLS weights of its `physical.features`} measured on ``source`` (module docstring), and
    with an index ``physical.PLANNING``: the planning work only the IVF plans need."""
    from leanml.store.query.physical import features, plan_nearest, run_nearest, walk_facts

    last = _LAST.get("hit")
    if last and last[0] is source and last[1] is ivf and last[2] is host and last[3] == source.manifest.generation:
        return last[4]  # same objects as the last call: no key to build (18-25 us after other work, scratch)
    key = (str(source.root), source.manifest.generation, len(source.ids()), id(ivf), id(host))
    if key in _CACHE:
        _LAST["hit"] = (source, ivf, host, source.manifest.generation, _CACHE[key])
        return _CACHE[key]
    n = len(source.ids())
    names = source.checkpoint_names()
    rng = np.random.default_rng(0)
    rows: dict[str, list[tuple[tuple[float, ...], float]]] = {}
    warm = False
    for m, nq, k, p in design(n):
        pos = np.sort(rng.choice(n, m, replace=False))
        pos.setflags(write=False)  # so its IVF state is built once, before the timing (module docstring)
        if ivf is not None:
            filter_state(ivf, pos).build()
            fresh = [_time(FilterState(ivf.list_of, ivf.index.nlist, pos).build, reps=1) for _ in range(3)]
            work = features(FILTER_STATE, {"m": m, "n": n, "nq": nq, "D": 0})
            rows.setdefault(FILTER_STATE, []).append((work, min(fresh)))
        qpos = rng.choice(n, nq, replace=nq > n)
        qs = [source.read(c, np.sort(qpos)) + 1e-3 for c in names]
        cands, facts = plan_nearest(source, pos, qs, k, host=host, recall=None, ivf=ivf, block_rows=block_rows,
                                    cost_all=True)
        if ivf is not None and "Iq" in facts and p != facts.get("probes"):  # vary the probes over the design
            facts.update(walk_facts(ivf, facts["Q"], facts["mask_lists"], k, k, p, facts.get("sims")))
        run = [c.name for c in cands if c.runnable]
        best = dict.fromkeys(run, np.inf)
        for rep in range(3 if not warm else 2):  # interleaved, as queries meet them: caches not warmed for one
            for name in run:
                t = _time(run_nearest, name, source, pos, qs, k, facts, ivf, block_rows, reps=1)
                if warm or rep > 0:
                    best[name] = min(best[name], t)
        for name in run:
            rows.setdefault(name, []).append((features(name, facts), best[name]))
        if ivf is not None:
            forget(ivf, pos)
        warm = True
    out = {}
    _fit(rows, out)
    if ivf is not None:  # then the planning the IVF plans need, timed with the fitted weights in use
        _fit({PLANNING: _planning_points(source, ivf, host, block_rows, out)}, out)
    _CACHE[key] = out
    _LAST["hit"] = (source, ivf, host, source.manifest.generation, out)
    return out


def _planning_points(source: QuerySource, ivf: Any, host: Any, block_rows: int,
                     cal: dict[str, tuple[float, ...]]) -> list[tuple[tuple[float, ...], float]]:
    """(features, seconds) of `plan_nearest`'s IVF branch over the design: planning with the index minus
    planning without it (best of 3 each, interleaved), each timed right after touching as many bytes as one
    unfiltered scan of the source reads (at most 64 MiB). The operators above are timed interleaved, each
    after another one's work; planning timed back to back instead ran from warm caches and was predicted at
    0.16 ms where it took 0.39 after other work (1% of 10^5 x 256 int8, one query), so the planner ran the
    IVF branch for filters whose exact scan was cheaper.

    Each (queries, k) of the design is also timed for a filter whose matches lie in half the index's nprobe
    lists: there the walk takes every list and the planning computes no centroid similarities
    (`physical.walks_every_list`), so the fit can tell that cost from the coarse pass's."""
    from leanml.store.query.physical import features, plan_nearest

    n, names = len(source.ids()), source.checkpoint_names()
    other_work = np.ones(min(n * source.bytes_per_row() * len(names), 64 << 20), np.uint8)
    rng = np.random.default_rng(1)
    pts = []
    few = np.flatnonzero(np.isin(ivf.list_of, np.arange(max(1, ivf.nprobe // 2))))  # rows of nprobe / 2 lists
    points = [(np.sort(rng.choice(n, m, replace=False)), nq, k) for m, nq, k, _ in design(n)]
    points += [(few, nq, min(k, len(few))) for nq, k in sorted({(nq, k) for _, nq, k, _ in design(n)}) if len(few)]
    for pos, nq, k in points:
        pos = pos.copy()
        pos.setflags(write=False)
        filter_state(ivf, pos).build()  # the filter's state is costed apart (FILTER_STATE)
        qs = [source.read(c, np.sort(rng.choice(n, nq, replace=nq > n))) + 1e-3 for c in names]
        kw = {"host": host, "recall": 0.95, "block_rows": block_rows, "calibration": cal, "cost_all": True}
        with_ivf, without = np.inf, np.inf
        for _ in range(3):
            other_work.sum()
            with_ivf = min(with_ivf, _time(plan_nearest, source, pos, qs, k, reps=1, ivf=ivf, **kw))
            other_work.sum()
            without = min(without, _time(plan_nearest, source, pos, qs, k, reps=1, ivf=None, **kw))
        _, facts = plan_nearest(source, pos, qs, k, ivf=ivf, **kw)
        pts.append((features(PLANNING, facts), max(with_ivf - without, 1e-7)))
        forget(ivf, pos)
    return pts


def _fit(rows: dict[str, list[tuple[tuple[float, ...], float]]], out: dict[str, tuple[float, ...]]) -> None:
    """NNLS on relative error of each operator's times over its work terms, into ``out`` (as Python floats,
    what `physical.cost` takes)."""
    from scipy.optimize import nnls

    for name, pts in rows.items():
        A = np.stack([f for f, _ in pts])
        t = np.array([s for _, s in pts])
        scale = np.maximum(A.max(0), 1e-30)
        w, _ = nnls((A / scale) / t[:, None], np.ones(len(t)))
        out[name] = tuple(float(x) for x in w / scale)
