"""Physical operators for ``nearest`` over a filtered row set, their predicted cost, and the choice.

Candidates for ``nq`` queries, top-``k``, over the ``m`` rows a filter matched (of ``n``):

* ``exact-filtered``: gather the m rows from the memmapped shards (codec bytes), decode, one score
  matmul for all queries, top-k (`search.topk` on a `RowView`). Exact.
* ``exact-masked``: the unfiltered block scan of all n rows with the non-matching rows masked to -inf
  (contiguous reads, no gather). Exact.
* ``ivf-bitmap``: FAISS IVF-Flat with an ``IDSelectorBitmap`` of the matches; per query the lists are
  taken nearest-centroid first, **skipping lists that hold no match**, until ``nprobe`` lists are taken
  and they hold >= k matches (so k rows come back whenever k match); run with ``search_preassigned``.
  Eligible for a recall target < 1 only, and only while the rows the walk visits stay below m (else the
  exact scan of the m rows does less work: the Lucene rule).
* ``ivf-postfilter``: unfiltered IVF over the same lists with over-fetch ``k'`` (enough that the probed
  lists' matches, spread evenly, give k), then the filter; queries left with < k rows fall back to
  ``exact-filtered`` (its cost is added for them).

Costs come from `leanml.hw`'s roofline on the host device (`store.plan`'s exact-scan model for the
scans, FAISS's list scan as a matmul over the visited rows, the bitmap test as one byte-read per
visited row). The coarse assignment is computed during planning (one ``nq x nlist`` matmul, timed and
reused by the IVF candidates), so visited rows and matches per query are known exactly, not guessed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from leanml.hw import costmodel as cm
from leanml.store.plan import exact_scan_time, host_device
from leanml.store.query.source import QuerySource, RowView

EXACT = ("exact-filtered", "exact-masked")
APPROX = ("ivf-bitmap", "ivf-postfilter")


@dataclass
class Candidate:
    name: str
    predicted_s: float
    eligible: bool = True
    why_not: str = ""
    exact: bool = True
    params: dict[str, Any] = field(default_factory=dict)
    runnable: bool = True  # False: cannot run at all (no index, metric); ineligible but runnable can be forced


@dataclass
class IVF:
    """A FAISS IVF-Flat index over every row of a source (label = row position), with its list of each row
    and its recall@10 measured against the exact scan at build time (unfiltered, 64 stored rows as queries)."""

    index: Any
    list_of: np.ndarray
    nprobe: int
    recall: float
    build_s: float

    @classmethod
    def build(cls, source: QuerySource, nprobe: int = 16, seed: int = 0) -> IVF:
        from leanml.store.query.graph import need_faiss

        faiss = need_faiss("with_index")

        from leanml.store.ann import FaissIndex
        from leanml.store.search import topk

        t0 = time.perf_counter()
        view = RowView(source)
        fi = FaissIndex(view, "ivf", nprobe=nprobe, seed=seed)
        ivf = fi.index  # an IndexIVFFlat; keep this proxy: it owns the C++ index and its quantizer
        list_of = np.empty(ivf.ntotal, np.int64)
        for lst in range(ivf.nlist):
            sz = ivf.invlists.list_size(lst)
            if sz:
                list_of[faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), sz)] = lst
        build_s = time.perf_counter() - t0
        n = ivf.ntotal
        rng = np.random.default_rng(seed)
        pos = np.sort(rng.choice(n, size=min(64, n), replace=False))
        q = np.stack([source.read(c, pos) for c in source.checkpoint_names()])
        ex, _ = topk(view, q, min(10, n), device="cpu")
        ap, _ = fi.search(q, min(10, n))
        rec = float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(ap.tolist(), ex.tolist(), strict=True)]))
        return cls(ivf, list_of, int(ivf.nprobe), rec, build_s)

    def centroids(self) -> np.ndarray:
        """The coarse quantizer's centroids ``[nlist, D]`` (a view of FAISS's storage, cached)."""
        if not hasattr(self, "_centroids"):
            import faiss

            q = faiss.downcast_index(self.index.quantizer)
            self._centroids = faiss.rev_swig_ptr(q.get_xb(), q.ntotal * q.d).reshape(q.ntotal, q.d)
        return self._centroids


def combined_queries(source: QuerySource, qs: list[np.ndarray]) -> np.ndarray:
    """Queries as the IVF index holds rows: concatenated ``sqrt(w_c) q̂_c`` (inner product = combined cosine)."""
    from leanml.store.ann import _combined

    return _combined(qs, source.weights())


def assign(ivf: IVF, Q: np.ndarray, match_lists: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query: lists nearest-centroid first among those holding matches, until nprobe lists are taken and
    they hold >= k matches. Returns (Iq [nq, p] padded with -1, visited rows [nq], matches visited [nq])."""
    nlist = ivf.index.nlist
    order = np.argsort(-(Q @ ivf.centroids().T), axis=1, kind="stable")  # one matmul: every list, nearest first
    sizes = np.bincount(ivf.list_of, minlength=nlist)
    mt = match_lists[order]  # [nq, nlist] matches per list, nearest list first
    valid = mt > 0
    before = np.cumsum(mt, axis=1) - mt  # matches in the lists nearer than this one
    take = valid & ((np.cumsum(valid, axis=1) <= ivf.nprobe) | (before < k))
    width = max(1, int(take.sum(1).max()))
    pack = np.argsort(~take, axis=1, kind="stable")[:, :width]  # taken lists first, in centroid order
    Iq = np.where(np.take_along_axis(take, pack, 1), np.take_along_axis(order, pack, 1), -1)
    visited = np.where(take, sizes[order], 0).sum(1).astype(np.float64)
    matched = np.where(take, mt, 0).sum(1).astype(np.float64)
    return Iq, visited, matched


