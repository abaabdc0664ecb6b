"""`Query`: a logical plan of composable steps over a store, planned by cost and run step by step.

    from leanml.store.query import Query
    q = (Query(store).where("source = 'gsm8k' AND tokens < 512").score("less", target="gsm8k-val")
         .top_fraction(0.05).dedup(threshold=0.95))
    print(q.explain())        # the plan: rewrites, physical choices, predicted time per operator
    table = q.run()           # Arrow: id, score, component, component_size
    print(q.explain())        # now with the measured time of each operator

Each step returns Arrow (``q.results[i]``). Steps, their semantics and the rewrites are in
`leanml.store.query.steps` and `leanml.store.query.rewrites`; `nearest`'s physical operators in
`leanml.store.query.physical`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from leanml.hw import costmodel as cm
from leanml.store.plan import exact_scan_time
from leanml.store.query import graph as G
from leanml.store.query import ops
from leanml.store.query.errors import QueryError
from leanml.store.query.physical import APPROX, IVF, _host, _model, choose, plan_nearest, run_nearest
from leanml.store.query.rewrites import rewrite
from leanml.store.query.source import QuerySource, RowView, as_source
from leanml.store.query.steps import Step, check


def default_host() -> str:
    """``local`` when this machine is calibrated (`leanml hw calibrate`), else the catalog's ``dev_vm``."""
    from leanml.hw import local_device_path

    return "local" if local_device_path().exists() else "dev_vm"


@dataclass
class QueryOpRecord:
    """One operator of the physical plan: what ran, on how many rows, predicted and measured seconds."""

    step: str
    operator: str
    rows_in: int | None
    rows_out: int | None = None
    predicted_s: float | None = None  # None = not modelled by leanml.hw (DuckDB, scipy, Python)
    measured_s: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class _State:
    positions: np.ndarray | None  # sorted row positions of the current set (None = every row)
    rel: pa.Table | None = None  # None = just the row set (id column made on demand)
    graph: G.Graph | None = None
    exact_rows: bool = True  # positions known exactly (False while explaining past a non-relational step)
    est_rows: int = 0


