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
  lists' matches, spread evenly, give k), then the filter; queries left with < k rows are answered by
  ``ivf-bitmap`` over the same lists, which hold >= k matches (its cost is added for them).

The IVF candidates' probe count comes from the index's recall measured under filters at build
(`ivf.IVF.probes_for`): the fewest probes that reach the recall target at this selectivity and k, or no
approximate plan at all. The table is read at the selectivity near the queries (`local_selectivity`) and
for the batch's own difficulty bands (`ivf.difficulty`), so neither a filter that leaves out the queries'
clusters nor a batch from one hard cluster is answered with the probes of an average query. The coarse
assignment is computed during planning (the queries' similarity to every centroid, the local selectivity
and the bands in one compiled call, `ivf.IVF.coarse`; then the walk, `ivf.walk`), so visited rows and
matches per query are known exactly, not guessed. When the matches lie in no more lists than the index
probes unfiltered (`walks_every_list`), the walk takes all of them, which is exact, and no similarity is
computed.

Costs: with the source's calibration (`calibration.operator_costs`, the default in `Query`), each
candidate's time is a non-negative linear fit over the work it does (`features`), measured on this source
and this machine; without it, `leanml.hw`'s roofline on the host device (`store.plan`'s exact-scan model,
FAISS's list scan as a matmul over the scored rows, the bitmap test as a byte-read per visited row).
Calibrated, the IVF branch is skipped before any of its work when the exact scan of the matches costs
less than any IVF plan can (`ivf_floor`): checked first from the filter's size alone, then again once
the matches per list are counted, before the coarse assignment.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from operator import mul
from typing import Any

import numpy as np

from leanml.hw import costmodel as cm
from leanml.store.plan import exact_scan_time, host_device
from leanml.store.query.filters import FilterState, filter_state
from leanml.store.query.ivf import IVF, bitmap_search, combined_queries, preassigned, walk
from leanml.store.query.source import QuerySource, RowView

EXACT = ("exact-filtered", "exact-masked")
APPROX = ("ivf-bitmap", "ivf-postfilter")
PLANNING = "ivf-planning"  # calibrated like a candidate: the planning work only the IVF plans need
FILTER_STATE = "filter-state"  # calibrated too: a filter's matches per list and bitmap, built once (`filters`)


@dataclass
class Candidate:
    name: str
    predicted_s: float
    eligible: bool = True
    why_not: str = ""
    exact: bool = True
    params: dict[str, Any] = field(default_factory=dict)
    runnable: bool = True  # False: cannot run at all (no index, metric); ineligible but runnable can be forced


def _ivf_scan_time(model: cm.CostModel, visited: float, scored: float, D: int, k: int, bitmap: bool) -> float:
    ops = [cm.OpSpec("matmul", 2.0 * scored * D, 4.0 * scored * D, "fp32", "IVF list scan"),
           cm.OpSpec("reduction", max(scored, 1.0), 4.0 * max(scored, 1.0), "fp32", "IVF top-k", vclass="sort")]
    if bitmap:
        ops.append(cm.OpSpec("elementwise", visited, 9.0 * visited, "fp32", "IDSelector bitmap test"))
    return sum(model.time(o) for o in ops)


def features(name: str, facts: dict) -> tuple[float, ...]:
    """The work a candidate does, as the terms its calibrated time is linear in (`calibration`):
    a fixed cost, rows read and decoded (x D), multiply-adds (rows x queries x D) and top-k/mask entries;
    for IVF the rows its lists hold (bitmap tests), the matches scored (x D), a per-query cost, the result
    heaps (queries x k: at 32 queries FAISS's k = 100 walk costs ~0.35 ms more than k = 10 over the same
    lists, measured here) and the over-fetch. Python floats, not an array: a one-query plan costs a few of
    these, and right after other work one small NumPy call cost ~13 us against ~3 for the float arithmetic
    in a scratch measurement (`benchmarks/query_micro.py`, ``planner_cold``, measures it)."""
    m, n, nq, D = facts["m"], facts["n"], facts["nq"], facts["D"]
    if name == FILTER_STATE:  # count the matches per list (m), fill and pack an n-row mask (n)
        return (1.0, float(m), float(n))
    if name == PLANNING:  # the coarse assignment and the rest of the IVF branch of `plan_nearest`
        return (1.0, coarse_entries(facts, facts["holding"]), float(nq * facts["holding"]), float(m))
    if name == "exact-filtered":
        return (1.0, float(m * D), float(m * nq * D), float(m * nq))
    if name == "exact-masked":
        return (1.0, float(n * D), float(n * nq * D), float(n * nq))
    V, M = facts["visited_total"], facts["matched_total"]
    if name == "ivf-bitmap":
        return (1.0, M * D, V, float(nq), float(nq * facts["k"]), facts["mixed_rows"])
    return (1.0, V * D, float(facts["k_prime"].sum()), float(nq))