def _ivf_scan_time(model: cm.CostModel, visited: float, scored: float, D: int, k: int, bitmap: bool) -> float:
    ops = [cm.OpSpec("matmul", 2.0 * scored * D, 4.0 * scored * D, "fp32", "IVF list scan"),
           cm.OpSpec("reduction", max(scored, 1.0), 4.0 * max(scored, 1.0), "fp32", "IVF top-k", vclass="sort")]
    if bitmap:
        ops.append(cm.OpSpec("elementwise", visited, 9.0 * visited, "fp32", "IDSelector bitmap test"))
    return sum(model.time(o) for o in ops)


def plan_nearest(source: QuerySource, positions: np.ndarray | None, qs: list[np.ndarray], k: int, *, host: Any,
                 recall: float | None, ivf: IVF | None, block_rows: int = 65536,
                 metric: str = "cosine", calibration: dict | None = None) -> tuple[list[Candidate], dict]:
    """Every candidate with its predicted time; the planning facts (m, n, coarse assignment) in a dict.

    ``calibration`` (from `calibration.operator_costs`): per candidate ``(overhead_s, scale)`` measured on
    this source; the prediction is then ``overhead + scale * roofline`` (roofline alone without it)."""
    n, d, C = len(source.ids()), source.manifest.dim, len(source.checkpoint_names())
    m = n if positions is None else len(positions)
    nq, codec = qs[0].shape[0], source.manifest.codec
    dev = host_device(host)
    model = cm.CostModel(dev)
    facts: dict[str, Any] = {"n": n, "m": m, "nq": nq, "k": k, "codec": codec, "host": dev.id}
    gather = cm.OpSpec("copy", 0.0, 2.0 * m * (source.bytes_per_row() + 8), "fp32", "gather matches",
                       alloc_bytes=float(m * source.bytes_per_row()))
    t_f = _exact_time(dev, m, d, C, codec, nq, k, metric, block_rows)
    t_f += C * model.time(gather)  # the scan's own model includes the codec's decode
    t_m = _exact_time(dev, n, d, C, codec, nq, k, metric, block_rows)
    t_m += model.time(cm.OpSpec("elementwise", float(n * nq), 4.0 * n * nq, "fp32", "mask non-matches"))
    cands = [Candidate("exact-filtered", t_f), Candidate("exact-masked", t_m)]
    approx_ok = recall is not None and recall < 1.0 and metric == "cosine"
    for name in APPROX:
        c = Candidate(name, math.inf, exact=False)
        if metric != "cosine":
            c.eligible, c.runnable, c.why_not = False, False, "the FAISS index serves the combined cosine only"
        elif ivf is None:
            c.eligible, c.runnable, c.why_not = False, False, "no IVF index built for this source (Query.with_index())"
        elif not approx_ok:
            c.eligible, c.why_not = False, "approximate: an exact answer was asked for (recall None or 1.0)"
        elif ivf.recall < recall:
            c.eligible, c.why_not = False, f"IVF recall measured at build {ivf.recall:.3f} < target {recall}"
        cands.append(c)
    floor = min((calibration[c][0] for c in APPROX if calibration and c in calibration), default=0.0)
    if calibration and "exact-filtered" in calibration:
        o, sc = calibration["exact-filtered"]
        if o + sc * t_f <= floor:  # the exact scan of the matches beats even an IVF call's fixed cost
            for c in cands[2:]:
                c.predicted_s, c.eligible = math.inf, False
                c.why_not = c.why_not or "the exact scan of the matches costs less than an IVF call's overhead"
            ivf = None  # no coarse assignment needed
    if ivf is not None and metric == "cosine":
        Q = combined_queries(source, qs)
        t0 = time.perf_counter()
        mask_lists = np.bincount(ivf.list_of if positions is None else ivf.list_of[positions],
                                 minlength=ivf.index.nlist)
        Iq, visited, matched = assign(ivf, Q, mask_lists, k)
        facts.update(assign_s=time.perf_counter() - t0, Iq=Iq, visited=visited, matched=matched,
                     nlist=int(ivf.index.nlist))
        D = C * d
        bm, pf = cands[2], cands[3]
        bm.predicted_s = _ivf_scan_time(model, visited.sum(), matched.sum(), D, k, True)  # one call, all queries
        bm.params = {"nprobe": ivf.nprobe, "lists_max": int(Iq.shape[1])}
        if bm.eligible and visited.mean() >= m:
            bm.eligible, bm.why_not = False, (f"the walk visits {visited.mean():.0f} rows per query >= {m} matches: "
                                              "the exact scan of the matches does less (fallback)")
        frac = np.maximum(matched, 1) / np.maximum(visited, 1)
        kp = np.minimum(visited, np.ceil(1.5 * k / frac)).astype(np.int64)
        short = int((matched < k).sum())
        pf.predicted_s = (_ivf_scan_time(model, visited.sum(), visited.sum(), D, int(kp.max()), False)
                          + model.time(cm.OpSpec("elementwise", float(kp.sum()), 9.0 * kp.sum(), "fp32", "filter")))
        pf.predicted_s += short / max(nq, 1) * t_f
        pf.params = {"k_prime_max": int(kp.max()) if len(kp) else k, "fallback_queries_predicted": short}
        facts["k_prime"] = kp
    facts["roofline_s"] = {c.name: c.predicted_s for c in cands}
    if calibration:
        for c in cands:
            if c.name in calibration and math.isfinite(c.predicted_s):
                o, sc = calibration[c.name]
                c.predicted_s = o + sc * c.predicted_s
    return cands, facts


