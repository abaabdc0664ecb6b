"""Per-shard Ray tasks for the scan steps: each task scores one shard's matching rows, the driver merges.

``nearest_ray`` runs the exact filtered scan (`search.topk` over a `RowView` of one shard's matches) as
one Ray task per shard and merges the per-shard top-k (the global top-k is inside the union of the
per-shard top-k); ``score_ray`` runs `ops.score` per shard and concatenates. Tasks open the store by path
(``ray.init(address=...)`` first for a cluster whose nodes share the store's file system; otherwise a
local Ray starts). TRAK is not offered here: its kernel spans every row, a reduction of its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from leanml.store.query.errors import QueryError


def _shard_positions(source: Any, positions: np.ndarray | None) -> list[np.ndarray]:
    off = source._offsets[source.checkpoint_names()[0]]
    pos = np.arange(off[-1]) if positions is None else np.asarray(positions)
    cuts = np.searchsorted(pos, off)
    return [pos[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]


def _task_nearest(root: str, positions: np.ndarray, qs: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    from leanml.store.query.source import RowView, as_source
    from leanml.store.search import topk
    from leanml.store.store import GradientStore

    return topk(RowView(as_source(GradientStore.open(root)), positions), qs, min(k, len(positions)), device="cpu")


def _task_score(root: str, positions: np.ndarray, args: dict) -> tuple[np.ndarray, np.ndarray]:
    from leanml.store.query import ops
    from leanml.store.query.source import as_source
    from leanml.store.store import GradientStore

    return ops.score(as_source(GradientStore.open(root)), positions, args, pushdown=True, step="score (ray task)")


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise QueryError("ray", "needs Ray: install leanml's 'ray' extra") from None
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    return ray


def nearest_ray(store: Any, queries: Any, k: int, positions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``queries`` over ``positions`` (None = all rows), one Ray task per shard."""
    from leanml.store.query.source import RowView, as_source
    from leanml.store.search import as_per_checkpoint

    src = as_source(store)
    qs = as_per_checkpoint(RowView(src), queries)
    ray = _ray()
    task = ray.remote(_task_nearest)
    parts = ray.get([task.remote(str(src.root), p, qs, k) for p in _shard_positions(src, positions)])
    ids = np.concatenate([p[0] for p in parts], axis=1)
    sc = np.concatenate([p[1] for p in parts], axis=1)
    order = np.argsort(-sc, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, 1), np.take_along_axis(sc, order, 1)


def score_ray(store: Any, method: str, target: Any, positions: np.ndarray | None = None, *,
              subtasks: Any = None, reduce: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores) of ``score(method in {"less", "inner"}, target)`` over ``positions``, one task per shard."""
    from leanml.store.query.source import as_source

    if method not in ("less", "inner"):
        raise QueryError("score (ray)", f"method must be 'less' or 'inner' per shard, got {method!r}")
    src = as_source(store)
    ray = _ray()
    task = ray.remote(_task_score)
    args = {"method": method, "target": target, "subtasks": subtasks, "reduce": reduce}
    parts = ray.get([task.remote(str(src.root), p, args) for p in _shard_positions(src, positions)])
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
