"""Cross-algebra queries over the gradient store: filtered nearest, aggregation pushdown, dedup.

1. Filtered top-k on a clustered synthetic store (``--quick``: 2*10^4 rows, d = 128; full: 10^5 x 256,
   the issue's shape) and on real features (digits MLP gradients, d = 64): per selectivity (0.1, 1, 10,
   50 %) and filter kind (uncorrelated: ``u < s`` on a uniform column; correlated: ``v < s`` on a column
   that holds whole clusters, with the queries drawn from its rows; anti-correlated: the same filter, the
   queries drawn from the rows it leaves out, so all their near neighbours are filtered away), recall@10
   and p50 latency of one query for:
   * ``planned``: `leanml.store.query`'s cost-based choice (planning included), recall target 0.95, on
     the filter's positions as ``Query.where`` yields them: read-only, so the filter's matches per IVF
     list and its bitmap are built on the cell's first query and reused (`store.query.filters`);
   * ``planned-new-filter`` (at >= 10%, where the plans are IVF ones): the same on a writable copy of the
     positions (made outside the timing), so every call builds that state: a filter met for the first time;
   * ``exact-filtered``: leanml's exact scan of just the matching rows (the reference it must stay near);
   * ``faiss-ivf-postfilter``: plain FAISS IVF-Flat (nprobe 16) over-fetching k / selectivity, then the
     filter (the usual post-filter; counts how often fewer than k rows come back);
   * ``faiss-hnsw-idselector``: FAISS HNSW (M 32, efSearch 64) with an ``IDSelectorBitmap`` of the matches;
   * ``unfiltered-exact`` / ``unfiltered-ivf``: the same query with no filter (the targets' yardsticks);
   * at >= 10% also ``planned-batch`` / ``unfiltered-ivf-batch``: the cell's queries as one call (p50 per
     batch of 9 interleaved runs), the setting where the planner's fixed cost is paid once.
   Every FAISS index is built once beforehand (build time reported, not in the latency). leanml's index
   measures its filtered recall on 256 calibration queries drawn like the benchmark's but from their own
   seed (`calibration_queries`), as a user would on a task's validation gradients.
   ``lancedb-postfilter`` / ``lancedb-prefilter`` (LanceDB's defaults) and ``lancedb-prefilter-refine``
   (nprobes 32, refine_factor 10) with ``--lance-python PY`` (a Python that has lancedb, e.g. from `make
   peer-envs`; it runs as a subprocess, `lance_contender.py`, on the same rows, queries and filters).
   DuckDB's VSS extension is not run: it downloads at run time (``INSTALL vss``) and this machine is offline.
2. Planner quality (`query_grid.py`), on the same rows stored fp32 and int8 (the reference: the exact answer over the
   stored, decoded rows): over the grid selectivity (4) x filter kind (2) x k (10, 100) x codec (2) x
   queries per call (1, 32) = 64 cells, every runnable candidate is timed (interleaved, best of 3-9); a
   candidate counts if its recall@k >= 0.95 and it returns k rows. ``planner_within_10pct_share``: the
   share of cells where the planner's choice counts and its measured time is within 10% of the fastest
   candidate that counts; ``planner_worst_ratio``: the worst ratio (inf when the choice misses recall).
   The same over the *decisive* cells only (the runner-up that meets the recall is > 10% slower than the
   best, or there is no runner-up: a wrong choice costs), with planning time added (against a best plan
   that costs nothing to find), and the planning time itself (p50).
3. LESS scoring of every row against 256 target examples in 8 subtasks, on the int8 and the fp32 store:
   naive (256 cosine columns, the mean per subtask, then the max) against aggregation pushdown (8
   columns of mean unit targets), both through the same float32 scan, interleaved, best of 7; same
   top-5% selection checked. ``pushdown_speedup`` is the smaller of the two.
4. Dedup at cosine > 0.9 on rows with planted near-duplicates (quick: 2*10^4 x 64, full: 10^5 x 256):
   the exact graph (FAISS flat range search, all pairs) against the approximate one (SemDeDup's
   k-means blocks, `query.graph`); Jaccard of the removed ids.

    OMP_NUM_THREADS=1 python benchmarks/query_bench.py [--quick] [--host ID] [--out FILE]
        [--sections knn,grid,pushdown,dedup] [--rows N --dim D --dedup-rows M] [--lance-python PY]

``--sections`` runs a subset and keeps the other sections from the existing results file (same rows and
dim), so the full run can be split into pieces of a few minutes each; every section records its wall
time, the load average and when it ran.
The last line is the headline JSON (also written to benchmarks/results/query_bench[_quick].json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from leanml.io import atomic_write_text
from leanml.store import GradientStore
from leanml.store.query import IVF, Query, as_source
from leanml.store.query.calibration import operator_costs
from leanml.store.query.physical import run_nearest

RESULTS = Path(__file__).parent / "results"
# the contenders answering store ids (the references use row positions)
STORE_IDS = ("planned", "planned-new-filter", "exact-filtered", "unfiltered-exact", "planned-batch")
sys.path.insert(0, str(Path(__file__).parent))
from query_fixtures import (  # noqa: E402
    SELECTIVITY,
    Field,
    brute,
    calibration_queries,
    clustered,
    filter_columns,
    make_store,
    norm,
    planned,
    recall,
    timed,
    timed_best,
)
from query_grid import grid_summary, planner_grid  # noqa: E402


def knn_section(name: str, st: GradientStore, lab: np.ndarray, n_queries: int, host, tmp: Path,
                lance_python: str | None) -> list:
    src = as_source(st)
    sid, X = st.features()
    order = np.argsort(sid)
    Xn = norm(X)

    sorted_ids = sid[order]

    def to_pos(ids: np.ndarray) -> np.ndarray:  # leanml returns store ids; the references use row positions
        ids = np.asarray(ids)
        return np.where(ids >= 0, order[np.searchsorted(sorted_ids, np.maximum(ids, 0))], -1)

    ivf = IVF.build(src, nprobe=16, queries=[calibration_queries(X)])
    operator_costs(src, ivf, host)  # once per source, before any timing (as a Query's first nearest does)
    fld = Field(Xn)
    u, v = filter_columns(lab)
    rng = np.random.default_rng(1)
    rows, k, cells = [], 10, {}
    for kind, col in (("uncorrelated", u), ("correlated", v), ("anti-correlated", v)):
        for sel in SELECTIVITY:
            pos = np.flatnonzero(col < sel)
            if len(pos) == 0:
                pos = np.array([int(np.argmin(col))])
            fresh = pos.copy()  # writable: `planned-new-filter`'s positions, never cached
            pos = pos.copy()  # owning its data (flatnonzero's result views another array: never cached)
            pos.setflags(write=False)  # as `Query.where` yields them (`ops.where_positions`)
            if kind == "uncorrelated":
                pool = np.arange(len(X))
            elif kind == "correlated":
                pool = pos
            else:  # queries from the clusters the filter leaves out: every near neighbour is filtered away
                pool = np.setdiff1d(np.arange(len(X)), pos)
            qi = rng.choice(pool, n_queries, replace=len(pool) < n_queries)
            Q = norm(X[qi] + 0.3 * rng.standard_normal((n_queries, X.shape[1])).astype(np.float32))
            cells[(kind, sel)] = (pos, Q)
            kk = min(k, len(pos))
            runs = {
                "planned": (lambda q, pos, kk: planned(src, ivf, pos, [q], kk, host)[0]),
                "exact-filtered": (lambda q, pos, kk: run_nearest("exact-filtered", src, pos, [q], kk, {}, None)[0]),
                "faiss-ivf-postfilter": fld.postfilter,
                "faiss-hnsw-idselector": fld.hnsw_sel,
                "unfiltered-exact": (lambda q, pos, kk: run_nearest("exact-filtered", src, None, [q], k, {}, None)[0]),
                "unfiltered-ivf": (lambda q, pos, kk: fld.unfiltered_ivf(q, k)),
            }
            if sel >= 0.1:  # where the plan is an IVF one, which needs the filter's state (at <= 1%: exact)
                runs["planned-new-filter"] = lambda q, pos, kk, fresh=fresh: planned(src, ivf, fresh, [q], kk, host)[0]
            res: dict[str, dict] = {}
            names = list(runs)
            order_rng = np.random.default_rng(2)
            for i in range(n_queries):
                q = Q[i : i + 1]
                ref = brute(Xn, q, pos, kk)
                # a fresh random order per query: each contender follows every other about equally often. A
                # rotation (names[i:] + names[:i]) keeps the cyclic order, so each contender always followed the
                # same one: exact-filtered always ran right after planned had read the same rows (warm), and
                # planned always after the 25 MB unfiltered scan (cold), 0.35 against 1.02 ms for the same scan
                for c in order_rng.permutation(names):
                    fn = runs[c]
                    ids, dt = timed(fn, q, pos, kk)
                    # converted after the timing: leanml's answer is store ids, the positions are only how the
                    # reference is indexed (the conversion gathered 10^5 ids per call: ~0.14 ms, cold)
                    ids = to_pos(ids) if c in STORE_IDS else np.asarray(ids)
                    r = res.setdefault(c, {"t": [], "rec": [], "short": 0})
                    r["t"].append(dt)
                    want = brute(Xn, q, None, k) if c.startswith("unfiltered") else ref
                    r["rec"].append(recall(ids, want))
                    r["short"] += int((ids < 0).any() or ids.shape[-1] < want.shape[-1])
            for c, r in res.items():
                rows.append(_row(name, kind, sel, c, r["rec"], r["t"], r["short"]))
            if sel >= 0.1:  # the >= 10% target's other setting: the cell's queries as one batch (time per batch)
                rows += _batch_rows(name, kind, sel, {
                    "planned-batch": (lambda Q=Q, pos=pos, kk=kk: planned(src, ivf, pos, [Q], kk, host)[0],
                                      brute(Xn, Q, pos, kk)),
                    "unfiltered-ivf-batch": (lambda Q=Q: fld.unfiltered_ivf(Q, k), brute(Xn, Q, None, k))}, order_rng,
                    to_pos)
    if lance_python:
        rows += _lance(lance_python, tmp, name, X, u, v, cells, Xn)
    for r in rows:
        r["ivf_build_s"], r["hnsw_build_s"] = round(fld.ivf_build_s, 3), round(fld.hnsw_build_s, 3)
    return rows


def _batch_rows(name: str, kind: str, sel: float, runs: dict, order_rng: np.random.Generator, to_pos,  # noqa: ANN001
                reps: int = 9) -> list:
    """Each run on the whole batch, ``reps`` times in a fresh random order: rows as `_row`'s, p50 per batch
    (store ids converted to row positions by ``to_pos`` after the timing)."""
    res = {c: {"t": [], "rec": [], "short": 0} for c in runs}
    for _ in range(reps):
        for c in order_rng.permutation(list(runs)):
            fn, want = runs[c]
            ids, dt = timed(fn)
            ids = to_pos(ids) if c in STORE_IDS else np.asarray(ids)
            res[c]["t"].append(dt)
            res[c]["rec"].append(recall(ids, want))
            res[c]["short"] = max(res[c]["short"], int((ids < 0).any(axis=1).sum()))  # the worst run
    return [_row(name, kind, sel, c, r["rec"], r["t"], r["short"]) for c, r in res.items()]


def _row(name: str, kind: str, sel: float, c: str, rec: list, t: list, short: int) -> dict:
    return {"data": name, "filter": kind, "selectivity": sel, "contender": c,
            "recall_at_10": round(float(np.mean(rec)), 4), "p50_ms": round(1e3 * float(np.median(t[1:] or t)), 3),
            "queries_short_of_k": short}


def _lance(python: str, tmp: Path, name: str, X, u, v, cells: dict, Xn) -> list:  # noqa: ANN001
    """LanceDB in its own environment (subprocess): post-filter and pre-filter, IVF_PQ index."""
    import subprocess

    arrays = {"X": X, "u": u, "v": v}
    for (kind, sel), (_, Q) in cells.items():
        arrays[f"q_{kind}_{sel}"] = Q
    np.savez(tmp / "lance_in.npz", **arrays)
    subprocess.run([python, str(Path(__file__).parent / "lance_contender.py"), str(tmp / "lance_in.npz"),
                    str(tmp / "lance_out.json")], check=True, timeout=1800, capture_output=True)
    out = json.loads((tmp / "lance_out.json").read_text())
    rows = []
    for key, cell in out["cells"].items():
        mode, kind, sel = key.split("|")
        pos, Q = cells[(kind, float(sel))]
        kk = min(10, len(pos))
        recs, short = [], 0
        for q, ids in zip(Q, cell["ids"], strict=True):
            ref = brute(Xn, q[None], pos, kk)[0]
            recs.append(len(set(ids) & set(ref.tolist())) / kk)
            short += int(len(ids) < kk)
        row = _row(name, kind, float(sel), mode, recs, cell["t"], short)
        row["lancedb_index_build_s"] = round(out["build_s"], 3)
        rows.append(row)
    return rows


def pushdown_section(st: GradientStore, X: np.ndarray, reps: int) -> dict:
    """LESS over every row for 256 targets in 8 subtasks: naive (256 cosine columns, mean per subtask, max)
    against aggregation pushdown (8 columns), interleaved, best of ``reps``; same top-5% checked."""
    rng = np.random.default_rng(3)
    target = X[rng.choice(len(X), 256, replace=False)] + 0.2 * rng.standard_normal((256, X.shape[1]))
    subtasks = [f"s{i % 8}" for i in range(256)]
    if "val256" not in st.manifest.tasks:
        st.add_task("val256", target.astype(np.float32)[None], subtasks=subtasks)
    q = Query(st).score("less", target="val256").top_fraction(0.05)
    res = timed_best({"naive": lambda: q.run(rewrites=False), "pushdown": lambda: q.run(rewrites=True)},
                     min_reps=reps, max_reps=reps)
    sel = {m: set(t.column("id").to_pylist()) for m, (t, _) in res.items()}
    nb, pb = res["naive"][1], res["pushdown"][1]
    return {"rows": st.n_rows(), "dim": st.manifest.dim, "codec": st.manifest.codec, "targets": 256, "subtasks": 8,
            "naive_s": nb, "pushdown_s": pb, "speedup": nb / pb, "same_top5pct": sel["naive"] == sel["pushdown"]}


def dedup_section(tmp: Path, m: int, d: int, reps: int) -> dict:
    """Dedup at cosine > 0.9 on rows with planted near-duplicates: exact graph against the approximate one."""
    rng = np.random.default_rng(4)
    base, _ = clustered(m // 2, d, seed=5)
    dup = base[rng.choice(len(base), m - len(base))] + 0.05 * rng.standard_normal((m - len(base), d))
    st = make_store(tmp / f"dedup-{m}", np.concatenate([base, dup]).astype(np.float32), "fp32")
    small = make_store(tmp / f"dedup-warm-{m}", base[:200].astype(np.float32), "fp32")
    Query(small).dedup(0.9).run()  # imports and first calls outside the timing
    Query(small).dedup(0.9, approximate=True).run()
    ex, te = timed(lambda: Query(st).dedup(0.9).run())
    ap = timed_best({"approx": lambda: Query(st).dedup(0.9, approximate=True).run()}, min_reps=reps, max_reps=reps)
    ap, ta = ap["approx"]
    every = set(st.ids().tolist())
    re_, ra = every - set(ex.column("id").to_pylist()), every - set(ap.column("id").to_pylist())
    jac = len(re_ & ra) / max(1, len(re_ | ra))
    return {"rows": m, "dim": d, "threshold": 0.9, "exact_s": te, "approx_s": ta, "speedup": te / ta,
            "exact": "FAISS IndexFlatIP range_search (all pairs, BLAS)",
            "approx": "SemDeDup blocks: FAISS k-means sqrt(m), all pairs per block vs rows with it in their 2 nearest",
            "removed_exact": len(re_), "removed_approx": len(ra), "jaccard_removed": jac}


SECTIONS = ("knn", "grid", "pushdown", "dedup")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (same code path), < 1 min on 2 cores")
    ap.add_argument("--host", default=None, help="cost-model device id (default: quick in-process calibration)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--lance-python", default=None, help="a Python with lancedb installed, to add LanceDB as a "
                    "contender (run as a subprocess; e.g. .peers/lancedb/bin/python from `make peer-envs`)")
    ap.add_argument("--rows", type=int, default=None, help="synthetic rows (default 2*10^4 quick, 10^5 full)")
    ap.add_argument("--dim", type=int, default=None, help="synthetic dim (default 128 quick, 256 full)")
    ap.add_argument("--dedup-rows", type=int, default=None, help="dedup rows (default 2*10^4 quick, 10^5 full)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help="comma-separated subset of knn,grid,pushdown,dedup; the others are kept from the existing "
                    "results file (so a long run can be split into pieces)")
    a = ap.parse_args()
    run = [x.strip() for x in a.sections.split(",") if x.strip()]
    bad = [x for x in run if x not in SECTIONS]
    if bad:
        ap.error(f"--sections: unknown {bad}; choose from {SECTIONS}")
    torch.set_num_threads(1)
    if a.host is None:
        from leanml.hw.calibrate import calibrate

        host = calibrate(quick=True)
    else:
        from leanml.hw import get_device

        host = get_device(a.host)
    n, d = (20000, 128) if a.quick else (100000, 256)
    n, d = a.rows or n, a.dim or d
    dm = a.dedup_rows or (20000 if a.quick else 100000)
    out = a.out or RESULTS / ("query_bench_quick.json" if a.quick else "query_bench.json")
    prev = json.loads(out.read_text()) if out.exists() else {}
    parts = prev.get("sections", {}) if (prev.get("rows"), prev.get("dim")) == (n, d) else {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        X, lab = clustered(n, d)
        st = make_store(tmp / "syn", X, "int8") if {"knn", "pushdown"} & set(run) else None
        for sec in run:
            t0 = time.perf_counter()
            if sec == "knn":
                res = knn_section(f"synthetic {n}x{d} int8", st, lab, 12 if a.quick else 32, host, tmp,
                                  a.lance_python)
                real = digits_store(tmp)
                rlab = real.sql("select id, label from metadata")
                lab_of = dict(zip(rlab["id"].to_pylist(), rlab["label"].to_pylist(), strict=True))
                res += knn_section("digits MLP grads 1348x64 int8", real,
                                   np.array([lab_of[int(i)] for i in real.ids()]), 12 if a.quick else 32, host, tmp,
                                   a.lance_python)
            elif sec == "grid":
                res = planner_grid(tmp, X, lab, host, a.quick)
            elif sec == "pushdown":
                res = [pushdown_section(st, X, 7)]
                res.append(pushdown_section(make_store(tmp / "syn-fp32", X, "fp32"), X, 7))
            else:
                res = dedup_section(tmp, dm, 64 if a.quick else d, 1 if not a.quick else 3)
            parts[sec] = {"data": res, "wall_s": time.perf_counter() - t0, "load": os.getloadavg()[0],
                          "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    result = headline(parts, a, host, n, d)
    result["wall_s_this_run"] = time.perf_counter() - t_start
    atomic_write_text(out, json.dumps(result, indent=1, default=float) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "sections"}, default=float))


def digits_store(tmp: Path) -> GradientStore:
    from leanml.grads.recipes import ExtractSpec
    from leanml.store.extract import extract

    spec = ExtractSpec(dataset="digits", model="mlp", projector="dense", dim=64, batch_size=128, hidden=(32,))
    return extract(spec, tmp / "digits", codec="int8")


def headline(parts: dict, a: argparse.Namespace, host, n: int, d: int) -> dict:  # noqa: ANN001
    """The table and the headline figures from whichever sections are present (this run's or kept)."""
    r: dict = {}
    if "knn" in parts:
        knn = parts["knn"]["data"]
        planned_rows = [x for x in knn if x["contender"] == "planned"]
        table = [{k: x[k] for k in ("data", "filter", "selectivity", "contender", "recall_at_10", "p50_ms",
                                    "queries_short_of_k")} for x in knn]
        print(f"{'data':<32} {'filter':<13} {'sel':>6} {'contender':<22} {'recall@10':>9} {'p50 ms':>9} {'short':>5}")
        for x in table:
            print(f"{x['data']:<32} {x['filter']:<13} {x['selectivity']:>6} {x['contender']:<22} "
                  f"{x['recall_at_10']:>9.3f} {x['p50_ms']:>9.3f} {x['queries_short_of_k']:>5}")
        r.update(min_recall_at_10=min(x["recall_at_10"] for x in planned_rows),
                 planned_always_k_rows=all(x["queries_short_of_k"] == 0 for x in planned_rows),
                 targets_low_selectivity=_low_sel_targets(knn), contenders=table)
    if "grid" in parts:
        g = grid_summary(parts["grid"]["data"])
        print(f"planner grid: {g}")
        r.update({k: g[k] for k in ("planner_within_10pct_share", "planner_worst_ratio")}, planner_grid_summary=g)
    missing = [sec for sec in SECTIONS if sec not in parts]
    if missing:  # say so in the headline rather than leave the figures out silently
        r["sections_not_run"] = missing
    if "grid" not in parts:
        r.update(planner_within_10pct_share=None, planner_worst_ratio=None)
    if "dedup" not in parts:
        r.update(dedup_speedup=None, dedup_jaccard=None)
    if "pushdown" in parts:
        p = parts["pushdown"]["data"]
        print(f"LESS pushdown: {p}")
        r.update(pushdown_speedup=min(x["speedup"] for x in p), pushdown_same_top5pct=all(x["same_top5pct"] for x in p),
                 pushdown=p)
    if "dedup" in parts:
        dd = parts["dedup"]["data"]
        print(f"dedup: {dd}")
        r.update(dedup_speedup=dd["speedup"], dedup_jaccard=dd["jaccard_removed"], dedup=dd)
    r.update({
        "lancedb": ("run in its own environment (lance_contender.py): IVF_PQ, cosine, num_partitions sqrt(n), "
                    "num_sub_vectors d/8, post- and pre-filter at its defaults, and pre-filter with nprobes 32 and "
                    "refine_factor 10" if any(x["contender"].startswith("lancedb")
                                              for x in parts.get("knn", {}).get("data", [])) else
                    "not run: pass --lance-python (lancedb is not a leanml dependency)"),
        "duckdb_vss": "not run: the vss extension downloads at run time (INSTALL vss) and this machine is offline",
        "quick": a.quick, "rows": n, "dim": d, "host": {"id": host.id, "name": host.name},
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "sections": parts})
    return r


def _low_sel_targets(knn: list[dict]) -> dict:
    """Per data set, at <= 1% selectivity: planned p50 / exact-filtered p50 (target <= 1.2) and unfiltered
    exact p50 / planned p50 (target >= 10); at >= 10%: planned p50 / unfiltered IVF p50 (target <= 2), one query
    at a time (also for a filter met for the first time, ``planned-new-filter``) and the cell's queries as one
    batch (the planner's fixed cost then paid once), each also
    without the anti-correlated cells (their near neighbours are filtered away: no IVF walk near the query
    finds them, and the plan that keeps recall there is the exact scan, so unfiltered IVF is no yardstick)."""
    out = {}
    for data in sorted({x["data"] for x in knn}):
        by = {(x["filter"], x["selectivity"], x["contender"]): x["p50_ms"] for x in knn if x["data"] == data}
        cells = {(f, s) for f, s, _ in by}
        lo = [(by[(f, s, "planned")] / by[(f, s, "exact-filtered")], by[(f, s, "unfiltered-exact")]
               / by[(f, s, "planned")]) for f, s in cells if s <= 0.01]
        hi = {(f, s): by[(f, s, "planned")] / by[(f, s, "unfiltered-ivf")] for f, s in cells if s >= 0.1}
        hn = {(f, s): by[(f, s, "planned-new-filter")] / by[(f, s, "unfiltered-ivf")] for f, s in cells
              if s >= 0.1 and (f, s, "planned-new-filter") in by}
        hb = {(f, s): by[(f, s, "planned-batch")] / by[(f, s, "unfiltered-ivf-batch")] for f, s in cells
              if s >= 0.1 and (f, s, "planned-batch") in by}
        out[data] = {"le1pct_worst_planned_over_exact_filtered": max(x[0] for x in lo),
                     "le1pct_min_unfiltered_exact_over_planned": min(x[1] for x in lo),
                     "ge10pct_worst_planned_over_unfiltered_ivf": max(hi.values()),
                     "ge10pct_worst_planned_over_unfiltered_ivf_without_anti": max(
                         (r for (f, _), r in hi.items() if f != "anti-correlated"), default=float("nan")),
                     "ge10pct_new_filter_worst_planned_over_unfiltered_ivf_without_anti": max(
                         (r for (f, _), r in hn.items() if f != "anti-correlated"), default=float("nan")),
                     "ge10pct_batch_worst_planned_over_unfiltered_ivf": max(hb.values(), default=float("nan")),
                     "ge10pct_batch_worst_planned_over_unfiltered_ivf_without_anti": max(
                         (r for (f, _), r in hb.items() if f != "anti-correlated"), default=float("nan"))}
    return out


if __name__ == "__main__":
    main()