def walks_every_list(facts: dict, holding: int) -> bool:
    """Whether the walk takes every list holding a match: they are no more than the index probes unfiltered
    (``facts["nprobe"]``), so the walk is exact and needs no centroid similarities (`plan_nearest`)."""
    return holding <= facts["nprobe"]


def coarse_entries(facts: dict, holding: int) -> float:
    """The centroid similarities the planning computes (``nq x nlist``; none when `walks_every_list`)."""
    return 0.0 if walks_every_list(facts, holding) else float(facts["nq"] * facts["nlist"])


def cost(weights: tuple[float, ...], work: tuple[float, ...]) -> float:
    """A calibrated time: the fitted weights' dot product with the work terms (plain floats: see `features`)."""
    return sum(map(mul, weights, work))  # (zip(..., strict=True) and a generator: 2x the time, cold)


def ivf_floor(cal: dict, facts: dict, holding: int) -> float:
    """The least calibrated time an IVF plan can take for these facts (``m`` matches in ``holding`` lists,
    ``nq`` queries, top-``k``), before the coarse assignment is known: each query's walk gathers at least
    ``min(m, k)`` matches, so it visits, scores and (post-filter) over-fetches at least that many rows, and
    the planning counts every list holding a match; plus building the filter's state when it is not cached
    (``facts["filter_state_s"]``). The weights are >= 0, so no walk costs less."""
    m, nq, k, D = facts["m"], facts["nq"], facts["k"], facts["D"]
    least = float(nq * min(m, k))
    bitmap = cost(cal["ivf-bitmap"], (1.0, least * D, least, float(nq), float(nq * k), 0.0))
    post = cost(cal["ivf-postfilter"], (1.0, least * D, least, float(nq)))
    plan = cost(cal[PLANNING], (1.0, coarse_entries(facts, holding), float(nq * holding), float(m)))
    return min(bitmap, post) + plan + facts.get("filter_state_s", 0.0)


def filter_state_time(cal: dict, facts: dict, state: FilterState | None) -> float:
    """The calibrated time to build ``state`` (matches per list and bitmap) in this call: 0 when it is
    cached from an earlier query with the same filter, or when there is no index or calibration."""
    if state is None or state.built or FILTER_STATE not in cal:
        return 0.0
    return cost(cal[FILTER_STATE], features(FILTER_STATE, facts))


CHEAP_EXACT = "the exact scan of the matches costs less than any IVF plan can (its calibrated floor, with planning)"


def local_selectivity(ivf: IVF, S: np.ndarray, match_lists: np.ndarray) -> float:
    """The share of matching rows in each query's ``LOCAL_LISTS`` nearest lists (all lists, matches or not;
    ``S``: the queries' similarity to every centroid), the smallest over the queries: the selectivity the
    walk meets near the query.

    The recall table is measured under random filters, where this equals the global selectivity. A filter
    that leaves out the query's own cluster (anti-correlated) is far sparser near it: its nearest matches
    lie at similar distances in many lists, and at the probes a random 50% filter needs the walk found 0.69
    of the top 10 (10^5 x 256, `benchmarks/query_micro.py`). Looked up at this selectivity, the table asks
    for the probes of a sparse filter, or for an exact plan (Qdrant's planner likewise estimates
    cardinality, not just the global count).

    A query's local share counts only when it is below the global one by more than 3 binomial standard
    deviations of the matches expected there: a random 1% filter leaves ~3 matches in 4 lists of 80 rows,
    and reading the table at that noisy share sent walks that met the target to an exact scan 1.4x slower."""
    return ivf.coarse_stats(S, match_lists)[0]


