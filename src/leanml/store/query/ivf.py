"""The FAISS IVF index `nearest`'s approximate plans use, with its recall **measured under filters**.

An IVF index's recall without a filter says little about its recall under one: with a 1% filter a list
holds ~1% of its rows as matches, so the lists a query probes hold few of the rows it wants, and the
unfiltered figure (0.99 at nprobe 16) overstates the filtered one (0.92 measured at 1%, 2*10^4 rows).
So `IVF.build` measures recall@k of the filtered walk itself (`assign` + ``IDSelectorBitmap``, exactly
what ``ivf-bitmap`` runs) against the exact scan of the matches, for random filters at selectivities
100%, 10%, 1% and 0.1% (where they match >= 2k rows), k = 10 and 100, and a ladder of probe counts
``p`` = 1, 2, 4, ... lists (lists holding no match are skipped and not counted). The queries are stored
rows not in the filter (their own row cannot inflate the figure).

`IVF.probes_for` turns that table into the plan: the fewest probes whose measured recall, at the
measured selectivities bracketing the query's (the minimum of the two) and the measured k at or above
the query's (the walk then gathers matches for that k), reaches the target plus a 0.02 margin (twice
the sampling error of 128 measuring queries: at 0.01, one cell of an earlier `query_bench.py --sections
grid` run, noisy queries under a correlated 50% filter, got 0.928 for a 0.95 target at 10^5 x 256).
Below the smallest measured selectivity, above the largest measured k, or when no probe count reaches the
target, there is no approximate plan: the planner uses an exact one.

Recall is also kept per **difficulty band** of the measuring queries (`difficulty`: how many centroids are
nearly tied with a query's nearest one; Li et al., SIGMOD 2020, predict per-query probes from such
centroid-distance features). A query whose neighbourhood is split over many near-tied lists needs more
probes than the average. `probes_for(..., bands=)`
weights the bands' recall by the batch's own band counts, so a batch drawn from one hard cluster gets
the probes its band needs (a band with no measuring query counts as the worst measured band). The banded
figure only ever lowers the average one (more probes, never fewer): per band, 32-odd measuring queries are
too few to trust for fewer probes. It is a refinement, not a guarantee (`benchmarks/query_micro.py`, 40
one-cluster batches at 10^5 x 256): the worst batch went from 0.897 to 0.966 on an fp32 store, and stayed
at 0.909 on the int8 store, whose hardest band measured just above the bar.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from leanml.store.query.filters import filter_state
from leanml.store.query.source import QuerySource, RowView

SELECTIVITIES = (1.0, 0.1, 0.01, 0.001)
KS = (10, 100)
MARGIN = 0.02
N_QUERIES = 128
N_BANDS = 4
TIE_SHARE = 0.1
LOCAL_LISTS = 4  # the nearest lists whose matching share is a query's local selectivity (`coarse_stats`)
SNAP = 0.05  # relative: a selectivity this close below a measured one is read at it (`probes_for`)


def difficulty(sims: np.ndarray) -> np.ndarray:
    """Per query (row of ``sims``, its similarity to every centroid): how many centroids lie within
    ``TIE_SHARE`` of the way from its nearest centroid down to the median one (scale-free: a share of the
    query's own similarity range). Many near-tied lists: the top-k is spread over more lists."""
    from leanml.store.kernels import difficulty as kernel

    return kernel(np.ascontiguousarray(sims, dtype=np.float32), TIE_SHARE)


@dataclass
class IVF:
    """A FAISS IVF-Flat index over every row of a source (label = row position), the list of each row, and
    ``table``: {(selectivity, k): [(probes, recall@k), ...]} measured at build (module docstring)."""

    index: Any
    list_of: np.ndarray
    nprobe: int
    recall: float  # unfiltered recall@10 at ``nprobe`` (for display)
    build_s: float
    table: dict[tuple[float, int], list[tuple[int, float]]] = field(default_factory=dict)
    measure_s: float = 0.0
    measured_on: str = "held-out stored rows"
    band_edges: np.ndarray = field(default_factory=lambda: np.zeros(0))  # difficulty quantiles between bands
    band_table: dict[tuple[float, int], list[tuple[int, np.ndarray]]] = field(default_factory=dict)

    @classmethod
    def build(cls, source: QuerySource, nprobe: int = 16, seed: int = 0,
              queries: list[np.ndarray] | None = None) -> IVF:
        """Build the index and measure its filtered recall. ``queries`` (per checkpoint ``[nq, d]``, like
        `nearest`'s): measure it for these instead of held-out stored rows, for queries unlike any stored
        row (a task's validation gradients may be)."""
        from leanml.store.query.graph import combined_rows, need_faiss

        faiss = need_faiss("with_index")

        from leanml.store.ann import FaissIndex

        t0 = time.perf_counter()
        fi = FaissIndex(RowView(source), "ivf", nprobe=nprobe, seed=seed)
        ivf = fi.index  # an IndexIVFFlat; keep this proxy: it owns the C++ index and its quantizer
        list_of = np.empty(ivf.ntotal, np.int64)
        for lst in range(ivf.nlist):
            sz = ivf.invlists.list_size(lst)
            if sz:
                list_of[faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), sz)] = lst
        out = cls(ivf, list_of, int(ivf.nprobe), float("nan"), time.perf_counter() - t0)
        t0 = time.perf_counter()
        Qm = None if queries is None else combined_queries(source, queries)
        out.table, out.band_table = out._measure(combined_rows(source, None)[1], seed, Qm)
        out.measured_on = "held-out stored rows" if Qm is None else f"{len(Qm)} given queries"
        out.measure_s = time.perf_counter() - t0
        out.recall = out.recall_at(1.0, 10, out.nprobe)
        return out

    def bands(self, S: np.ndarray) -> np.ndarray:
        """The difficulty band (0 .. len(band_edges)) of each query, from its centroid similarities ``S``."""
        from leanml.store.kernels import bands

        return bands(np.ascontiguousarray(S, dtype=np.float32), TIE_SHARE, self.band_edges)

    def band_counts(self, S: np.ndarray) -> tuple[int, ...]:
        """How many of the queries fall in each band (the ``bands`` argument of `probes_for`)."""
        return tuple(np.bincount(self.bands(S), minlength=len(self.band_edges) + 1).tolist())

    def coarse(self, Q: np.ndarray, match_lists: np.ndarray) -> tuple[np.ndarray, float, tuple[int, ...]]:
        """(``Q``'s similarity to every centroid, then `coarse_stats` of it) in one compiled call."""
        from leanml.store.kernels import coarse

        S, sel, counts = coarse(np.ascontiguousarray(Q, dtype=np.float32), self.centroids(), self.sizes(),
                                match_lists, LOCAL_LISTS, TIE_SHARE, self.band_edges)
        return S, float(sel), tuple(counts.tolist())

    def coarse_stats(self, S: np.ndarray, match_lists: np.ndarray) -> tuple[float, tuple[int, ...]]:
        """(`physical.local_selectivity` of a filter with ``match_lists`` matches per list, `band_counts`) for
        the queries' centroid similarities ``S``, in one compiled pass (`kernels.coarse_stats`)."""
        from leanml.store.kernels import coarse_stats

        sel, counts = coarse_stats(np.ascontiguousarray(S, dtype=np.float32), self.sizes(), match_lists,
                                   LOCAL_LISTS, TIE_SHARE, self.band_edges)
        return float(sel), tuple(counts.tolist())

    def _measure(self, X: np.ndarray, seed: int, Qgiven: np.ndarray | None = None) -> tuple[dict, dict]:
        n, nlist = len(X), int(self.index.nlist)
        rng = np.random.default_rng(seed + 1)
        table: dict[tuple[float, int], list[tuple[int, float]]] = {}
        band_table: dict[tuple[float, int], list[tuple[int, np.ndarray]]] = {}
        C = self.centroids()
        probe_q = Qgiven if Qgiven is not None else X[rng.choice(n, min(n, 4 * N_QUERIES), replace=False)]
        f = difficulty(probe_q @ C.T)
        self.band_edges = np.unique(np.quantile(f, np.arange(1, N_BANDS) / N_BANDS, method="lower"))
        nb = len(self.band_edges) + 1
        ladder = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096) if p < nlist] + [nlist]
        for sel in SELECTIVITIES:
            if Qgiven is None:
                qpos = rng.choice(n, min(N_QUERIES, max(1, n // 4)), replace=False)
                rest = np.setdiff1d(np.arange(n), qpos)
            else:
                rest = np.arange(n)
            m = min(len(rest), int(round(sel * n)))
            for k in KS:
                if m < 2 * k:
                    continue
                pos = np.sort(rng.choice(rest, m, replace=False))
                Q = X[qpos] if Qgiven is None else Qgiven[rng.choice(len(Qgiven), min(N_QUERIES, len(Qgiven)),
                                                                     replace=False)]
                S = Q @ X[pos].T
                ref = pos[np.argpartition(-S, k - 1, axis=1)[:, :k]]
                lists = np.bincount(self.list_of[pos], minlength=nlist)
                band = self.bands(Q @ C.T)
                cnt = np.bincount(band, minlength=nb)
                rows: list[tuple[int, float]] = []
                brows: list[tuple[int, np.ndarray]] = []
                for p in ladder:
                    Iq, _, _ = assign(self, Q, lists, k, p)
                    _, got = bitmap_search(self, Q, pos, k, Iq)
                    per_q = np.array([len(set(g) & set(r)) / k for g, r in zip(got.tolist(), ref.tolist(),
                                                                               strict=True)])
                    rec = float(per_q.mean())
                    rows.append((p, rec))
                    by_band = np.bincount(band, weights=per_q, minlength=nb) / np.maximum(cnt, 1)
                    brows.append((p, np.where(cnt > 0, by_band, by_band[cnt > 0].min())))
                    if rec >= 0.999 and by_band[cnt > 0].min() >= 0.999:
                        break
                table[(sel, k)], band_table[(sel, k)] = rows, brows
        return table, band_table

    def recall_at(self, sel: float, k: int, probes: int, bands: tuple[int, ...] | None = None) -> float:
        """Measured recall at the measured (selectivity, k) for ``probes`` (nan when not measured); with
        ``bands`` (queries per difficulty band, `band_counts`), the bands' recall weighted by those counts."""
        rows = self.table.get((sel, k))
        if not rows:
            return float("nan")
        r = float(_at(rows, probes))
        brows = self.band_table.get((sel, k))
        if bands is None or not brows:
            return r
        w = np.asarray(bands, np.float64)
        # never above the average: the bands only ever ask for more probes (a band's 32-odd queries are too
        # few to trust for fewer: at 2*10^4 x 64 that cost 0.02 of worst-cluster recall)
        return min(r, float(np.dot(_at(brows, probes), w) / max(w.sum(), 1.0)))

    def probes_for(self, sel: float, k: int, target: float,
                   bands: tuple[int, ...] | None = None) -> tuple[int | None, float, str, int]:
        """(probes, the measured recall it stands on, why not, k_walk) for a filter of selectivity ``sel`` and
        top-k. ``k_walk``: the measured k the walk must gather matches for (>= k: `assign` keeps taking lists
        until they hold k_walk matches, as it did when measured, so a smaller k is answered at least as well).
        ``bands``: the batch's queries per difficulty band (`band_counts`); recall is then read per band."""
        if bands is not None and not self.band_table:
            bands = None
        if bands is not None:  # the shares, to two digits: batches of similar make-up share a memo entry
            tot = max(sum(bands), 1)
            bands = tuple(round(100 * b / tot) for b in bands)
        key = (sel, k, target, bands)
        memo = self.__dict__.setdefault("_memo", {})
        if key not in memo:
            if len(memo) > 1024:
                memo.clear()
            memo[key] = self._probes_for(sel, k, target, bands)
        return memo[key]

    def _measured_k(self, k: int) -> int | None:
        """The smallest measured k >= ``k`` (the walk gathers matches for it), None above them all."""
        return next((kk for kk in KS if kk >= k and any(key[1] == kk for key in self.table)), None)

    def lowest_measured(self, k: int) -> float:
        """The smallest selectivity whose filtered recall was measured for top-``k`` (inf: none for this k)."""
        memo = self.__dict__.setdefault("_lowest", {})  # the table is fixed once built: one scan per k
        if k not in memo:
            kk = self._measured_k(k)
            memo[k] = float("inf") if kk is None else min(s for s, k2 in self.table if k2 == kk)
        return memo[k]

    def _probes_for(self, sel: float, k: int, target: float,
                    bands: tuple[int, ...] | None) -> tuple[int | None, float, str, int]:
        kk = self._measured_k(k)
        if kk is None:
            return None, float("nan"), f"filtered recall not measured for k = {k} (measured k: {KS})", k
        sels = sorted(s for s, k2 in self.table if k2 == kk)
        if sel < sels[0] * (1 - 1e-9):
            return None, float("nan"), (f"filtered recall not measured below selectivity {sels[0]:.3g} "
                                        f"(k = {kk}): exact"), kk
        # a filter within SNAP below a measured selectivity reads that row: the table's own filters are random
        # draws at it (a 10% filter of 10^5 rows matches 10,000 +- 95). Read strictly, a 9.99% filter took
        # the 1% row's 64 probes where 8 reach 0.99; between rows farther apart the lower one still
        # decides (interpolating in log-selectivity promised 0.95 at a 50% filter of 1348 rows that got 0.88)
        lo = max(s for s in sels if s <= sel * (1 + SNAP))
        hi = min((s for s in sels if s >= sel * (1 - 1e-9)), default=lo)
        hi = max(hi, lo)
        best = 0.0
        for p, _ in self.table[(lo, kk)]:
            r = min(self.recall_at(lo, kk, p, bands), self.recall_at(hi, kk, p, bands))
            best = max(best, r)
            if r >= target + MARGIN:
                return p, r, "", kk
        return None, best, (f"measured filtered recall@{kk} at selectivity {lo:.3g}-{hi:.3g} reaches {best:.3f} "
                            f"< target {target} + margin {MARGIN}"), kk

    def centroids(self) -> np.ndarray:
        """The coarse quantizer's centroids ``[nlist, D]`` (a view of FAISS's storage, cached)."""
        if not hasattr(self, "_centroids"):
            import faiss

            q = faiss.downcast_index(self.index.quantizer)
            self._centroids = faiss.rev_swig_ptr(q.get_xb(), q.ntotal * q.d).reshape(q.ntotal, q.d)
            self._sizes = np.bincount(self.list_of, minlength=int(self.index.nlist))
        return self._centroids

    def sizes(self) -> np.ndarray:
        self.centroids()
        return self._sizes


def _at(rows: list[tuple[int, Any]], probes: int) -> Any:
    """A measured ladder's figure at ``probes``: the last rung at or below it (the first rung below all)."""
    ok = [r for p, r in rows if p <= probes]
    return ok[-1] if ok else rows[0][1]


def combined_queries(source: QuerySource, qs: list[np.ndarray]) -> np.ndarray:
    """Queries as the IVF index holds rows: concatenated ``sqrt(w_c) q̂_c`` (inner product = combined cosine)."""
    from leanml.store.ann import _combined

    return _combined(qs, source.weights())


def assign(ivf: IVF, Q: np.ndarray, match_lists: np.ndarray, k: int, nprobe: int,
           sims: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query: lists nearest-centroid first among those holding matches, until ``nprobe`` lists are taken
    and they hold >= k matches. Returns (Iq [nq, p] padded with -1, visited rows [nq], matches visited [nq]).
    `walk` also returns the minority rows the bitmap test meets."""
    return walk(ivf, Q, match_lists, k, nprobe, sims)[:3]


class Walk(NamedTuple):
    """`walk`'s result: per query the lists taken (padded with -1), rows visited, matches met and the
    post-filter's over-fetch; over all queries the minority rows, the queries short of k and both totals."""

    lists: np.ndarray
    visited: np.ndarray
    matched: np.ndarray
    mixed_rows: float
    k_prime: np.ndarray
    short: int
    visited_total: float
    matched_total: float


def walk(ivf: IVF, Q: np.ndarray, match_lists: np.ndarray, k: int, nprobe: int, sims: np.ndarray | None = None,
         k_out: int | None = None) -> Walk:
    """`assign`'s walk, then: the rows of the walked lists on the filter's minority side, ``sum min(matches,
    size - matches)`` over every query (the bitmap test's branch is unpredictable there: `physical.features`);
    per query the post-filter's over-fetch for top-``k_out`` (default ``k``: 1.5 k_out over the walk's match
    rate, at most the rows visited); and how many queries met fewer than ``k_out`` matches.

    One compiled loop per query (`kernels.walk`): only the nearest ``max(2 nprobe, 32)`` lists holding a match
    are sorted, a 4x wider window each time a query's k matches lie beyond it (at 32 queries over ~140 lists a
    full stable sort was most of the planning time). ``sims``: ``Q``'s similarity to every centroid, when the
    planner already has it (computing it again reads the centroids a second time: 1264 x 256 floats, 1.3 MB,
    at 10^5 rows)."""
    from leanml.store.kernels import centroid_sims
    from leanml.store.kernels import walk as kernel

    S = centroid_sims(np.ascontiguousarray(Q, dtype=np.float32), ivf.centroids()) if sims is None else sims
    Iq, visited, matched, mixed, k_prime, short, v, m = kernel(
        S if S.dtype == np.float32 else S.astype(np.float32), ivf.sizes(),
        match_lists if match_lists.dtype == np.int64 else match_lists.astype(np.int64), int(k), int(nprobe),
        int(k if k_out is None else k_out))
    return Walk(Iq, visited, matched, float(mixed), k_prime, int(short), float(v), float(m))


def preassigned(index: Any, Q: np.ndarray, k: int, Iq: np.ndarray, params: Any) -> tuple[np.ndarray, np.ndarray]:
    """``IndexIVF::search_preassigned`` with SearchParameters (the Python wrapper refuses params; the C++
    call takes them: the IDSelector and ``nprobe`` = the assignment's width). Lists given as -1 are skipped."""
    import faiss

    n = len(Q)
    Q, Iq = np.ascontiguousarray(Q, dtype=np.float32), np.ascontiguousarray(Iq, dtype=np.int64)
    Dq = np.zeros(Iq.shape, np.float32)
    D, lab = np.empty((n, k), np.float32), np.empty((n, k), np.int64)
    index.search_preassigned_c(n, faiss.swig_ptr(Q), k, faiss.swig_ptr(Iq), faiss.swig_ptr(Dq), faiss.swig_ptr(D),
                               faiss.swig_ptr(lab), False, params)
    return D, lab


def bitmap_search(ivf: IVF, Q: np.ndarray, positions: np.ndarray | None, k: int,
                  Iq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores, positions) of the top-k matches in the lists ``Iq`` (``IDSelectorBitmap`` of ``positions``,
    reused from `filters.filter_state` when the filter was seen before)."""
    import faiss

    state = filter_state(ivf, positions)  # holds the bits the selector points to for the call
    params = faiss.SearchParametersIVF(sel=state.selector, nprobe=int(Iq.shape[1]))
    return preassigned(ivf.index, Q, k, Iq, params)
