"""Compiled loops (numba) for the small per-query work of IVF planning and search: unit rows, centroid
similarities of a few queries, the local selectivity and difficulty band of each query, the list walk, and
the post-filter's first kept rows.

Why compiled: a one-query plan touches arrays of about 10^3 entries (one per IVF list), so its time is the
fixed cost of each call, not the work, and as NumPy each step was a handful of calls. Right after other work
(`benchmarks/query_micro.py`, ``planned_steps_10pct``, 10^5 x 256, each step alone; NumPy, then these
kernels, on one VM): the combined query 146 -> 55 us, the local selectivity 199 -> 70, the difficulty bands
165 -> 79, the walk 332 -> 90 (docs/query.md). Each kernel is one call.

``cache=True``: compiled on first use, once per machine, into ``__pycache__`` beside this file
(`benchmarks/diagnostics/kernels_compile_check.py` times it). Callers import this module inside the
functions that use it, so ``import leanml.store`` does not load numba.
"""

from __future__ import annotations

import numpy as np
from numba import njit

SMALL_BATCH = 4  # up to this many queries `centroid_sims` loops; a larger batch is one BLAS matmul


@njit(cache=True, nogil=True)
def unit_rows_into(x, scale, out, col0):  # noqa: ANN001, ANN201
    """``out[:, col0:col0 + d] = scale * x / |x|`` row by row (a zero row stays zero)."""
    for i in range(x.shape[0]):
        s = 0.0
        for t in range(x.shape[1]):
            s += x[i, t] * x[i, t]
        r = scale / max(np.sqrt(s), 1e-30)
        for t in range(x.shape[1]):
            out[i, col0 + t] = x[i, t] * r


@njit(cache=True, nogil=True, fastmath=True)
def _dot_rows(Q, C):  # noqa: ANN001, ANN202
    nq, D = Q.shape
    S = np.empty((nq, C.shape[0]), np.float32)
    for i in range(nq):
        for j in range(C.shape[0]):
            acc = np.float32(0.0)
            for t in range(D):
                acc += Q[i, t] * C[j, t]
            S[i, j] = acc
    return S


@njit(cache=True, nogil=True)
def centroid_sims(Q, C):  # noqa: ANN001, ANN201
    """``Q @ C.T`` (float32, C-contiguous inputs): a loop for up to `SMALL_BATCH` queries, BLAS above."""
    if Q.shape[0] <= SMALL_BATCH:
        return _dot_rows(Q, C)
    return np.ascontiguousarray(np.dot(Q, C.T))


