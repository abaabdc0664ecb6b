"""Approximate search with FAISS for large stores, with its recall measured against exact search.

The index holds, per row, the concatenation ``[sqrt(w_1) x̂_1, ..., sqrt(w_C) x̂_C]`` of the
normalized features of every checkpoint, so an inner-product search returns exactly the LESS
combined cosine score ``sum_c w_c cos(x_c, q_c)`` (up to the index's approximation).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from leanml.store.search import as_per_checkpoint

if TYPE_CHECKING:
    from leanml.store.view import StoreView as GradientStore  # typed by what it uses: no import of store.py

INDEX_KINDS = ("ivf", "hnsw", "flat")


def _combined(blocks: list[np.ndarray], w: np.ndarray) -> np.ndarray:
    """Rows (or queries) as the index holds them: concatenated ``sqrt(w_c) x̂_c``, float32, written by one
    compiled loop per checkpoint (`kernels.unit_rows_into`). A one-query plan normalizes its query here: right
    after other work that took 146 us as NumPy calls and 55 us compiled (`benchmarks/query_micro.py`,
    ``planned_steps_10pct``, ``us_step_combined_query``; docs/query.md)."""
    from leanml.store.kernels import unit_rows_into

    if len(blocks) != len(w):
        raise ValueError(f"{len(blocks)} feature blocks for {len(w)} checkpoint weights")
    out = np.empty((len(blocks[0]), sum(x.shape[1] for x in blocks)), np.float32)
    col = 0
    for i, x in enumerate(blocks):
        if x.dtype != np.float32 and x.dtype != np.float64:  # the kernel is compiled for these two
            x = np.asarray(x, np.float32)
        unit_rows_into(x, math.sqrt(max(float(w[i]), 0.0)), out, col)
        col += x.shape[1]
    return out


class FaissIndex:
    """FAISS index over a whole store: IVF-Flat (``nlist`` cells, default ``min(4 sqrt(N), N/39)``; ``nprobe``
    searched), HNSW (``hnsw_m`` links), or flat (exact)."""

    def __init__(self, store: GradientStore, kind: str = "ivf", *, nlist: int | None = None, nprobe: int = 16,
                 hnsw_m: int = 32, seed: int = 0) -> None:
        import faiss

        if kind not in INDEX_KINDS:
            raise ValueError(f"FaissIndex: kind must be one of {INDEX_KINDS}, got {kind!r}")
        if min(store.weights()) < 0:
            raise ValueError("FaissIndex: checkpoint weights must be >= 0")
        self.store, self.kind = store, kind
        names = store.checkpoint_names()
        feats = [store.features(c) for c in names]
        self.ids = feats[0][0]
        for (i, _), c in zip(feats, names, strict=True):
            if not np.array_equal(i, self.ids):
                raise ValueError(f"FaissIndex: checkpoint {c} holds different ids or order than {names[0]}")
        X = _combined([f[1] for f in feats], store.weights())
        dim = X.shape[1]
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        else:
            nlist = nlist or max(1, min(int(4 * np.sqrt(len(X))), len(X) // 39))  # faiss wants >= 39 points/cell
            nlist = min(nlist, len(X))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            index.train(X)
            index.nprobe = min(nprobe, nlist)
        index.add(X)
        self.index, self.generation = index, store.manifest.generation

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(ids ``[nq, k]``, scores) approximately maximizing the combined cosine score."""
        qs = as_per_checkpoint(self.store, queries)
        Q = _combined(qs, self.store.weights())
        s, pos = self.index.search(Q, k)
        return np.where(pos >= 0, self.ids[np.maximum(pos, 0)], -1), s


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean fraction of the exact top-k found by the approximate search."""
    hits = [len(set(a.tolist()) & set(e.tolist())) / len(e) for a, e in zip(approx_ids, exact_ids, strict=True)]
    return float(np.mean(hits))