def walk_facts(ivf: IVF, Q: np.ndarray, mask_lists: np.ndarray, k: int, k_walk: int, probes: int,
               sims: np.ndarray | None = None) -> dict:
    """The IVF plans' walk at ``probes`` (`ivf.walk`, gathering ``k_walk`` matches; ``sims``: ``Q``'s centroid
    similarities if computed): lists per query, rows visited and matches met, the walked lists' rows on the
    filter's minority side (``mixed_rows``: the bitmap test's branch is unpredictable there; a list wholly in
    or out of a correlated filter scans at ~13 ns per match, a half-matching one at 35-50 ns, k = 10, 32
    queries, measured here), the post-filter's over-fetch ``k_prime`` (1.5 k over the walk's match rate) and
    ``short``, how many queries met fewer than k matches."""
    w = walk(ivf, Q, mask_lists, k_walk, probes, sims, k)
    return {"Iq": w.lists, "visited": w.visited, "matched": w.matched, "mixed_rows": w.mixed_rows, "probes": probes,
            "k_walk": k_walk, "k_prime": w.k_prime, "short": w.short, "visited_total": w.visited_total,
            "matched_total": w.matched_total}


def plan_nearest(source: QuerySource, positions: np.ndarray | None, qs: list[np.ndarray], k: int, *, host: Any,
                 recall: float | None, ivf: IVF | None, block_rows: int = 65536, metric: str = "cosine",
                 calibration: dict | None = None, cost_all: bool = False) -> tuple[list[Candidate], dict]:
    """Every candidate with its predicted time; the planning facts (m, n, coarse assignment) in a dict.

    ``calibration`` (from `calibration.operator_costs`): per candidate the weights of its `features`,
    fitted to times measured on this source; without it the prediction is `leanml.hw`'s roofline.
    The IVF candidates' probes come from the index's filtered-recall table (`IVF.probes_for`); they are
    costed only when eligible, unless ``cost_all`` (forced plans, the benchmark's grid)."""
    n, d, C = len(source.ids()), source.manifest.dim, len(source.checkpoint_names())
    m = n if positions is None else len(positions)
    nq, codec = qs[0].shape[0], source.manifest.codec
    facts: dict[str, Any] = {"n": n, "m": m, "nq": nq, "k": k, "codec": codec, "D": C * d}
    if ivf is not None:
        facts["nprobe"], facts["nlist"] = ivf.nprobe, int(ivf.index.nlist)
    cal = calibration or {}

    def predict(name: str) -> float:
        if name in cal:
            return cost(cal[name], features(name, facts))
        return _roofline(name, facts, source, host, metric, block_rows)

    t_f = predict("exact-filtered")
    cands = [Candidate("exact-filtered", t_f), Candidate("exact-masked", predict("exact-masked"))]
    approx_ok = recall is not None and recall < 1.0 and metric == "cosine"
    probes, why_probe, k_walk, mask_lists = None, "", k, None
    # the fitted weights are >= 0 and the work terms only grow with the walk, so an IVF plan costs at least its
    # time at the least work it can do (`ivf_floor`): when the exact scan of the matches costs less, skip the
    # IVF planning, first before counting the matches per list and again after
    can_skip = ivf is not None and approx_ok and not cost_all and all(c in cal for c in (*APPROX, PLANNING))
    # the common case of a small filter: return at once. Checked before the filter's state is even looked up:
    # without the state's build the floor is lower, so an IVF plan that loses here loses with it too
    if can_skip and t_f <= ivf_floor(cal, facts, 1):
        facts["ivf_planning_predicted_s"] = 0.0
        return cands + [Candidate(c, math.inf, eligible=False, why_not=CHEAP_EXACT, exact=False) for c in APPROX], facts
    fs = filter_state(ivf, positions) if ivf is not None and approx_ok else None  # cached, or built lazily
    facts["filter_state"] = "none" if fs is None else ("cached" if fs.built else "built in this call")
    t_state = facts["filter_state_s"] = filter_state_time(cal, facts, fs)
    if ivf is not None and approx_ok:
        assert fs is not None
        mask_lists, holding = fs.mask_lists, fs.holding  # counted once per filter (`filters`)
        facts["holding"] = holding
        low = ivf.lowest_measured(k)
        if can_skip and t_f <= ivf_floor(cal, facts, holding):
            approx_ok, why_probe = False, CHEAP_EXACT
        elif not cost_all and m > k and m / max(n, 1) < low * (1 - 1e-9) and holding > ivf.nprobe:
            # the selectivity near the queries is at most the global one: below the lowest measured one the
            # table cannot vouch for a walk, and the matches span more lists than a walk takes whole: skip
            # the rest of the IVF planning (its nq x nlist matmul also evicts the scan's cache lines)
            approx_ok, why_probe = False, (f"selectivity {m / max(n, 1):.3g} is below the lowest measured "
                                           f"({low:.3g}, k = {k}): exact")
    walk_sims = None
    if ivf is not None and approx_ok:
        Q = facts["Q"] = combined_queries(source, qs)
        if walks_every_list(facts, holding):
            # the matches lie in no more lists than the index probes unfiltered: the walk takes every one of
            # them, which is exact, so the queries' centroid similarities are not needed (nor read: 1.3 MB at
            # 10^5 x 256). Equal similarities: the walk takes the lists in list order, FAISS's top-k is the same
            probes, rec, why_probe, k_walk = holding, 1.0, "", k
            walk_sims = np.zeros((nq, facts["nlist"]), np.float32)
        else:
            # [nq, nlist], shared by `local_selectivity`, `IVF.band_counts` and the walk: one call for both
            S, local, bands = ivf.coarse(Q, mask_lists)
            walk_sims = facts["sims"] = S
            sel = facts["selectivity_seen"] = min(m / max(n, 1), local)
            facts["difficulty_bands"] = bands
            probes, rec, why_probe, k_walk = ivf.probes_for(sel, k, recall, bands)
            if m <= k or (probes is not None and holding <= probes):
                # the walk takes every list holding a match (>= k matches, or all of them within the probes): exact
                probes, rec, why_probe = holding, 1.0, ""
        facts["ivf_recall_measured"] = rec
    for name in APPROX:
        c = Candidate(name, math.inf, exact=False)
        if metric != "cosine":
            c.eligible, c.runnable, c.why_not = False, False, "the FAISS index serves the combined cosine only"
        elif ivf is None:
            c.eligible, c.runnable, c.why_not = False, False, "no IVF index built for this source (Query.with_index())"
        elif not approx_ok and why_probe:
            c.eligible, c.why_not = False, why_probe
        elif not approx_ok:
            c.eligible, c.why_not = False, "approximate: an exact answer was asked for (recall None or 1.0)"
        elif probes is None:
            c.eligible, c.why_not = False, why_probe
        cands.append(c)
    # the IVF plans need the coarse assignment first (calibrated as PLANNING): their cost includes it
    t_plan = cost(cal[PLANNING], features(PLANNING, facts)) if PLANNING in cal and mask_lists is not None else 0.0
    facts["ivf_planning_predicted_s"] = t_plan
    if ivf is not None and metric == "cosine" and (cost_all or any(c.eligible for c in cands[2:])):
        p = probes or ivf.nprobe
        t0 = time.perf_counter()
        Q = facts["Q"] if "Q" in facts else combined_queries(source, qs)
        if mask_lists is None:
            fs = fs or filter_state(ivf, positions)
            mask_lists, facts["holding"] = fs.mask_lists, fs.holding
        facts.update(walk_facts(ivf, Q, mask_lists, k, max(k, k_walk), p, walk_sims))
        Iq, visited, kp = facts["Iq"], facts["visited"], facts["k_prime"]
        facts.update(assign_s=time.perf_counter() - t0, Q=Q, mask_lists=mask_lists, list_sizes=ivf.sizes())
        short = facts["short"]
        bm, pf = cands[2], cands[3]
        bm.predicted_s = predict("ivf-bitmap")
        bm.params = {"probes": p, "lists_max": int(Iq.shape[1]), "recall_measured": facts.get("ivf_recall_measured")}
        if not cal and bm.eligible and visited.mean() >= m:  # calibrated, the measured costs decide this
            bm.eligible, bm.why_not = False, (f"the walk visits {visited.mean():.0f} rows per query >= {m} matches: "
                                              "the exact scan of the matches does less (fallback)")
        pf.predicted_s = predict("ivf-postfilter")
        if short:  # queries the over-fetch may leave short are answered by the bitmap scan of the same lists
            fixed = float(cal["ivf-bitmap"][0]) if "ivf-bitmap" in cal else 0.0
            pf.predicted_s += fixed + (bm.predicted_s - fixed) * short / max(nq, 1)
        bm.predicted_s += t_plan + t_state
        pf.predicted_s += t_plan + t_state
        pf.params = {"probes": p, "k_prime_max": int(kp.max()) if len(kp) else k, "fallback_queries_predicted": short}
    return cands, facts


