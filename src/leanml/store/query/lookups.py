"""The gradient store's ``explain`` and ``n-shot``, as thin queries on this layer (exact top-k `nearest`).

They live here, above ``store.py``'s façade methods that call them, so that the store's lower modules
(``tasks``, ``search``) never import the query layer: the dependency points one way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from leanml.store.metadata import lookup
from leanml.store.query.plan import Query
from leanml.store.tasks import task_features

if TYPE_CHECKING:
    from leanml.store.view import StoreView as GradientStore


def query_features(store: GradientStore, query: Any) -> tuple[np.ndarray, int | None]:
    """A query given as features ([d] or [C, d]) or as (task name, row) -> ([C, 1, d], its id if known)."""
    if isinstance(query, tuple) and len(query) == 2 and isinstance(query[0], str):
        feats, t = task_features(store, query[0])
        row = int(query[1])
        if not 0 <= row < feats.shape[1]:
            raise ValueError(f"query row {row} is out of range for task {query[0]!r} ({feats.shape[1]} rows)")
        qid = t["ids"][row] if t.get("ids") else None
        return feats[:, row : row + 1], qid
    q = np.asarray(query, dtype=np.float32)
    C = len(store.checkpoint_names())
    if q.ndim == 1:
        q = np.broadcast_to(q, (C, q.shape[0])) if C == 1 else q[None]
    return q.reshape(C, 1, -1), None


def explain(store: GradientStore, example: Any, k: int = 10, *, metric: str = "cosine",
            device: str | None = None) -> list[dict[str, Any]]:
    """The k training examples most influential on ``example`` (features or ``(task, row)``): scores, metadata."""
    q, _ = query_features(store, example)
    t = Query(store, device=device).nearest(q, k, metric=metric).run()  # a thin query: exact top-k
    rows = lookup(store, t.column("id").to_numpy())
    return [{**r, "rank": i + 1, "score": float(s)}
            for i, (r, s) in enumerate(zip(rows, t.column("score").to_numpy(), strict=True))]


def nshot(store: GradientStore, query: Any, k: int = 4, *, exclude_ids: Sequence[int] | None = None,
          device: str | None = None) -> list[dict[str, Any]]:
    """Examples to put in a prompt for ``query``: the k most gradient-similar, ordered least to most similar.

    The most similar example comes last, right before the query (the order Liu et al., 2022, found best
    for similarity-chosen in-context examples). The query's own id is excluded when it is known.
    """
    q, qid = query_features(store, query)
    excl = set(int(i) for i in exclude_ids or []) | ({int(qid)} if qid is not None else set())
    # a thin query: over-fetch by the number excluded, so k rows remain after dropping them
    t = Query(store, device=device).nearest(q, k + len(excl)).run()
    keep = [i for i, v in enumerate(t.column("id").to_pylist()) if v not in excl][:k]
    t = t.take(keep)
    rows = lookup(store, t.column("id").to_numpy())
    out = [{**r, "score": float(s)} for r, s in zip(rows, t.column("score").to_numpy(), strict=True)]
    return out[::-1]
