"""The small measurements behind `leanml.store.query`'s planner and scan choices, one per claim in
docs/query.md, each side by side with its alternative in this one process:

1. ``decode``: int8 decode of 10^5 x 256 rows in 64 MiB blocks (65536 rows), 16 MiB blocks and at the cap
   (`Codec.block_rows`, 4 MiB), with NumPy into fresh blocks, and with `Codec.decode_into` (torch) into one
   reused buffer; and a scan's work per block (decode, 8 score columns, row norms) at 16 MiB, at the cap,
   and at the cap into the reused buffer (what `search.scan` does).
2. ``subtask_max``: LESS's max over 8 subtasks of ``[10^5, 8]`` scores, along the short axis against over the
   transposed copy (`scoring.reduce_subtasks`).
3. ``difficulty_median``: the median of ``[32, nlist]`` centroid similarities, ``np.median`` against
   ``np.partition`` (`ivf.difficulty`).
4. ``plan_at_0.1pct``: one-query `plan_nearest` + `run_nearest` at a 0.1% filter, 200 queries in a loop,
   against the bare exact filtered scan.
5. ``pushdown_cache``: the fp32 pushed-down LESS query run back to back against right after the naive
   plan (the VM's large L3 holds a 100 MB store).
6. ``cold_floor``: p50 of one call right after 25 MB of other work (``_cold``) and in a loop (``_warm``): a
   plain FAISS IVF search (nprobe 16), the same with an ``IDSelectorBitmap`` of a 10% filter, leanml's
   planned query at that filter; the exact scan of a 0.1% filter's matches through the torch block scan
   and through `search`'s NumPy path for a few rows (`search.SMALL_ROWS`).
7. ``planner_cold``: right after 25 MB of other work, one cost prediction as a NumPy dot product against
   Python float arithmetic (`physical.cost`), and the planned query against the bare exact scan at 0.1% and
   1% filters (p50 over 100 queries, the runs in a fresh random order per query).
8. ``planned_steps_10pct``: one planned query at a 10% filter taken apart, each planning step and both IVF
   runs timed alone right after 25 MB of other work, beside the whole call and FAISS's unfiltered search.
9. ``recall_int8`` / ``recall_fp32``: the IVF walk's recall@10 on the int8 and the fp32 store (the index
   built with nprobe 16, its recall table measured on 256 noisy queries):
   * at 8 probes, for held-out stored rows against noisy queries (a stored row + 0.3 noise per dimension);
   * under an anti-correlated 50% filter (whole clusters; queries from the clusters left out), at the
     probes the global selectivity asks for against the planner's (local selectivity);
   * per cluster (batches of 32 queries from one cluster, 40 clusters), at the average's probes against
     the difficulty bands' probes: the worst cluster and the mean probes.

Sizes: full 10^5 x 256 (the issue's shape); ``--quick`` 2*10^4 x 128 (same code path). Prints a table and
its headline figures as one JSON line, saved to ``benchmarks/results/query_micro[_quick].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).parent))
from leanml.io import atomic_write_text  # noqa: E402
from leanml.store.codecs import get_codec  # noqa: E402
from leanml.store.query import IVF, Query, as_source  # noqa: E402
from leanml.store.query.calibration import operator_costs  # noqa: E402
from leanml.store.query.filters import id_selector  # noqa: E402
from leanml.store.query.ivf import assign, bitmap_search, combined_queries, difficulty  # noqa: E402
from leanml.store.query.physical import plan_nearest, run_nearest  # noqa: E402
from leanml.store.scoring import reduce_subtasks  # noqa: E402
from query_fixtures import brute, calibration_queries, clustered, filter_columns, make_store, norm, planned, recall  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def best_ms(fn, reps: int = 7) -> float:  # noqa: ANN001
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return 1e3 * min(out)


def decode(n: int, d: int) -> dict:
    c = get_codec("int8")
    codes, scale = c.encode(np.random.default_rng(0).standard_normal((n, d)).astype(np.float32))

    def blocks(br: int) -> None:
        for a in range(0, n, br):
            c.decode(codes[a : a + br], scale[a : a + br], d)

    buf = np.empty((c.block_rows(65536, d), d), np.float32)

    def reused() -> None:  # `Codec.decode_into` one buffer, as `search.scan` asks (`iter_blocks(reuse=True)`)
        br = len(buf)
        for a in range(0, n, br):
            c.decode_into(codes[a : a + br], scale[a : a + br], d, buf)

    M = torch.randn(8, d)

    def scored(br: int, reuse: bool = False) -> None:  # a scan's work per block: 8 score columns, row norms
        for a in range(0, n, br):
            x = (c.decode_into(codes[a : a + br], scale[a : a + br], d, buf) if reuse
                 else c.decode(codes[a : a + br], scale[a : a + br], d))
            X = torch.from_numpy(x)
            (X @ M.T) / torch.linalg.vector_norm(X, dim=1, keepdim=True)

    rows16 = (16 << 20) // (4 * d)
    return {"rows": n, "dim": d, "ms_65536_rows": best_ms(lambda: blocks(65536)),
            "ms_16MiB": best_ms(lambda: blocks(rows16)),
            "ms_capped": best_ms(lambda: blocks(c.block_rows(65536, d))),
            "ms_decode_into_reused": best_ms(reused),
            "ms_scan8_16MiB": best_ms(lambda: scored(rows16)),
            "ms_scan8_capped": best_ms(lambda: scored(len(buf))),
            "ms_scan8_capped_reused": best_ms(lambda: scored(len(buf), True)),
            "cap_rows": c.block_rows(65536, d)}


def subtask_max(n: int) -> dict:
    per = np.random.default_rng(1).random((n, 8)).astype(np.float32)
    assert np.array_equal(reduce_subtasks(per, "max"), per.max(1))
    return {"rows": n, "ms_max_axis1": best_ms(lambda: per.max(1), 20),
            "ms_transposed": best_ms(lambda: reduce_subtasks(per, "max"), 20)}


def median(nlist: int) -> dict:
    S = np.random.default_rng(2).random((32, nlist)).astype(np.float32)
    h = nlist // 2
    return {"shape": [32, nlist], "ms_np_median": best_ms(lambda: np.median(S, axis=1), 50),
            "ms_partition": best_ms(lambda: np.partition(S, h, axis=1)[:, h], 50),
            "ms_difficulty": best_ms(lambda: difficulty(S), 50)}


def plan_loop(src, ivf, host, u: np.ndarray, X: np.ndarray) -> dict:  # noqa: ANN001
    pos = np.flatnonzero(u < 0.001)
    rng = np.random.default_rng(0)
    Q = norm(X[rng.choice(len(X), 200)] + 0.3 * rng.standard_normal((200, X.shape[1])).astype(np.float32))
    for i in range(20):
        planned(src, ivf, pos, [Q[i : i + 1]], 10, host)

    def loop(fn) -> float:  # noqa: ANN001
        t0 = time.perf_counter()
        for i in range(200):
            fn(Q[i : i + 1])
        return 1e3 * (time.perf_counter() - t0) / 200

    pl = loop(lambda q: planned(src, ivf, pos, [q], 10, host))
    ex = loop(lambda q: run_nearest("exact-filtered", src, pos, [q], 10, {}, None))
    name = planned(src, ivf, pos, [Q[:1]], 10, host)[1]
    return {"matches": len(pos), "ms_planned": pl, "ms_exact_filtered": ex, "ratio": pl / ex, "chosen": name}


def evict() -> None:
    """Touch 25 MB (the unfiltered scan's bytes at 10^5 x 256 int8), as another query's work does."""
    np.ones(25_000_000, np.uint8).sum()


def cold_floor(src, ivf: IVF, host, u: np.ndarray, X: np.ndarray) -> dict:  # noqa: ANN001
    """p50 of one call, each right after `evict` and in a loop with nothing between: a plain FAISS IVF search,
    the same with an ``IDSelectorBitmap`` of a 10% filter (built per call), leanml's planned query there;
    and the exact scan of a 0.1% filter's matches through the torch block scan against `search`'s NumPy
    path for a few rows."""
    import faiss

    from leanml.store import search

    rng = np.random.default_rng(5)
    Q = norm(X[rng.choice(len(X), 60)] + 0.3 * rng.standard_normal((60, X.shape[1])).astype(np.float32))
    Qc = combined_queries(src, [Q])
    idx, n = ivf.index, ivf.index.ntotal
    p10, p01 = np.flatnonzero(u < 0.1), np.flatnonzero(u < 0.001)

    def faiss_sel(q: np.ndarray) -> None:
        sel, bits = id_selector(n, p10)
        idx.search(q, 10, params=faiss.SearchParametersIVF(sel=sel, nprobe=16))
        del sel, bits

    def torch_scan(q: np.ndarray) -> None:
        small, search.SMALL_ROWS = search.SMALL_ROWS, 0
        try:
            run_nearest("exact-filtered", src, p01, [q], 10, {}, None)
        finally:
            search.SMALL_ROWS = small

    runs = {"faiss_ivf": lambda i: idx.search(Qc[i : i + 1], 10, params=faiss.SearchParametersIVF(nprobe=16)),
            "faiss_ivf_bitmap_10pct": lambda i: faiss_sel(Qc[i : i + 1]),
            "planned_10pct": lambda i: planned(src, ivf, p10, [Q[i : i + 1]], 10, host),
            "exact_0.1pct_torch": lambda i: torch_scan(Q[i : i + 1]),
            "exact_0.1pct_numpy": lambda i: run_nearest("exact-filtered", src, p01, [Q[i : i + 1]], 10, {}, None)}
    out = {}
    for cold in (True, False):
        for name, fn in runs.items():
            ts = []
            for i in range(len(Q)):
                if cold:
                    evict()
                t0 = time.perf_counter()
                fn(i)
                ts.append(time.perf_counter() - t0)
            out[f"ms_{name}_{'cold' if cold else 'warm'}"] = 1e3 * float(np.median(ts[1:]))
    return out


def cold_p50_us(runs: dict, n: int, rng: np.random.Generator) -> dict:
    """{"us_<name>": p50 microseconds} of each ``runs[name](i)`` for i < ``n``, each call right after `evict`,
    the runs in a fresh random order per i (none always follows the same one)."""
    ts: dict[str, list[float]] = {c: [] for c in runs}
    for i in range(n):
        for c in rng.permutation(list(runs)):
            evict()
            t0 = time.perf_counter()
            runs[c](i)
            ts[c].append(time.perf_counter() - t0)
    return {f"us_{c}": 1e6 * float(np.median(t)) for c, t in ts.items()}


def planner_cold(src, ivf: IVF, host, u: np.ndarray, X: np.ndarray) -> dict:  # noqa: ANN001
    """Right after `evict`, p50 over 100 queries in a fresh random order each: one cost prediction as a NumPy
    dot product of two small arrays against `physical.cost` on Python floats; and at 0.1% and 1% filters the
    planned query (operator_costs lookup, `plan_nearest`, `choose`, the run) against the bare exact scan."""
    from leanml.store.query.physical import cost, features

    cal = operator_costs(src, ivf, host)
    w = cal["exact-filtered"]
    f = features("exact-filtered", {"m": 100, "n": len(X), "nq": 1, "k": 10, "D": X.shape[1]})
    rng = np.random.default_rng(6)
    Q = norm(X[rng.choice(len(X), 100)] + 0.3 * rng.standard_normal((100, X.shape[1])).astype(np.float32))
    runs = {"cost_numpy_dot": lambda i: float(np.dot(np.asarray(w), np.asarray(f))),
            "cost_python": lambda i: cost(w, f)}
    for sel in (0.001, 0.01):
        pos = np.flatnonzero(u < sel)
        runs[f"planned_{sel:g}"] = lambda i, pos=pos: planned(src, ivf, pos, [Q[i : i + 1]], 10, host)
        runs[f"exact_{sel:g}"] = lambda i, pos=pos: run_nearest("exact-filtered", src, pos, [Q[i : i + 1]], 10, {},
                                                                None)
    out = cold_p50_us(runs, len(Q), rng)
    for sel in ("0.001", "0.01"):
        out[f"ratio_planned_over_exact_{sel}"] = out[f"us_planned_{sel}"] / out[f"us_exact_{sel}"]
    return out


def planned_steps(st, src, ivf: IVF, host, u: np.ndarray, X: np.ndarray) -> dict:  # noqa: ANN001
    """Where one planned query at a 10% filter spends its time: each step `plan_nearest`'s IVF branch and the
    run take, called alone right after `evict` (p50 over 100 queries, the steps in a fresh random order per
    query), beside the whole planned call and FAISS's own unfiltered IVF search of the same query (nprobe 16).
    Each step alone is colder than inside the call, so the steps' sum overstates the call; the shares say
    which work the >= 10% one-query target (2x unfiltered IVF) is lost to.

    The whole call twice: ``planned_whole`` with the filter's positions read-only, as ``Query.where`` yields
    them (its matches per list and bitmap are then built once and reused: `filters`), and
    ``planned_whole_new_filter`` with a writable array (built in every call: a filter seen for the first
    time). And through the public API, a ``Query`` built per call: ``query_where_nearest`` (the ``where``
    answered from its per-SQL cache) and ``query_where_nearest_new_filter`` (the cache emptied first, so
    DuckDB runs and the filter's state is built)."""
    import faiss

    from leanml.store.query.physical import local_selectivity, walk_facts

    cal = operator_costs(src, ivf, host)
    rng = np.random.default_rng(8)
    Q = norm(X[rng.choice(len(X), 100)] + 0.3 * rng.standard_normal((100, X.shape[1])).astype(np.float32))
    pos = np.flatnonzero(u < 0.1)  # writable: never cached
    pos_ro = pos.copy()
    pos_ro.setflags(write=False)
    C, nlist = ivf.centroids(), int(ivf.index.nlist)
    ml = np.bincount(ivf.list_of[pos], minlength=nlist)
    Qc = [combined_queries(src, [Q[i : i + 1]]) for i in range(len(Q))]
    S = [q @ C.T for q in Qc]
    facts = [plan_nearest(src, pos, [Q[i : i + 1]], 10, host=host, recall=0.95, ivf=ivf, calibration=cal,
                          cost_all=True)[1] for i in range(len(Q))]  # cost_all: every query's walk, to run both plans
    probes = facts[0].get("probes", 16)
    def api(i: int, new_filter: bool) -> object:
        if new_filter:
            as_source(st).__dict__.pop("_where_cache", None)
        return Query(st, index=ivf, host=host).where("u < 0.1").nearest(Q[i : i + 1], 10, recall=0.95).run()

    api(0, True)  # the source's first Query: its calibration, outside the timing
    runs = {"planned_whole": lambda i: planned(src, ivf, pos_ro, [Q[i : i + 1]], 10, host),
            "planned_whole_new_filter": lambda i: planned(src, ivf, pos, [Q[i : i + 1]], 10, host),
            "query_where_nearest": lambda i: api(i, False),
            "query_where_nearest_new_filter": lambda i: api(i, True),
            "faiss_ivf_unfiltered": lambda i: ivf.index.search(Qc[i], 10, params=faiss.SearchParametersIVF(nprobe=16)),
            "step_plan_nearest": lambda i: plan_nearest(src, pos, [Q[i : i + 1]], 10, host=host, recall=0.95, ivf=ivf,
                                                        calibration=cal),
            "step_matches_per_list": lambda i: np.bincount(ivf.list_of[pos], minlength=nlist),
            "step_combined_query": lambda i: combined_queries(src, [Q[i : i + 1]]),
            "step_centroid_sims": lambda i: Qc[i] @ C.T,
            "step_local_selectivity": lambda i: local_selectivity(ivf, S[i], ml),
            "step_difficulty_bands": lambda i: ivf.band_counts(S[i]),
            "step_walk": lambda i: walk_facts(ivf, Qc[i], ml, 10, 10, probes, S[i]),
            "step_run_ivf_bitmap": lambda i: run_nearest("ivf-bitmap", src, pos, [Q[i : i + 1]], 10, facts[i], ivf),
            "step_run_ivf_postfilter": lambda i: run_nearest("ivf-postfilter", src, pos, [Q[i : i + 1]], 10, facts[i],
                                                             ivf)}
    out = cold_p50_us(runs, len(Q), rng)
    out["chosen"] = planned(src, ivf, pos_ro, [Q[:1]], 10, host)[1]
    for w in ("planned_whole", "planned_whole_new_filter", "query_where_nearest", "query_where_nearest_new_filter"):
        out[f"ratio_{w}_over_unfiltered_ivf"] = out[f"us_{w}"] / out["us_faiss_ivf_unfiltered"]
    return out


def pushdown_cache(st, X: np.ndarray) -> dict:  # noqa: ANN001
    rng = np.random.default_rng(3)
    target = X[rng.choice(len(X), 256, replace=False)] + 0.2 * rng.standard_normal((256, X.shape[1]))
    st.add_task("val256", target.astype(np.float32)[None], subtasks=[f"s{i % 8}" for i in range(256)])
    q = Query(st).score("less", target="val256").top_fraction(0.05)
    q.run(rewrites=True)
    q.run(rewrites=False)
    warm = best_ms(lambda: q.run(rewrites=True), 5)
    after = []
    for _ in range(5):
        q.run(rewrites=False)
        t0 = time.perf_counter()
        q.run(rewrites=True)
        after.append(time.perf_counter() - t0)
    return {"ms_back_to_back": warm, "ms_after_naive": 1e3 * min(after)}


def walk_recall(ivf: IVF, src, Xn: np.ndarray, Q: np.ndarray, pos: np.ndarray | None, probes: int) -> float:  # noqa: ANN001
    Qc = combined_queries(src, [Q])
    ml = np.bincount(ivf.list_of if pos is None else ivf.list_of[pos], minlength=ivf.index.nlist)
    Iq, _, _ = assign(ivf, Qc, ml, 10, probes)
    return recall(bitmap_search(ivf, Qc, pos, 10, Iq)[1], brute(Xn, Qc, pos, 10))


def recall_section(src, ivf: IVF, X: np.ndarray, lab: np.ndarray, v: np.ndarray, host) -> dict:  # noqa: ANN001
    rng = np.random.default_rng(4)
    Xn = norm(X)

    def noisy(idx: np.ndarray) -> np.ndarray:
        return norm(X[idx] + 0.3 * rng.standard_normal((len(idx), X.shape[1])).astype(np.float32))

    held = rng.choice(len(X), 128, replace=False)  # unfiltered: its own row would be its nearest: leave it out
    keep = np.setdiff1d(np.arange(len(X)), held)
    out = {"held_out_rows_at_8": walk_recall(ivf, src, Xn, norm(X[held]), keep, 8),
           "noisy_queries_at_8": walk_recall(ivf, src, Xn, noisy(held), keep, 8)}
    pos = np.flatnonzero(v < 0.5)
    Q = noisy(rng.choice(np.setdiff1d(np.arange(len(X)), pos), 64))
    p_global = ivf.probes_for(len(pos) / len(X), 10, 0.95)[0]
    cands, facts = plan_nearest(src, pos, [Q], 10, host=host, recall=0.95, ivf=ivf)
    out["anti_50pct_probes_global"], out["anti_50pct_recall_global"] = p_global, walk_recall(ivf, src, Xn, Q, pos,
                                                                                              p_global)
    out["anti_50pct_planner_selectivity"] = facts["selectivity_seen"]
    worst, probes = {"average": 1.0, "bands": 1.0}, {"average": [], "bands": []}
    C = ivf.centroids()
    for cl in rng.choice(lab.max() + 1, 40, replace=False):
        Qc = noisy(rng.choice(np.flatnonzero(lab == cl), 32))
        bands = ivf.band_counts(combined_queries(src, [Qc]) @ C.T)
        for how, b in (("average", None), ("bands", bands)):
            p = ivf.probes_for(1.0, 10, 0.95, b)[0]
            probes[how].append(p)
            worst[how] = min(worst[how], walk_recall(ivf, src, Xn, Qc, None, p))
    out.update({f"cluster_worst_recall_{h}": worst[h] for h in worst})
    out.update({f"cluster_mean_probes_{h}": float(np.mean(probes[h])) for h in probes})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2*10^4 x 128 (same code path), < 1 min on 2 cores")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    from leanml.hw.calibrate import calibrate

    host = calibrate(quick=True)
    n, d = (20000, 128) if a.quick else (100000, 256)
    X, lab = clustered(n, d)
    t0 = time.perf_counter()
    res = {"decode": decode(100000, 256), "subtask_max": subtask_max(100000)}
    with tempfile.TemporaryDirectory() as t:
        st = make_store(Path(t) / "int8", X, "int8")
        u, v = filter_columns(lab)
        st.add_metadata(pa.table({"id": np.arange(n), "u": u}))  # make_store's ids are the row positions
        src = as_source(st)
        ivf = IVF.build(src, nprobe=16, queries=[calibration_queries(X)])
        operator_costs(src, ivf, host)
        res["difficulty_median"] = median(int(ivf.index.nlist))
        res["plan_at_0.1pct"] = plan_loop(src, ivf, host, u, X)
        res["cold_floor"] = cold_floor(src, ivf, host, u, X)
        res["planner_cold"] = planner_cold(src, ivf, host, u, X)
        res["planned_steps_10pct"] = planned_steps(st, src, ivf, host, u, X)
        res["recall_int8"] = recall_section(src, ivf, X, lab, v, host)
        fp = make_store(Path(t) / "fp32", X, "fp32")
        fsrc = as_source(fp)
        res["recall_fp32"] = recall_section(fsrc, IVF.build(fsrc, nprobe=16, queries=[calibration_queries(X)]), X,
                                            lab, v, host)
        res["pushdown_cache"] = pushdown_cache(fp, X)
    out = {"quick": a.quick, "rows": n, "dim": d, "nlist": int(ivf.index.nlist), **res,
           "load": os.getloadavg()[0], "torch_threads": 1, "wall_s": time.perf_counter() - t0}
    for k, v_ in res.items():
        print(f"{k:18s} " + "  ".join(f"{kk}={vv:.4g}" if isinstance(vv, float) else f"{kk}={vv}"
                                       for kk, vv in v_.items()))
    path = a.out or RESULTS / ("query_micro_quick.json" if a.quick else "query_micro.json")
    atomic_write_text(path, json.dumps(out, indent=1, default=float) + "\n")
    print(json.dumps(out, default=float))


if __name__ == "__main__":
    main()