def _roofline(name: str, facts: dict, source: QuerySource, host: Any, metric: str, block_rows: int) -> float:
    """A candidate's time from `leanml.hw`'s roofline on the host device, for planning without a calibration."""
    dev = _host(host)
    model = _model(dev)
    n, m, nq, k, codec = facts["n"], facts["m"], facts["nq"], facts["k"], facts["codec"]
    d, C = source.manifest.dim, len(source.checkpoint_names())
    if name == "exact-filtered":
        gather = cm.OpSpec("copy", 0.0, 2.0 * m * (source.bytes_per_row() + 8), "fp32", "gather matches",
                           alloc_bytes=float(m * source.bytes_per_row()))
        return _exact_time(dev, m, d, C, codec, nq, k, metric, block_rows) + C * model.time(gather)
    if name == "exact-masked":
        return (_exact_time(dev, n, d, C, codec, nq, k, metric, block_rows)
                + model.time(cm.OpSpec("elementwise", float(n * nq), 4.0 * n * nq, "fp32", "mask non-matches")))
    V, M = facts["visited_total"], facts["matched_total"]
    if name == "ivf-bitmap":
        return _ivf_scan_time(model, V, M, C * d, k, True)
    kp = facts["k_prime"]
    return (_ivf_scan_time(model, V, V, C * d, int(kp.max()), False)
            + model.time(cm.OpSpec("elementwise", float(kp.sum()), 9.0 * kp.sum(), "fp32", "filter")))


