"""Logical rewrites, applied before physical planning; each is checked against the naive plan by a test.

1. **Filter pushdown below the score matmul**: ``score(...) -> where(sql)`` becomes
   ``where(sql) -> score(...)``. ``where`` reads the metadata only, so it commutes with ``score``;
   pushed down, only the matching rows are read from the shards, decoded and multiplied.
2. **Filter before the graph**: ``knn_graph(threshold=t) -> where(sql)`` (no ``k``) becomes
   ``where(sql) -> knn_graph(threshold=t)``. Semantics: the naive plan keeps the subgraph the graph
   induces on the matching rows; the threshold graph of the matching rows is exactly that subgraph
   (an edge depends only on its two ends), so components agree. With ``k`` the neighbour lists depend
   on the other rows, and the rewrite is not applied.
3. **Aggregation pushdown**: ``score(method="less")`` and ``score(method="inner", reduce="mean")``
   score one column per subtask, against the mean (normalized, for cosine) target vector, instead of
   one per target example followed by the mean: ``mean_j cos(x, t_j) = x̂ · mean_j t̂_j``, and
   ``mean_j x·t_j = x · mean_j t_j``.
"""

from __future__ import annotations

from leanml.store.query.steps import Step


def rewrite(steps: list[Step]) -> tuple[list[Step], list[str], set[int]]:
    """(rewritten steps, notes saying what moved, ids of score steps to run with aggregation pushdown)."""
    out = list(steps)
    notes: list[str] = []
    moved = True
    while moved:
        moved = False
        for i in range(len(out) - 1):
            a, b = out[i], out[i + 1]
            if b.kind != "where":
                continue
            if a.kind == "score":
                notes.append(f"filter pushdown: {b.label()} moved below {a.label()} (where reads metadata only, "
                             "so it commutes with score; only matching rows are read and scored)")
            elif a.kind == "knn_graph" and a.args.get("k") is None:
                notes.append(f"filter before graph: {b.label()} moved before {a.label()} (the threshold graph "
                             "of the matches is the subgraph the full graph induces on them)")
            else:
                continue
            out[i], out[i + 1] = b, a
            moved = True
            break
    push = set()
    for s in out:
        if s.kind == "score" and (s.args["method"] == "less"
                                  or (s.args["method"] == "inner" and s.args.get("reduce", "mean") == "mean")):
            push.add(id(s))
            notes.append(f"aggregation pushdown: {s.label()} scores one column per subtask (mean target vector)")
    return out, notes, push