class Query:
    """A composable query over a `GradientStore` (or an `ArraySource`); see the module docstring."""

    def __init__(self, source: Any, *, host: Any = None, index: IVF | None = None, block_rows: int = 65536,
                 device: str | None = "cpu", calibrate: bool = True) -> None:
        """``host``: cost-model device for the predictions; ``device``: torch device of the scans and scores
        (``"cpu"``; None = CUDA when present). ``index``: a prebuilt `IVF` (else `with_index`). ``calibrate``:
        time nearest's candidates once on this source to correct the roofline (`calibration`)."""
        self.calibrate = calibrate
        self.source: QuerySource = as_source(source)
        self.device = device
        self.host = default_host() if host is None else host
        self.index, self.block_rows = index, int(block_rows)
        self.steps: list[Step] = []
        self.results: list[pa.Table] = []
        self.records: list[QueryOpRecord] | None = None
        self._explained: list[QueryOpRecord] | None = None
        self.notes: list[str] = []

    # ---- building --------------------------------------------------------------------------------
    def _add(self, kind: str, **args: Any) -> Query:
        step = check(Step(kind, args), f"{len(self.steps) + 1} {kind}")
        self.steps.append(step)
        self.records, self._explained = None, None
        return self

    def where(self, sql: str) -> Query:
        return self._add("where", sql=sql)

    def nearest(self, queries: Any, k: int = 10, *, recall: float | None = None, plan: str | None = None,
                metric: str = "cosine") -> Query:
        """Top-k per query; ``recall`` < 1 allows approximate plans; ``plan`` forces a candidate by name."""
        return self._add("nearest", queries=queries, k=k, recall=recall, plan=plan, metric=metric)

    def score(self, method: str = "less", *, target: Any = None, subtasks: Any = None, reduce: str = "mean") -> Query:
        return self._add("score", method=method, target=target, subtasks=subtasks, reduce=reduce)

    def top(self, n: int) -> Query:
        return self._add("top", n=n)

    def top_fraction(self, p: float) -> Query:
        return self._add("top_fraction", p=p)

    def knn_graph(self, k: int | None = 10, threshold: float | None = None, *, approximate: bool = False) -> Query:
        return self._add("knn_graph", k=k, threshold=threshold, approximate=approximate)

    def components(self) -> Query:
        return self._add("components")

    def dedup(self, threshold: float = 0.95, *, k: int | None = None, approximate: bool = False) -> Query:
        return self._add("dedup", threshold=threshold, k=k, approximate=approximate)

    def diversify(self, n: int, method: str = "components") -> Query:
        return self._add("diversify", n=n, method=method)

    def sample(self, n: int, seed: int = 0) -> Query:
        return self._add("sample", n=n, seed=seed)

    def join(self, table: Any, on: Any = "id", how: str = "inner") -> Query:
        return self._add("join", table=table, on=on, how=how)

    def add_steps(self, steps: list[Step]) -> Query:
        for s in steps:
            self._add(s.kind, **s.args)
        return self

    def with_index(self, nprobe: int = 16, seed: int = 0, queries: Any = None) -> Query:
        """Build (once) the FAISS IVF index `nearest` may use for approximate plans; its recall is measured
        under random filters at build (`ivf.IVF`), and the planner only trusts those measurements.
        ``queries``: vectors like the ones you will search with (a task's validation gradients; per
        checkpoint ``[nq, d]`` or ``[nq, d]`` for one checkpoint): recall is then measured for them, not
        for held-out stored rows (queries unlike stored rows need more probes)."""
        if self.index is None:
            from leanml.store.search import as_per_checkpoint

            qs = None if queries is None else as_per_checkpoint(RowView(self.source), queries)
            self.index = IVF.build(self.source, nprobe=nprobe, seed=seed, queries=qs)
        return self

    # ---- running ---------------------------------------------------------------------------------
    def run(self, *, rewrites: bool = True) -> pa.Table:
        """Run the plan; returns the last step's Arrow table (every step's in ``self.results``)."""
        self.records, self.results = self._execute(dry=False, rewrites=rewrites), []
        return self._last

    def explain(self, *, rewrites: bool = True) -> str:
        """The plan as text: before `run`, predicted times (``where`` steps are run in DuckDB for the exact
        selectivity); after it, predicted and measured time per operator."""
        from leanml.store.query.explain import render

        recs = self.records
        if recs is None:
            recs = self._explained = self._execute(dry=True, rewrites=rewrites)
        return render(self, recs, ran=self.records is not None)

    def _execute(self, *, dry: bool, rewrites: bool) -> list[QueryOpRecord]:
        if not self.steps:
            raise QueryError("0", "the query has no steps; add where/nearest/score/... first")
        steps, notes, push = rewrite(self.steps) if rewrites else (list(self.steps), [], set())
        self.notes = notes
        st = _State(None, est_rows=len(self.source.ids()))
        recs, results = [], []
        for i, s in enumerate(steps, 1):
            label = f"{i} {s.kind}"
            rec = QueryOpRecord(label, s.label(), st.est_rows)
            t0 = time.perf_counter()
            self._step(s, st, rec, dry=dry, pushdown=id(s) in push)
            if not dry:
                rec.measured_s = time.perf_counter() - t0
            rec.rows_out = st.est_rows
            recs.append(rec)
            if not dry:
                results.append(self._rel(st))
        if not dry:
            self.results = results
            self._last = results[-1]
        return recs

    # ---- steps ---------------------------------------------------------------------------------
    def _rel(self, st: _State) -> pa.Table:
        if st.rel is None:
            ids = self.source.ids() if st.positions is None else self.source.ids()[st.positions]
            st.rel = pa.table({"id": pa.array(ids, pa.int64())})
        return st.rel

    def _set_rel(self, st: _State, rel: pa.Table) -> None:
        st.rel = rel
        st.positions = self.source.positions_of(np.unique(rel.column("id").to_numpy()))
        st.est_rows = rel.num_rows
        if st.graph is not None:
            st.graph = G.restrict(st.graph, rel.column("id").to_numpy())

    def _m(self, st: _State) -> int:
        return len(self.source.ids()) if st.positions is None else len(st.positions)

    def _step(self, s: Step, st: _State, rec: QueryOpRecord, *, dry: bool, pushdown: bool) -> None:
        a, label, src = s.args, rec.step, self.source
        D = src.manifest.dim * len(src.checkpoint_names())
        model = _model(_host(self.host))
        if s.kind == "where":
            if dry and not st.exact_rows:
                rec.notes.append("rows not known before the steps above run")
                return
            t0 = time.perf_counter()
            pos, cached = ops.where_positions(src, a["sql"], label)
            st.positions = pos if st.positions is None else np.intersect1d(st.positions, pos, assume_unique=True)
            if cached:
                rec.notes.append("rows from the cache of this SQL's earlier run on this source (ops.where_positions)")
            if dry:
                rec.measured_s = time.perf_counter() - t0
                rec.notes.append("ran in DuckDB while explaining: the selectivity is exact" if not cached else
                                 "known while explaining: the selectivity is exact")
            else:
                if st.rel is not None:
                    st.rel = ops.filter_ids(st.rel, src.ids()[st.positions])
                if st.graph is not None:
                    st.graph = G.restrict(st.graph, src.ids()[st.positions])
                    rec.notes.append("graph restricted to the matching rows (induced subgraph)")
            st.est_rows = self._m(st) if st.rel is None else st.rel.num_rows
            rec.notes.append(f"selectivity {self._m(st) / max(len(src.ids()), 1):.4%} "
                             f"({self._m(st)} of {len(src.ids())} rows)")
            return
        if s.kind == "nearest":
            self._nearest(s, st, rec, dry=dry)
            return
        if s.kind == "score":
            m = st.est_rows if st.rel is None or "query" not in st.rel.column_names else self._m(st)
            cols = ops.score_columns(src, a, pushdown)
            rec.predicted_s, _ = exact_scan_time(model.device, n=max(m, 1), d=src.manifest.dim,
                                                 C=len(src.checkpoint_names()), codec=src.manifest.codec,
                                                 nq=max(cols, 1), k=1, block_rows=self.block_rows)
            rec.notes.append(f"{cols} score column(s) over {m} rows" + (" (aggregation pushdown)" if pushdown else ""))
            if a["method"] == "trak":
                rec.notes.append("TRAK kernel over every stored row, whatever the filter")
            if dry:
                return
            if self._m(st) == 0:
                raise QueryError(label, "empty result where one is required: no rows left to score")
            ids, sc = ops.score(src, st.positions, a, pushdown=pushdown, step=label, device=self.device)
            if st.rel is None:  # just a row set: the scores come in position order, no id matching needed
                st.rel = pa.table({"id": pa.array(ids, pa.int64()), "score": pa.array(sc)})
            else:
                self._set_rel(st, ops.merge_column(self._rel(st), ids, sc, "score"))
            return
        if s.kind in ("top", "top_fraction"):
            n = a["n"] if s.kind == "top" else max(1, int(round(a["p"] * st.est_rows)))
            rec.predicted_s = model.time(cm.OpSpec("reduction", float(max(st.est_rows, 1)), 12.0 * max(st.est_rows, 1),
                                                   "fp32", "sort", vclass="sort"))
            if dry:
                st.est_rows, st.exact_rows = min(n, st.est_rows), False
                return
            if s.kind == "top_fraction":
                n = max(1, int(round(a["p"] * self._rel(st).num_rows)))
            self._set_rel(st, ops.top(self._rel(st), n, label))
            return
        if s.kind == "join":
            rec.notes.append("DuckDB join, in the left table's order")
            if not dry:
                self._set_rel(st, ops.join(self._rel(st), src, a["table"], a["on"], a.get("how", "inner"), label))
            return
        if s.kind == "sample":
            if not dry:
                rel = self._distinct(st)
                rng = np.random.default_rng(a.get("seed", 0))
                n = min(a["n"], rel.num_rows)
                self._set_rel(st, rel.take(pa.array(np.sort(rng.choice(rel.num_rows, n, replace=False)))))
            st.est_rows = min(a["n"], st.est_rows)
            return
        self._graph_step(s, st, rec, dry=dry, model=model, D=D)

    def _distinct(self, st: _State) -> pa.Table:
        """One row per id (after a multi-query nearest: the best score of each id)."""
        rel = self._rel(st)
        if "query" not in rel.column_names:
            return rel
        t = rel.sort_by([("score", "descending"), ("id", "ascending")])
        _, first = np.unique(t.column("id").to_numpy(), return_index=True)
        t = t.take(pa.array(np.sort(first))).drop_columns([c for c in ("query", "rank") if c in t.column_names])
        self._set_rel(st, t)
        return t

    def _nearest(self, s: Step, st: _State, rec: QueryOpRecord, *, dry: bool) -> None:
        from leanml.store.search import as_per_checkpoint

        a, label, src = s.args, rec.step, self.source
        try:
            qs = as_per_checkpoint(RowView(src), a["queries"])
        except ValueError as e:
            raise QueryError(label, f"queries: dimension mismatch: {e}") from None
        if st.rel is not None and "query" in st.rel.column_names and not dry:
            self._distinct(st)
        m = self._m(st)
        if m == 0:
            if dry and not st.exact_rows:
                return
            raise QueryError(label, "empty result where one is required: no rows match before nearest")
        metric = a.get("metric", "cosine")
        from leanml.store.query.calibration import operator_costs

        cal = operator_costs(src, self.index, self.host, self.block_rows) if self.calibrate else None
        forced = a.get("plan")
        cands, facts = plan_nearest(src, st.positions, qs, a["k"], host=self.host, recall=a.get("recall"),
                                    ivf=self.index, block_rows=self.block_rows, metric=metric, calibration=cal,
                                    cost_all=forced in APPROX)
        if cal:
            rec.notes.append("predictions: NNLS fit of each operator's work terms, measured on this source "
                             "(calibration.py)")
        if "ivf_recall_measured" in facts:
            rec.notes.append(f"IVF filtered recall measured at build for this selectivity and k: "
                             f"{facts['ivf_recall_measured']:.3f}" + (f" at {facts['probes']} probes"
                                                                       if "probes" in facts else ""))
        if facts.get("filter_state") == "cached":
            rec.notes.append("the filter's IVF state (matches per list, bitmap) reused from an earlier query "
                             "(filters.py)")
        elif facts.get("filter_state_s"):
            rec.notes.append(f"the filter's IVF state is built in this call: {facts['filter_state_s'] * 1e3:.3g} ms "
                             "predicted, in the IVF plans' cost (reused by later queries with this filter)")
        if forced:
            match = [c for c in cands if c.name == forced]
            if not match:
                raise QueryError(label, f"plan {forced!r} unknown; candidates: {[c.name for c in cands]}")
            if not match[0].runnable:
                raise QueryError(label, f"plan {forced!r} cannot run: {match[0].why_not}")
            chosen = match[0]
        else:
            chosen = choose(cands)
        rec.operator = f"nearest[{chosen.name}](k={a['k']}, queries={qs[0].shape[0]})"
        rec.predicted_s = chosen.predicted_s
        rec.notes += [f"{c.name}: {c.predicted_s * 1e3:.3g} ms" + ("" if c.eligible else f" ({c.why_not})")
                      for c in cands]
        if a["k"] > m:
            rec.notes.append(f"only {m} rows match: {m} per query, not k={a['k']}")
        st.est_rows, st.exact_rows = qs[0].shape[0] * min(a["k"], m), False
        self.last_candidates = cands
        if dry:
            return
        ids, sc, info = run_nearest(chosen.name, src, st.positions, qs, a["k"], facts, self.index, self.block_rows,
                                    metric=metric, device=self.device)
        if info.get("bitmap_fallback_queries"):
            rec.notes.append(f"{info['bitmap_fallback_queries']} queries fell back to the bitmap scan of the same "
                             "lists (the over-fetch left fewer than k rows)")
        if info.get("fallback_queries"):
            rec.notes.append(f"{info['fallback_queries']} queries fell back to the exact scan (fewer than k rows)")
        nq, kk = ids.shape
        self._set_rel(st, pa.table({"query": np.repeat(np.arange(nq), kk), "rank": np.tile(np.arange(1, kk + 1), nq),
                                    "id": ids.ravel().astype(np.int64), "score": sc.ravel()}))

    def _graph_step(self, s: Step, st: _State, rec: QueryOpRecord, *, dry: bool, model: cm.CostModel, D: int) -> None:
        a, label = s.args, rec.step
        m = st.est_rows
        if s.kind in ("knn_graph", "dedup"):
            approx = bool(a.get("approximate"))
            if approx and m >= 78:
                nlist = G.approx_nlist(m)
                pairs = m * m * min(8, nlist) / nlist
            else:
                pairs = float(m) * m
            rec.predicted_s = model.time(cm.OpSpec("matmul", 2.0 * pairs * D, 4.0 * (2 * m * D + pairs), "fp32",
                                                   "graph similarities"))
            rec.notes.append("graph over the current rows only: components connect through them alone")
        if dry:
            if s.kind == "diversify":
                st.est_rows = min(a["n"], m)
            return
        rel = self._distinct(st)
        if rel.num_rows == 0:
            raise QueryError(label, "empty result where one is required: no rows to build a graph over")
        if s.kind in ("knn_graph", "dedup"):
            g = G.build_graph(self.source, st.positions, k=a.get("k"), threshold=a.get("threshold"),
                              approximate=bool(a.get("approximate")))
            st.graph = G.align(g, rel.column("id").to_numpy())
            rec.notes.append(f"{'exact' if g.exact else 'approximate'} graph: {g.params}")
            if s.kind == "knn_graph":
                self._set_rel(st, ops.merge_column(rel, st.graph.ids, np.diff(st.graph.W.indptr), "degree"))
                return
        if s.kind in ("components", "dedup"):
            if st.graph is None:
                raise QueryError(label, "needs a graph: put knn_graph(k, threshold) before components()")
            lab, size = G.components(st.graph)
            rel = ops.merge_column(ops.merge_column(rel, st.graph.ids, lab, "component"), st.graph.ids, size,
                                   "component_size")
            if s.kind == "components":
                self._set_rel(st, rel)
                return
            sc = rel.column("score").to_numpy() if "score" in rel.column_names else None
            keep = G.pick_per_component(rel.column("component").to_numpy(), sc, rel.column("id").to_numpy())
            rec.notes.append(f"kept {len(keep)} of {rel.num_rows} (one per component: highest score, else lowest id)")
            self._set_rel(st, rel.take(pa.array(keep)))
            return
        # diversify
        ids = rel.column("id").to_numpy()
        sc = rel.column("score").to_numpy() if "score" in rel.column_names else None
        if a.get("method", "components") == "components":
            if "component" not in rel.column_names:
                raise QueryError(label, "method='components' needs components: put knn_graph(...) and "
                                        "components() (or dedup) before diversify")
            pick = G.round_robin(rel.column("component").to_numpy(), sc, ids, a["n"])
        else:
            if st.graph is None:
                raise QueryError(label, "method='facility' needs a graph: put knn_graph(k, threshold) before it")
            pick = G.facility_location(G.align(st.graph, ids), a["n"], sc)
        self._set_rel(st, rel.take(pa.array(pick)))
