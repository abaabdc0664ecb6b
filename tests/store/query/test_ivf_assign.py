"""`ivf.assign` (the list walk every IVF plan runs) against a per-query loop over fully sorted lists."""

import numpy as np
import pytest

from leanml.store.query import IVF, as_source
from leanml.store.query.ivf import assign, combined_queries


def _walk(ivf: IVF, q: np.ndarray, match_lists: np.ndarray, k: int, nprobe: int) -> list[int]:
    """Lists holding matches, nearest centroid first; take until nprobe are taken and they hold >= k matches."""
    held = [int(i) for i in np.flatnonzero(match_lists)]
    held.sort(key=lambda i: -float(ivf.centroids()[i] @ q))
    taken, got = [], 0
    for i in held:
        if len(taken) >= nprobe and got >= k:
            break
        taken.append(i)
        got += int(match_lists[i])
    return taken


@pytest.mark.parametrize("m,k,nprobe", [(1, 10, 4), (40, 10, 1), (400, 100, 2), (400, 1000, 4), (1348, 10, 200)])
def test_assign_takes_the_nearest_lists_holding_matches_until_k(digits_store, digits_feats, m, k, nprobe):
    src = as_source(digits_store)
    ivf = IVF.build(src, nprobe=8)
    n = len(src.ids())
    rng = np.random.default_rng(m + k)
    pos = np.sort(rng.choice(n, min(m, n), replace=False))
    ml = np.bincount(ivf.list_of[pos], minlength=ivf.index.nlist)
    _, X = digits_feats
    Q = combined_queries(src, [X[rng.choice(len(X), 5)] + 0.01])
    Iq, visited, matched = assign(ivf, Q, ml, k, nprobe)
    sizes = ivf.sizes()
    for qi in range(len(Q)):
        want = _walk(ivf, Q[qi], ml, k, nprobe)
        got = [int(i) for i in Iq[qi] if i >= 0]
        assert got == want
        assert visited[qi] == sizes[want].sum() and matched[qi] == ml[want].sum()


def test_a_postfilter_left_short_is_answered_by_the_bitmap_scan_of_the_same_lists(digits_store, digits_feats):
    """With no over-fetch (k' = k) a 10% filter leaves most queries short after the post-filter: they get the
    bitmap scan of the walk's lists (which hold >= k matches), so the answer equals ``ivf-bitmap``'s, k rows."""
    from leanml.store.query.physical import plan_nearest, run_nearest

    src = as_source(digits_store)
    ivf = IVF.build(src, nprobe=8)
    n, k = len(src.ids()), 10
    rng = np.random.default_rng(3)
    pos = np.sort(rng.choice(n, n // 10, replace=False))
    _, X = digits_feats
    Q = X[rng.choice(n, 16)] + 0.01
    _, facts = plan_nearest(src, pos, [Q], k, host="dev_vm", recall=0.95, ivf=ivf, cost_all=True)
    facts["k_prime"] = np.full(len(Q), k)
    ids, scores, info = run_nearest("ivf-postfilter", src, pos, [Q], k, facts, ivf)
    want, want_s, _ = run_nearest("ivf-bitmap", src, pos, [Q], k, facts, ivf)
    assert info["bitmap_fallback_queries"] > 0 and info["fallback_queries"] == 0
    assert (ids >= 0).all() and np.isin(ids, src.ids()[pos]).all()
    # the rest kept the first k matches of the unfiltered ranking over the same lists: the same top k
    np.testing.assert_allclose(scores, want_s, atol=1e-5)


def test_a_filter_held_by_at_most_nprobe_lists_is_walked_whole_without_centroid_similarities(digits_store,
                                                                                             digits_feats):
    """Matches in no more lists than nprobe: the walk takes every one of them (exact, so no similarities are
    computed) and both IVF plans return the exact scan's top-k."""
    from leanml.store.query.physical import plan_nearest, run_nearest

    src = as_source(digits_store)
    ivf = IVF.build(src, nprobe=8)
    lists = np.flatnonzero(ivf.sizes())[:3]
    pos = np.flatnonzero(np.isin(ivf.list_of, lists))
    pos.setflags(write=False)
    _, X = digits_feats
    Q = X[:4] + 0.01
    _, facts = plan_nearest(src, pos, [Q], 10, host="dev_vm", recall=0.95, ivf=ivf, cost_all=True)
    assert "sims" not in facts and facts["probes"] == facts["holding"] == 3 and facts["ivf_recall_measured"] == 1.0
    assert [sorted(int(j) for j in row if j >= 0) for row in facts["Iq"]] == [sorted(lists.tolist())] * len(Q)
    want, _, _ = run_nearest("exact-filtered", src, pos, [Q], 10, facts, ivf)
    for name in ("ivf-bitmap", "ivf-postfilter"):
        got, _, _ = run_nearest(name, src, pos, [Q], 10, facts, ivf)
        assert [set(r) for r in got.tolist()] == [set(r) for r in want.tolist()], name
