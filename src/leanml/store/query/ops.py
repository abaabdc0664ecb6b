"""Relational and tensor steps: ``where`` and ``join`` in DuckDB, ``score`` through the store's scoring
functions (`leanml.store.search`), ``top`` / ``sample``.

``score`` is the one adapter to the scoring code: it hands `score_all` and `trak_scores` a `RowView` of the
current rows (LESS: `score_all`'s cosine scan, one column per target example for the naive plan or one per
subtask for the aggregation pushdown, both in float32 through the same scan, so the rewrite is what
differs; the subtask grouping and max are `leanml.store.scoring`'s), so a filter placed before it (or
pushed below it by the rewrite) means only those rows are read, decoded and multiplied (TRAK's kernel
still spans every stored row: ``kernel_store``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from leanml.store.query.errors import QueryError
from leanml.store.query.source import QuerySource, RowView


def where_ids(source: QuerySource, sql: str, step: str) -> np.ndarray:
    """Ids whose metadata row matches the predicate ``sql`` (DuckDB over the metadata)."""
    import duckdb

    if not source.has_metadata():
        raise QueryError(step, f"{source.root}: the store has no metadata to filter on; add it with "
                               "store.add_metadata({...})")
    with source.duckdb() as con:
        try:
            t = con.sql(f"SELECT id FROM metadata WHERE {sql}").to_arrow_table()
        except duckdb.BinderException as e:
            cols = [r[0] for r in con.sql("DESCRIBE metadata").fetchall()]
            raise QueryError(step, f"unknown column or bad reference in {sql!r}: {str(e).splitlines()[0]}; "
                                   f"metadata columns: {cols}") from None
        except duckdb.Error as e:
            raise QueryError(step, f"SQL error in {sql!r}: {str(e).splitlines()[0]}") from None
    col = t.column("id").combine_chunks()
    return col.to_numpy(zero_copy_only=col.null_count == 0) if len(col) else np.zeros(0, np.int64)


WHERE_CACHE_ENTRIES = 32
WHERE_CACHE_BYTES = 256 * 2**20


def where_positions(source: QuerySource, sql: str, step: str) -> tuple[np.ndarray, bool]:
    """(sorted row positions matching ``sql``, read-only; whether they came from the cache).

    Cached per SQL text on the source: a store's source is rebuilt when its manifest generation changes
    (`source.as_source`), and an `ArraySource`'s Arrow metadata cannot change, so an entry never outlives
    the rows it describes. The array is read-only, which lets `filters.filter_state` keep the filter's
    IVF state beside it: a filter reused across queries is evaluated, counted per list and turned into a
    bitmap once (Lucene's query cache). Bounded by ``WHERE_CACHE_ENTRIES`` and ``WHERE_CACHE_BYTES``."""
    cache: OrderedDict[str, np.ndarray] = source.__dict__.setdefault("_where_cache", OrderedDict())
    hit = cache.get(sql)
    if hit is not None:
        cache.move_to_end(sql)
        return hit, True
    pos = source.positions_of(where_ids(source, sql, step))
    pos.setflags(write=False)
    cache[sql] = pos
    while len(cache) > WHERE_CACHE_ENTRIES or (len(cache) > 1 and sum(a.nbytes for a in cache.values())
                                                > WHERE_CACHE_BYTES):
        cache.popitem(last=False)
    return pos, False


def join(rel: pa.Table, source: QuerySource, other: Any, on: Any, how: str, step: str) -> pa.Table:
    """``rel`` joined with a user table (Arrow, dict of columns, pandas) or ``"metadata"``, in ``rel``'s order."""
    import duckdb

    keys = [on] if isinstance(on, str) else list(on)
    if how not in ("inner", "left"):
        raise QueryError(step, f"how must be 'inner' or 'left', got {how!r}")
    with source.duckdb() as con:
        con.register("rel", rel.append_column("__pos", pa.array(np.arange(rel.num_rows))))
        if isinstance(other, str):
            if other != "metadata":
                raise QueryError(step, f"table must be 'metadata' or a table object, got {other!r}")
            if not source.has_metadata():
                raise QueryError(step, "the store has no metadata to join with")
            right = "metadata"
        else:
            try:
                con.register("other_t", pa.table(other) if isinstance(other, dict) else other)
            except (duckdb.Error, TypeError, ValueError) as e:
                raise QueryError(step, f"table: not a table DuckDB can read ({e})") from None
            right = "other_t"
        right_cols = [r[0] for r in con.sql(f"DESCRIBE {right}").fetchall()]
        missing = [c for c in keys if c not in rel.column_names or c not in right_cols]
        if missing:
            raise QueryError(step, f"unknown join column(s) {missing}: left has {rel.column_names}, right has "
                                   f"{right_cols}")
        extra = [c for c in right_cols if c not in keys and c not in rel.column_names]
        sel = ", ".join(['r.*'] + [f'o."{c}"' for c in extra])
        using = ", ".join(f'"{c}"' for c in keys)
        try:
            t = con.sql(f"SELECT {sel} FROM rel r {how.upper()} JOIN {right} o USING ({using}) "
                        "ORDER BY r.__pos").to_arrow_table()
        except duckdb.Error as e:
            raise QueryError(step, f"SQL error in the join: {str(e).splitlines()[0]}") from None
    return t.drop_columns(["__pos"])


def _target(source: QuerySource, target: Any, subtasks: Any, step: str) -> tuple[list[np.ndarray], Any]:
    """Target features per checkpoint (a stored task's, or given) and subtask labels."""
    from leanml.store.search import as_per_checkpoint

    if isinstance(target, str):
        from leanml.store.tasks import task_features

        store = getattr(source, "store", None)
        if store is None:
            raise QueryError(step, f"target {target!r} names a stored task, but the source is not a store")
        try:
            feats, entry = task_features(store, target)
        except Exception as e:  # StoreError: no such task
            raise QueryError(step, str(e)) from None
        return list(feats), subtasks if subtasks is not None else entry.get("subtasks")
    try:
        return as_per_checkpoint(RowView(source), target), subtasks
    except ValueError as e:
        raise QueryError(step, f"target: dimension mismatch: {e}") from None


def score(source: QuerySource, positions: np.ndarray | None, args: dict, *, pushdown: bool,
          step: str, device: str | None = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(ids, one score per row) for the rows at ``positions``; ``pushdown`` = aggregation pushdown on."""
    from leanml.store.scoring import reduce_subtasks, subtask_groups
    from leanml.store.search import score_all, trak_scores

    method, reduce = args["method"], args.get("reduce", "mean")
    qs, subtasks = _target(source, args["target"], args.get("subtasks"), step)
    view = RowView(source, positions)
    br = int(args.get("block_rows", 65536))
    if method == "less":
        _, groups = subtask_groups(subtasks, len(qs[0]))
        if pushdown:  # mean of cosines over a subtask = x̂ · (mean of the subtask's unit target rows)
            means = [np.stack([_unit(q)[g].mean(0) for g in groups]) for q in qs]
            ids, per = score_all(view, means, metric="cosine", normalize_queries=False, block_rows=br, device=device)
        else:  # naive: one cosine column per target example, then the mean per subtask
            ids, S = score_all(view, qs, metric="cosine", block_rows=br, device=device)
            per = np.stack([S[:, g].mean(1) for g in groups], 1)
        return ids, reduce_subtasks(per, "max")
    if method == "inner":
        if pushdown and reduce == "mean":  # mean of inner products = inner product with the mean target
            return score_all(view, [q.mean(0, keepdims=True) for q in qs], metric="ip", reduce="max",
                             block_rows=br, device=device)
        return score_all(view, qs, metric="ip", reduce=reduce, block_rows=br, device=device)
    # trak: the kernel (Φ^T Φ + λI)^-1 is over every stored row, whatever the filter
    kernel = None if positions is None else RowView(source)
    ids, S = trak_scores(view, qs, block_rows=br, device=device, kernel_store=kernel)
    return ids, (S.mean(1) if reduce == "mean" else S.max(1))


def _unit(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float32)
    return q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)


def merge_column(rel: pa.Table, ids: np.ndarray, values: np.ndarray, name: str) -> pa.Table:
    """``rel`` with column ``name`` set from (ids, values), matched by id."""
    order = np.argsort(ids)
    rid = rel.column("id").to_numpy()
    j = order[np.searchsorted(ids[order], rid)]
    col = pa.array(np.asarray(values)[j])
    if name in rel.column_names:
        return rel.set_column(rel.column_names.index(name), name, col)
    return rel.append_column(name, col)


def top(rel: pa.Table, n: int, step: str) -> pa.Table:
    """The n rows of highest ``score`` (per query when the relation has a ``query`` column)."""
    if "score" not in rel.column_names:
        raise QueryError(step, "needs a score column: put score(...) or nearest(...) before top")
    keys = [("query", "ascending")] if "query" in rel.column_names else []
    if not keys:  # partial selection, then sort only the candidates: same order as a full sort
        s = rel.column("score").to_numpy()
        if n >= len(s):
            return rel.sort_by([("score", "descending"), ("id", "ascending")])
        thr = s[np.argpartition(-s, n - 1)[:n]].min()
        cand = np.flatnonzero(s >= thr)
        ids = rel.column("id").to_numpy()
        pick = cand[np.lexsort((ids[cand], -s[cand]))[:n]]
        return rel.take(pa.array(pick))
    t = rel.sort_by([*keys, ("score", "descending"), ("id", "ascending")])
    q = t.column("query").to_numpy()
    first = np.searchsorted(q, q)
    return t.filter(pa.array(np.arange(len(q)) - first < n))


def filter_ids(rel: pa.Table, ids: np.ndarray) -> pa.Table:
    return rel.filter(pc.is_in(rel.column("id"), value_set=pa.array(ids, pa.int64())))


def score_columns(src: QuerySource, a: dict, pushdown: bool) -> int:
    """How many score columns the step multiplies: one per target example, or per subtask when pushed down."""
    t = a["target"]
    if isinstance(t, str):
        store = getattr(src, "store", None)
        entry = store.manifest.tasks.get(t, {}) if store is not None else {}
        n, subs = int(entry.get("rows") or 1), entry.get("subtasks")
    else:
        n, subs = int(np.shape(t)[-2]) if np.ndim(t) >= 2 else 1, None
    subs = a.get("subtasks") if a.get("subtasks") is not None else subs
    if pushdown:
        return 1 if a["method"] == "inner" else (len(set(np.asarray(subs).tolist())) if subs is not None else 1)
    return n