_EXACT_MEMO: dict[tuple, float] = {}
_MODELS: dict[str, cm.CostModel] = {}
_HOSTS: dict[str, Any] = {}


def _host(host: Any) -> Any:
    """`host_device`, resolved once per host name (reading a calibration file is slow for a planner)."""
    if not isinstance(host, str):
        return host_device(host)
    if host not in _HOSTS:
        _HOSTS[host] = host_device(host)
    return _HOSTS[host]


def _model(dev: Any) -> cm.CostModel:
    if dev.id not in _MODELS:
        _MODELS[dev.id] = cm.CostModel(dev)
    return _MODELS[dev.id]


def _exact_time(dev: Any, n: int, d: int, C: int, codec: str, nq: int, k: int, metric: str, block_rows: int) -> float:
    """`store.plan.exact_scan_time`, memoized (a roofline costing is ~1 ms of Python; plans repeat shapes)."""
    key = (dev.id, n, d, C, codec, nq, k, metric, block_rows)
    if key not in _EXACT_MEMO:
        if len(_EXACT_MEMO) > 4096:
            _EXACT_MEMO.clear()
        _EXACT_MEMO[key] = exact_scan_time(dev, n=n, d=d, C=C, codec=codec, nq=nq, k=k, metric=metric,
                                           block_rows=block_rows)[0]
    return _EXACT_MEMO[key]


def choose(cands: list[Candidate]) -> Candidate:
    ok = [c for c in cands if c.eligible]
    return min(ok, key=lambda c: c.predicted_s)


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
        assert ivf is not None
        Q, Iq = facts["Q"], facts["Iq"]
        if name == "ivf-bitmap":
            s, pos = bitmap_search(ivf, Q, positions, kk, Iq)
            short, ids = np.flatnonzero((pos < 0).any(axis=1)), None
        else:
            import faiss

            from leanml.store.kernels import first_kept  # imported here: `import leanml.store` loads no numba

            kp = int(max(kk, facts["k_prime"].max()))
            s_all, p_all = preassigned(ivf.index, Q, kp, Iq, faiss.SearchParametersIVF(nprobe=int(Iq.shape[1])))
            # the first kk kept, best first, by the filter's bits (cached per filter), with their ids
            s, pos, ids, n_short = first_kept(s_all, p_all, filter_state(ivf, positions).bits, kk, all_ids)
            short = np.flatnonzero((pos < 0).any(axis=1)) if n_short else ()
            if len(short):
                # the over-fetch came short: the walk's lists hold >= k matches, so the bitmap scan of the same
                # lists answers these queries (one FAISS call; the exact scan of 10^4 matches: 2.3-2.7 ms a query)
                s[short], pos[short] = bitmap_search(ivf, Q[short], positions, kk, Iq[short])
                info["bitmap_fallback_queries"] = int(len(short))
                short, ids = np.flatnonzero((pos < 0).any(axis=1)), None
        if ids is None:
            ids = np.where(pos >= 0, all_ids[np.maximum(pos, 0)], -1)
        if len(short):  # fewer than k rows for these queries: the exact scan of the matches answers them
            fi, fs = topk(RowView(source, positions), [q[short] for q in qs], kk, block_rows=block_rows,
                          device=device)
            ids[short], s[short] = fi, fs
        info["fallback_queries"] = int(len(short))
    return np.asarray(ids), np.asarray(s, dtype=np.float32), info
