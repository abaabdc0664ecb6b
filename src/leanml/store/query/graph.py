"""Graph steps: the similarity graph of a row set (FAISS), its components (scipy.sparse.csgraph), dedup and
diversification.

Edges join rows whose combined cosine ``sum_c w_c cos(x_c, y_c)`` is above ``threshold`` (FAISS
``range_search``: strictly greater) and, with ``k``, that are among each other's k nearest (either way:
the graph is made symmetric). It is built only over the rows of the current set, so a component is
connected through rows of the set alone. Exact = ``IndexFlatIP`` (all pairs, BLAS). Approximate: a
threshold graph (dedup) is built as SemDeDup does, all pairs inside FAISS k-means blocks (each row
compared with the rows that have its block among their 2 nearest centroids; `_blocked_threshold_pairs`);
a k-NN graph searches an IVF-Flat over the set (``nlist = sqrt(m)``, ``nprobe`` lists). k-means is
trained on 64 rows per centroid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from leanml.store.query.source import QuerySource, RowView


@dataclass
class Graph:
    """A symmetric similarity graph over ``ids`` (CSR, data = similarity; no self loops)."""

    ids: np.ndarray
    W: sp.csr_matrix
    exact: bool
    params: dict[str, Any]


def need_faiss(step: str):  # noqa: ANN201
    """FAISS (the optional ``index`` extra), or a clear error naming the step."""
    try:
        import faiss
    except ImportError:
        from leanml.store.query.errors import QueryError

        raise QueryError(step, "needs FAISS: install leanml's 'index' extra (faiss-cpu)") from None
    return faiss


def combined_rows(source: QuerySource, positions: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, rows as ``[sqrt(w_c) x̂_c]_c``): inner products of these rows are combined cosines."""
    from leanml.store.ann import _combined

    view = RowView(source, positions)
    feats = [view.features(c) for c in view.checkpoint_names()]
    return feats[0][0], _combined([f[1] for f in feats], source.weights())


TRAIN_PER_LIST = 64  # k-means on 64 rows per list (FAISS wants >= 39): the build stays a small part of the graph