@njit(cache=True, nogil=True)
def _difficulty_row(s, tie_share):  # noqa: ANN001, ANN202
    top = s.max()
    med = np.partition(s, s.shape[0] // 2)[s.shape[0] // 2]
    tie = top - np.float32(tie_share) * (top - med)
    c = 0
    for j in range(s.shape[0]):
        if s[j] >= tie:
            c += 1
    return c


@njit(cache=True, nogil=True)
def difficulty(S, tie_share):  # noqa: ANN001, ANN201
    """Per row of ``S``: how many entries lie at or above ``top - tie_share * (top - median)``."""
    out = np.empty(S.shape[0], np.int64)
    for i in range(S.shape[0]):
        out[i] = _difficulty_row(S[i], tie_share)
    return out


@njit(cache=True, nogil=True)
def _band_row(s, tie_share, band_edges):  # noqa: ANN001, ANN202
    return np.searchsorted(band_edges, _difficulty_row(s, tie_share), side="right")


@njit(cache=True, nogil=True)
def bands(S, tie_share, band_edges):  # noqa: ANN001, ANN201
    """Per row of ``S``: its difficulty band, the number of ``band_edges`` at or below its `difficulty`."""
    out = np.empty(S.shape[0], np.int64)
    for i in range(S.shape[0]):
        out[i] = _band_row(S[i], tie_share, band_edges)
    return out


@njit(cache=True, nogil=True)
def _local_share(s, sizes, match_lists, w, glob):  # noqa: ANN001, ANN202
    """The matching share of the ``w`` nearest lists (ties: the lower list number), or ``glob`` unless it is
    > 3 binomial sd below it. The nearest are kept by insertion: w is a few lists, so no partition copy."""
    best = np.full(w, -np.inf, np.float32)
    lst = np.zeros(w, np.int64)
    for j in range(s.shape[0]):
        if s[j] > best[w - 1]:
            t = w - 1
            while t > 0 and best[t - 1] < s[j]:
                best[t], lst[t] = best[t - 1], lst[t - 1]
                t -= 1
            best[t], lst[t] = s[j], j
    rows, got = 0.0, 0.0
    for t in range(w):
        rows += sizes[lst[t]]
        got += match_lists[lst[t]]
    expect = glob * rows
    if got < expect - 3.0 * np.sqrt(expect * (1.0 - glob)):
        return got / max(rows, 1.0)
    return glob


@njit(cache=True, nogil=True)
def coarse_stats(S, sizes, match_lists, local_lists, tie_share, band_edges):  # noqa: ANN001, ANN201
    """(the smallest local selectivity over the queries, how many queries fall in each difficulty band) from
    one pass over ``S``."""
    w = min(local_lists, S.shape[1])
    glob = match_lists.sum() / max(sizes.sum(), 1)
    sel = np.inf
    counts = np.zeros(band_edges.shape[0] + 1, np.int64)
    for i in range(S.shape[0]):
        sel = min(sel, _local_share(S[i], sizes, match_lists, w, glob))
        counts[_band_row(S[i], tie_share, band_edges)] += 1
    return sel, counts


@njit(cache=True, nogil=True)
def coarse(Q, C, sizes, match_lists, local_lists, tie_share, band_edges):  # noqa: ANN001, ANN201
    """`centroid_sims` and `coarse_stats` in one call: (S, local selectivity, band counts)."""
    S = centroid_sims(Q, C)
    sel, counts = coarse_stats(S, sizes, match_lists, local_lists, tie_share, band_edges)
    return S, sel, counts


@njit(cache=True, nogil=True)
def _take(order, sizes, match_lists, k, nprobe, row):  # noqa: ANN001, ANN202
    """Walk the lists in ``order`` into ``row``: (taken, rows visited, matches, minority rows)."""
    taken, reach, visited, mixed = 0, 0, 0.0, 0.0
    while taken < order.shape[0] and (taken < nprobe or reach < k):
        lst = order[taken]
        row[taken] = lst
        reach += match_lists[lst]
        visited += sizes[lst]
        mixed += min(match_lists[lst], sizes[lst] - match_lists[lst])
        taken += 1
    return taken, visited, float(reach), mixed


@njit(cache=True, nogil=True)
def walk(S, sizes, match_lists, k, nprobe, k_out):  # noqa: ANN001, ANN201
    """Per query (row of ``S``): the lists holding a match, nearest first (ties by list number), taken until
    ``nprobe`` are taken and they hold >= ``k`` matches. Returns (lists [nq, width] padded with -1, rows
    visited [nq], matches met [nq], minority rows summed over every walk: ``sum min(matches, size -
    matches)``, the over-fetch [nq] that gives ``k_out`` matches at the walk's match rate with a 1.5x
    margin, capped at the rows visited, and how many queries met fewer than ``k_out`` matches). Only the
    nearest ``max(2 nprobe, 32)`` lists are sorted, 4x as many each time the walk needs more."""
    vl = np.flatnonzero(match_lists > 0)
    L, nq = vl.shape[0], S.shape[0]
    rows = np.full((nq, max(L, 1)), -1, np.int64)
    visited, matched = np.zeros(nq), np.zeros(nq)
    mixed, width = 0.0, 1
    w0 = min(L, max(2 * nprobe, 32))
    for i in range(nq):
        neg = np.empty(L, np.float32)
        for j in range(L):
            neg[j] = -S[i, vl[j]]
        w = w0
        while True:
            if w < L:
                thr = np.partition(neg, w - 1)[w - 1]
                cand = np.flatnonzero(neg <= thr)  # a prefix of the stable full order: every list as near or nearer
                order = vl[cand[np.argsort(neg[cand], kind="mergesort")]]
            else:
                order = vl[np.argsort(neg, kind="mergesort")]
            taken, v, mt, mx = _take(order, sizes, match_lists, k, nprobe, rows[i])
            if taken < order.shape[0] or order.shape[0] == L or mt >= k:
                break
            w *= 4  # the k-th match lies beyond these lists: a 4x wider window, not a sort of every list
        visited[i], matched[i], mixed, width = v, mt, mixed + mx, max(width, taken)
    k_prime = np.empty(nq, np.int64)
    short = 0
    for i in range(nq):
        frac = max(matched[i], 1.0) / max(visited[i], 1.0)
        k_prime[i] = int(min(visited[i], np.ceil(1.5 * k_out / frac)))
        short += matched[i] < k_out
    return rows[:, :width].copy(), visited, matched, mixed, k_prime, short, visited.sum(), matched.sum()


@njit(cache=True, nogil=True)
def first_kept(scores, positions, bits, kk, ids):  # noqa: ANN001, ANN201
    """Per row, the first ``kk`` entries (best first) whose position is >= 0 and set in the little-endian
    bit array ``bits``: (scores [nq, kk] with -inf, positions [nq, kk] and their ``ids`` [nq, kk], both -1
    where fewer were kept, how many rows kept fewer than ``kk``)."""
    nq = scores.shape[0]
    s = np.full((nq, kk), -np.inf, np.float32)
    p = np.full((nq, kk), -1, np.int64)
    out = np.full((nq, kk), -1, np.int64)
    short = 0
    for i in range(nq):
        got = 0
        for j in range(scores.shape[1]):
            r = positions[i, j]
            if got < kk and r >= 0 and (bits[r >> 3] >> (r & 7)) & 1:
                s[i, got], p[i, got], out[i, got] = scores[i, j], r, ids[r]
                got += 1
        short += got < kk
    return s, p, out, short
