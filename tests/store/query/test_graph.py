"""Graph steps on real features: components equal those of a brute-force threshold graph; dedup keeps one
row per component; diversify and facility location follow their rules; steps compose in either order."""

import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from leanml.store.query import Query
from leanml.store.query.graph import Graph, facility_location


def _brute_components(X, t):
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    A = (Xn @ Xn.T) > t
    np.fill_diagonal(A, False)
    return connected_components(csr_matrix(A), directed=False)[1]


def _partition(ids, lab):
    return sorted(sorted(ids[lab == c].tolist()) for c in np.unique(lab))


@pytest.mark.parametrize("t", [0.8, 0.9, 0.95])
def test_components_equal_brute_force_threshold_graph(digits_store, digits_feats, t):
    ids, X = digits_feats
    sql = "u < 0.25"
    keep = np.isin(ids, digits_store.sql(f"select id from metadata where {sql}")["id"].to_numpy())
    res = Query(digits_store).where(sql).knn_graph(None, threshold=t).components().run()
    ref = _brute_components(X[keep], t)
    got = res.sort_by("id")
    assert got.column("id").to_numpy().tolist() == sorted(ids[keep].tolist())
    order = np.argsort(ids[keep])
    assert _partition(got.column("id").to_numpy(), got.column("component").to_numpy()) == \
        _partition(ids[keep][order], ref[order])
    assert len(np.unique(ref)) < keep.sum()  # the threshold really merges rows on this data


def test_dedup_keeps_one_per_component_best_score(digits_store, digits_feats):
    ids, X = digits_feats
    t = 0.9
    lab = _brute_components(X, t)
    res = Query(digits_store).score("inner", target=X[:5]).dedup(t).run()
    assert res.num_rows == len(np.unique(lab))
    full = Query(digits_store).score("inner", target=X[:5]).run()
    s = dict(zip(full.column("id").to_pylist(), full.column("score").to_pylist(), strict=True))
    pos = {int(i): p for p, i in enumerate(ids)}
    for i, size in zip(res.column("id").to_pylist(), res.column("component_size").to_pylist(), strict=True):
        members = ids[lab == lab[pos[i]]]
        assert len(members) == size
        assert s[i] == max(s[int(j)] for j in members)


def test_approximate_dedup_agrees_with_exact(digits_store):
    ex = Query(digits_store).dedup(0.9).run()
    ap = Query(digits_store).dedup(0.9, approximate=True).run()
    all_ids = set(digits_store.ids().tolist())
    rm_e, rm_a = all_ids - set(ex.column("id").to_pylist()), all_ids - set(ap.column("id").to_pylist())
    assert len(rm_e & rm_a) / len(rm_e | rm_a) >= 0.95  # measured 1.0 on this data


def test_order_dedup_then_score_and_score_then_dedup(digits_store, digits_feats):
    _, X = digits_feats
    a = Query(digits_store).dedup(0.9).score("inner", target=X[:3]).top(20).run()
    b = Query(digits_store).score("inner", target=X[:3]).dedup(0.9).top(20).run()
    assert a.num_rows == b.num_rows == 20
    # dedup keeps the best-scored row of each component, so both orders pick the same 20 when scored first
    assert set(b.column("id").to_pylist()) <= set(Query(digits_store).score("inner", target=X[:3]).dedup(0.9).run()
                                                  .column("id").to_pylist())


def test_diversify_components_round_robin(digits_store, digits_feats):
    _, X = digits_feats
    res = Query(digits_store).score("inner", target=X[:3]).knn_graph(None, threshold=0.9).components() \
        .diversify(30).run()
    comps = res.column("component").to_numpy()
    n_comp = len(np.unique(Query(digits_store).knn_graph(None, threshold=0.9).components().run()
                           .column("component").to_numpy()))
    assert res.num_rows == 30
    assert len(np.unique(comps)) == min(30, n_comp)  # one per component before any second


def test_facility_location_equals_brute_force_greedy():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 8))
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    S = np.maximum(Xn @ Xn.T, 0)
    W = S.copy()
    np.fill_diagonal(W, 0)
    g = Graph(np.arange(40), csr_matrix(W), True, {})
    got = facility_location(g, 6).tolist()
    chosen, cover = [], np.zeros(40)
    np.fill_diagonal(S, 1)
    for _ in range(6):
        gains = [(-np.inf if j in chosen else np.maximum(S[:, j] - cover, 0).sum()) for j in range(40)]
        j = int(np.argmax(gains))
        chosen.append(j)
        cover = np.maximum(cover, S[:, j])
    assert got == chosen


def test_facility_diversify_runs_on_store(digits_store):
    res = Query(digits_store).where("u < 0.3").knn_graph(10, threshold=0.5).diversify(15, method="facility").run()
    assert res.num_rows == 15 and len(set(res.column("id").to_pylist())) == 15
