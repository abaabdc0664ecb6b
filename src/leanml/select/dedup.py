"""Selection methods built from the store's cross-algebra queries (`leanml.store.query`).

* ``dedup-random``: SemDeDup-style (Abbas et al., 2023): the pool's gradient features (or
  ``pool.features``, e.g. from a gradient store) are deduplicated — rows whose combined cosine is above
  ``threshold`` are joined, one row per connected component is kept — then ``k`` of the kept rows are
  drawn uniformly at random. If fewer than k remain, the rest is drawn at random from the removed rows.
* ``less-dedup``: LESS scores (the ``less`` method's own), then diversified: the ``pool_factor * k`` best
  rows, their threshold graph and its components, and the best row of each component in score order,
  then the second best of each, until k (``diversify(method="components")``). The default threshold
  ``"auto"`` is read off the candidates' own similarities: the median, over the candidates, of the
  combined cosine to their nearest other candidate. So the more redundant half of LESS's best rows is
  joined to a neighbour and the round robin spreads the k picks over the components, whatever the
  scale of the features (a fixed 0.95 joins nothing among in-distribution gradients, and the method
  then equals ``less``). A number in [-1, 1] fixes the threshold instead.

Both are metered like every selector: warm-up, gradient features and the query are in ``Selection.cost``.
"""

from __future__ import annotations

import numpy as np

from leanml.select.base import Pool, SelectionError, Target, register
from leanml.select.features import GradientFeatures
from leanml.select.targeted import LessSelector, _GradientTargeted


def _source(f: GradientFeatures, n: int, scores: np.ndarray | None = None):  # noqa: ANN202
    from leanml.store.query import ArraySource

    X = np.stack([np.asarray(f.rows(c), dtype=np.float32) for c in range(f.n_checkpoints)])
    meta = None if scores is None else {"id": np.arange(n, dtype=np.int64), "score": np.asarray(scores, np.float64)}
    w = np.maximum(np.asarray(f.checkpoint_weights, dtype=np.float64), 0.0)
    w = w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))  # combined cosine in [-1, 1]: a threshold
    return ArraySource(X, np.arange(n, dtype=np.int64), weights=w,  # is a cosine, whatever the learning rates
                       metadata=meta, name="pool features")


def _check_threshold(method: str, threshold: float) -> float:
    if not -1 <= threshold <= 1:
        raise SelectionError(f"{method}: threshold must be a cosine in [-1, 1], got {threshold}")
    return float(threshold)


@register
class DedupRandomSelector(_GradientTargeted):
    """SemDeDup-style dedup of gradient features, then uniform random (see module docstring)."""

    method = "dedup-random"
    needs_target = False

    def __init__(self, *, seed: int = 0, threshold: float = 0.95, approximate: bool | None = None,
                 warmup_fraction: float = 0.05, warmup_epochs: int = 4, dim: int = 512, params: str = "all") -> None:
        super().__init__(seed=seed, warmup_fraction=warmup_fraction, warmup_epochs=warmup_epochs, dim=dim,
                         params=params)
        self.threshold, self.approximate = _check_threshold(self.method, threshold), approximate

    def applicable(self, pool: Pool, target: Target | None = None) -> str | None:
        if pool.features is not None:
            return None
        return None if pool.learner is not None else f"{self.method} needs pool.features or a pool learner"

    def scores(self, pool: Pool, target: Target | None) -> np.ndarray:
        """A random priority in [0, 1) per row, plus 1 for the rows dedup keeps: the top k are k kept rows
        drawn uniformly (then removed ones, at random, if fewer than k are kept)."""
        from leanml.store.query import Query

        f = pool.features if pool.features is not None else self.pool_features(pool, kind="sgd", output="loss")
        n = len(pool)
        approx = n > 20000 if self.approximate is None else self.approximate
        kept = Query(_source(f, n)).dedup(self.threshold, approximate=approx).run().column("id").to_numpy()
        self.kept_after_dedup = int(len(kept))
        s = np.random.default_rng(self.seed).random(n)
        s[kept] += 1.0
        return s


@register
class LessDedupSelector(LessSelector):
    """LESS scores, then diversified over the threshold graph of the best candidates (module docstring)."""

    method = "less-dedup"

    def __init__(self, *, seed: int = 0, threshold: float | str = "auto", pool_factor: float = 3.0,
                 warmup_fraction: float = 0.05, warmup_epochs: int = 4, dim: int = 512, params: str = "all") -> None:
        super().__init__(seed=seed, warmup_fraction=warmup_fraction, warmup_epochs=warmup_epochs, dim=dim,
                         params=params)
        if pool_factor < 1:
            raise SelectionError(f"{self.method}: pool_factor must be >= 1, got {pool_factor}")
        if isinstance(threshold, str) and threshold != "auto":
            raise SelectionError(f"{self.method}: threshold must be 'auto' or a cosine in [-1, 1], got {threshold!r}")
        self.threshold = threshold if threshold == "auto" else _check_threshold(self.method, float(threshold))
        self.pool_factor = float(pool_factor)

    def choose(self, scores: np.ndarray, k: int, pool: Pool) -> np.ndarray:
        from leanml.store.query import Query

        f = self.pool_features(pool, kind="adam", output="loss")
        n = len(pool)
        m = min(n, max(k, int(np.ceil(self.pool_factor * k))))
        src = _source(f, n, scores)
        best = Query(src).join("metadata", on="id").top(m)
        thr = self.threshold if self.threshold != "auto" else auto_threshold(src, best.run().column("id").to_numpy())
        self.threshold_used = float(thr)
        q = best.knn_graph(None, threshold=thr).components().diversify(k)
        return q.run().column("id").to_numpy()


def auto_threshold(src, ids: np.ndarray) -> float:  # noqa: ANN001
    """Median over ``ids`` of the combined cosine to the nearest other row among ``ids`` (module docstring)."""
    from leanml.store.query.graph import combined_rows

    if len(ids) < 2:
        return 1.0
    _, X = combined_rows(src, src.positions_of(ids))
    S = X @ X.T
    np.fill_diagonal(S, -np.inf)
    # strictly-greater edges: nudge down so the median row itself joins its neighbour
    return float(np.nextafter(np.median(S.max(1)), -np.inf))