_EXACT_MEMO: dict[tuple, float] = {}


def _exact_time(dev: Any, n: int, d: int, C: int, codec: str, nq: int, k: int, metric: str, block_rows: int) -> float:
    """`store.plan.exact_scan_time`, memoized (a roofline costing is ~1 ms of Python; plans repeat shapes)."""
    key = (id(dev), n, d, C, codec, nq, k, metric, block_rows)
    if key not in _EXACT_MEMO:
        if len(_EXACT_MEMO) > 4096:
            _EXACT_MEMO.clear()
        _EXACT_MEMO[key] = exact_scan_time(dev, n=n, d=d, C=C, codec=codec, nq=nq, k=k, metric=metric,
                                           block_rows=block_rows)[0]
    return _EXACT_MEMO[key]


def choose(cands: list[Candidate]) -> Candidate:
    ok = [c for c in cands if c.eligible]
    return min(ok, key=lambda c: c.predicted_s)


def _preassigned(index: Any, Q: np.ndarray, k: int, Iq: np.ndarray, Dq: np.ndarray,
                 params: Any) -> tuple[np.ndarray, np.ndarray]:
    """``IndexIVF::search_preassigned`` with SearchParameters (the Python wrapper refuses params; the C++
    call takes them: the IDSelector and ``nprobe`` = the assignment's width). Lists given as -1 are skipped."""
    import faiss

    n = len(Q)
    Q, Iq = np.ascontiguousarray(Q, dtype=np.float32), np.ascontiguousarray(Iq, dtype=np.int64)
    Dq = np.ascontiguousarray(Dq, dtype=np.float32)
    D, lab = np.empty((n, k), np.float32), np.empty((n, k), np.int64)
    index.search_preassigned_c(n, faiss.swig_ptr(Q), k, faiss.swig_ptr(Iq), faiss.swig_ptr(Dq), faiss.swig_ptr(D),
                               faiss.swig_ptr(lab), False, params)
    return D, lab