def approx_nlist(m: int) -> int:
    """Lists of the approximate graph's IVF: ~sqrt(m) (each row's range search then scans ~nprobe/sqrt(m) of
    the rows), at least 39 rows per list."""
    return max(1, min(int(np.sqrt(m)), m // 39))


def build_graph(source: QuerySource, positions: np.ndarray | None, *, k: int | None, threshold: float | None,
                approximate: bool = False, nprobe: int = 8, seed: int = 0) -> Graph:
    faiss = need_faiss("knn_graph")

    ids, X = combined_rows(source, positions)
    m, D = X.shape
    approximate = approximate and m >= 2 * 39
    if approximate and k is None:  # threshold graph: SemDeDup's blocks (k-means, then all pairs per block)
        rows, nbr, sims, params = _blocked_threshold_pairs(X, float(threshold), seed)
    else:
        if approximate:
            nlist = approx_nlist(m)
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(D), D, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            index.train(_train_rows(X, nlist, seed))
            index.nprobe = min(nprobe, nlist)
            params = {"index": "ivf", "nlist": nlist, "nprobe": int(index.nprobe)}
        else:
            index, params = faiss.IndexFlatIP(D), {"index": "flat"}
        index.add(X)
        if k is None:
            lims, sims, nbr = index.range_search(X, float(threshold))
            rows = np.repeat(np.arange(m), np.diff(lims).astype(np.int64))
        else:
            sims, nbr = index.search(X, min(k + 1, m))
            rows = np.repeat(np.arange(m), nbr.shape[1])
            sims, nbr = sims.ravel(), nbr.ravel()
            ok = nbr >= 0
            if threshold is not None:
                ok &= sims > threshold
            rows, sims, nbr = rows[ok], sims[ok], nbr[ok]
    off = rows != nbr
    rows, nbr, sims = rows[off], nbr[off], sims[off]
    W = sp.coo_matrix((sims, (rows, nbr)), shape=(m, m)).tocsr()
    W = W.maximum(W.T).tocsr()  # symmetric: an edge found either way
    return Graph(ids, W, not approximate, {**params, "k": k, "threshold": threshold, "edges": int(W.nnz // 2)})


def _train_rows(X: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    m = len(X)
    return X if m <= TRAIN_PER_LIST * nlist else X[np.random.default_rng(seed).choice(m, TRAIN_PER_LIST * nlist,
                                                                                      replace=False)]


def _blocked_threshold_pairs(X: np.ndarray, threshold: float, seed: int, assign: int = 2,
                             block: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Pairs with similarity > threshold found inside k-means blocks (SemDeDup, Abbas et al. 2023): FAISS
    k-means (``approx_nlist(m)`` centroids); each row's block is its nearest centroid, and it is compared
    (one BLAS matmul per block) with every row that has that centroid among its ``assign`` nearest, so
    near-duplicates split by a block boundary are still found. Work ~ assign * m^1.5 * D instead of m^2 * D."""
    import faiss

    m, D = X.shape
    nlist = approx_nlist(m)
    km = faiss.Kmeans(D, nlist, niter=10, seed=seed, spherical=True)
    km.train(_train_rows(X, nlist, seed))
    _, A = km.index.search(X, min(assign, nlist))
    home = A[:, 0]
    members = [[] for _ in range(nlist)]
    for j in range(A.shape[1]):
        order = np.argsort(A[:, j], kind="stable")
        bounds = np.searchsorted(A[order, j], np.arange(nlist + 1))
        for c in range(nlist):
            members[c].append(order[bounds[c]:bounds[c + 1]])
    h_order = np.argsort(home, kind="stable")
    h_bounds = np.searchsorted(home[h_order], np.arange(nlist + 1))
    out_r, out_c, out_s = [], [], []
    for c in range(nlist):
        own = h_order[h_bounds[c]:h_bounds[c + 1]]
        near = np.unique(np.concatenate(members[c]))
        if len(own) == 0 or len(near) == 0:
            continue
        Xn = X[near]
        for a in range(0, len(own), block):
            o = own[a : a + block]
            S = X[o] @ Xn.T
            i, j = np.nonzero(threshold < S)
            out_r.append(o[i])
            out_c.append(near[j])
            out_s.append(S[i, j])
    cat = (lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt))  # noqa: E731
    params = {"index": "kmeans-blocks", "nlist": nlist, "assign": int(A.shape[1]),
              "train_rows": min(m, TRAIN_PER_LIST * nlist)}
    return cat(out_r, np.int64), cat(out_c, np.int64), cat(out_s, np.float32), params


def components(g: Graph) -> tuple[np.ndarray, np.ndarray]:
    """(component label, component size) per row of the graph."""
    _, lab = connected_components(g.W, directed=False)
    sizes = np.bincount(lab)
    return lab, sizes[lab]


def pick_per_component(labels: np.ndarray, scores: np.ndarray | None, ids: np.ndarray) -> np.ndarray:
    """Index of one row per component: the highest score, ties (or no score) to the lowest id."""
    s = np.zeros(len(ids)) if scores is None else np.asarray(scores, dtype=np.float64)
    order = np.lexsort((ids, -s, labels))  # by label, then best score, then lowest id
    first = np.ones(len(order), bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    return np.sort(order[first])


def round_robin(labels: np.ndarray, scores: np.ndarray | None, ids: np.ndarray, n: int) -> np.ndarray:
    """The best of each component in score order, then the second best of each, ... until n rows."""
    s = np.zeros(len(ids)) if scores is None else np.asarray(scores, dtype=np.float64)
    order = np.lexsort((ids, -s, labels))
    lab_sorted = labels[order]
    start = np.searchsorted(lab_sorted, lab_sorted)  # first index of each row's component in the order
    rank_in = np.arange(len(order)) - start
    final = np.lexsort((ids[order], -s[order], rank_in))
    return order[final[:n]]


def facility_location(g: Graph, n: int, scores: np.ndarray | None = None) -> np.ndarray:
    """Greedy facility location: maximize ``sum_i max_{j in S} W_ij`` with ``W_ii = 1`` (similarities below
    zero count as zero); (1 - 1/e)-optimal. Ties, and picks once every row is covered, go by score then id."""
    m = g.W.shape[0]
    W = (g.W.maximum(0) + sp.identity(m, format="csr")).tocoo()
    r, c, w = W.row, W.col, W.data
    cover = np.zeros(m)
    s = np.zeros(m) if scores is None else np.asarray(scores, dtype=np.float64)
    tie = 1e-9 * (s - s.min()) / max(np.ptp(s), 1e-30) if len(s) else s
    chosen = np.zeros(m, bool)
    out = []
    for _ in range(min(n, m)):
        gains = np.bincount(c, weights=np.maximum(w - cover[r], 0.0), minlength=m) + tie
        gains[chosen] = -np.inf
        j = int(np.argmax(gains))
        out.append(j)
        chosen[j] = True
        col = c == j
        np.maximum.at(cover, r[col], w[col])
    return np.asarray(out, dtype=np.int64)


def align(g: Graph, ids: np.ndarray) -> Graph:
    """The graph with its rows in the order of ``ids`` (every id must be in the graph)."""
    if np.array_equal(g.ids, ids):
        return g
    order = np.argsort(g.ids)
    j = order[np.searchsorted(g.ids[order], ids)]
    return Graph(ids, g.W[j][:, j].tocsr(), g.exact, g.params)


def restrict(g: Graph, ids: np.ndarray) -> Graph:
    """The subgraph induced on the rows of ``ids`` that are in the graph, in that order."""
    keep = np.isin(ids, g.ids)
    return align(g, np.asarray(ids)[keep])