# ---- execution -------------------------------------------------------------------------------------
def run_nearest(name: str, source: QuerySource, positions: np.ndarray | None, qs: list[np.ndarray], k: int,
                facts: dict, ivf: IVF | None, block_rows: int = 65536, *, metric: str = "cosine",
                device: str | None = "cpu") -> tuple[np.ndarray, np.ndarray, dict]:
    """Run one candidate: (ids [nq, k'], scores [nq, k'], info); k' = min(k, matches); -1/-inf never returned."""
    from leanml.store.search import topk

    all_ids = source.ids()
    m = len(all_ids) if positions is None else len(positions)
    kk = min(k, m)
    info: dict[str, Any] = {}
    if name == "exact-filtered":
        ids, s = topk(RowView(source, positions), qs, kk, metric=metric, block_rows=block_rows, device=device)
    elif name == "exact-masked":
        excl = None if positions is None else np.delete(all_ids, positions)
        ids, s = topk(RowView(source), qs, kk, metric=metric, block_rows=block_rows, device=device,
                      exclude_ids=excl)
    else:
        import faiss

        assert ivf is not None
        Q = combined_queries(source, qs)
        Iq = facts["Iq"]
        Dq = np.zeros(Iq.shape, np.float32)
        n = ivf.index.ntotal
        if name == "ivf-bitmap":
            mask = np.zeros(n, bool)
            mask[positions if positions is not None else slice(None)] = True
            bits = np.packbits(mask, bitorder="little")
            sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits))
            params = faiss.SearchParametersIVF(sel=sel, nprobe=int(Iq.shape[1]))
            s, pos = _preassigned(ivf.index, Q, kk, Iq, Dq, params)
            del sel, bits
        else:
            kp = int(max(kk, facts["k_prime"].max()))
            params = faiss.SearchParametersIVF(nprobe=int(Iq.shape[1]))
            s_all, p_all = _preassigned(ivf.index, Q, kp, Iq, Dq, params)
            mask = np.zeros(n + 1, bool)
            mask[positions if positions is not None else slice(0, n)] = True
            keep = mask[np.where(p_all >= 0, p_all, n)]
            s = np.full((len(Q), kk), -np.inf, np.float32)
            pos = np.full((len(Q), kk), -1, np.int64)
            for qi in range(len(Q)):
                hit = np.flatnonzero(keep[qi])[:kk]
                s[qi, : len(hit)], pos[qi, : len(hit)] = s_all[qi, hit], p_all[qi, hit]
        short = np.flatnonzero((pos < 0).any(axis=1))
        ids = np.where(pos >= 0, all_ids[np.maximum(pos, 0)], -1)
        if len(short):  # fewer than k rows for these queries: the exact scan of the matches answers them
            fi, fs = topk(RowView(source, positions), [q[short] for q in qs], kk, block_rows=block_rows,
                          device=device)
            ids[short], s[short] = fi, fs
        info["fallback_queries"] = int(len(short))
    return np.asarray(ids), np.asarray(s, dtype=np.float32), info
