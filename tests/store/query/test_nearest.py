"""Filtered nearest on real features: every plan the planner can pick returns k rows whenever k match;
exact plans equal the brute-force top-k, approximate ones meet the recall they are allowed at."""

import numpy as np
import pytest

from leanml.store import GradientStore
from leanml.store.query import IVF, ArraySource, Query
from leanml.store.query.physical import APPROX, EXACT

SELECTIVITY = (0.001, 0.01, 0.1, 0.5)
K = 10


@pytest.fixture(scope="module")
def ivf(digits_store):
    from leanml.store.query import as_source

    return IVF.build(as_source(digits_store), nprobe=8)


def _mask(digits_store, ids, sql):
    hit = set(digits_store.sql(f"select id from metadata where {sql}")["id"].to_pylist())
    return np.array([int(i) in hit for i in ids])


@pytest.mark.parametrize("sel", SELECTIVITY)
@pytest.mark.parametrize("plan", EXACT + APPROX)
def test_every_plan_returns_k_rows_and_matches_reference(digits_store, digits_feats, ivf, sel, plan, brute_topk):
    ids, X = digits_feats
    Q = X[[3, 100, 700, 1200]] + 0.05 * np.random.default_rng(1).standard_normal((4, X.shape[1])).astype(np.float32)
    sql = f"u < {sel}"
    mask = _mask(digits_store, ids, sql)
    m = int(mask.sum())
    assert m >= 1
    q = Query(digits_store, index=ivf).where(sql).nearest(Q, K, recall=0.9, plan=plan)
    t = q.run()
    kk = min(K, m)
    got = t.column("id").to_numpy().reshape(4, kk)
    assert (got >= 0).all() and np.isin(got, ids[mask]).all()  # k rows, all matching
    ref, ref_s = brute_topk(ids, X, Q, kk, mask)
    if plan in EXACT:
        np.testing.assert_allclose(t.column("score").to_numpy().reshape(4, kk), ref_s, atol=1e-5)
        assert all(set(a) == set(b) for a, b in zip(got.tolist(), ref.tolist(), strict=True))
    else:
        rec = np.mean([len(set(a) & set(b)) / kk for a, b in zip(got.tolist(), ref.tolist(), strict=True)])
        assert rec >= 0.9, (plan, sel, rec)


@pytest.mark.parametrize("sel", SELECTIVITY)
def test_correlated_filter_planned_returns_k(digits_store, digits_feats, ivf, sel, brute_topk):
    """Filter correlated with the query (its own label) and the planner's own choice."""
    ids, X = digits_feats
    labels = dict(zip(*[digits_store.sql("select id, label from metadata")[c].to_pylist() for c in ("id", "label")],
                      strict=True))
    qi = 40
    sql = f"label = {labels[int(ids[qi])]} AND u < {max(sel * 10, 0.02)}"
    mask = _mask(digits_store, ids, sql)
    q = Query(digits_store, index=ivf).where(sql).nearest(X[qi], K, recall=0.95)
    t = q.run()
    kk = min(K, int(mask.sum()))
    assert t.num_rows == kk
    ref, _ = brute_topk(ids, X, X[qi : qi + 1], kk, mask)
    chosen = q.records[1].operator
    if "exact" in chosen:
        assert set(t.column("id").to_pylist()) == set(ref[0].tolist())
    else:
        assert len(set(t.column("id").to_pylist()) & set(ref[0].tolist())) / kk >= 0.9
    assert "predicted" in q.explain() and "measured" in q.explain()


def test_exact_is_chosen_when_no_recall_target(digits_store, digits_feats, ivf):
    _, X = digits_feats
    q = Query(digits_store, index=ivf).where("u < 0.5").nearest(X[:3], 5)
    q.run()
    assert q.records[1].operator.startswith("nearest[exact")
    assert all(not c.eligible for c in q.last_candidates if c.name in APPROX)


def test_many_queries_one_plan_and_k_larger_than_matches(digits_store, digits_feats):
    ids, X = digits_feats
    Q = X[:64]
    t = Query(digits_store).where("u < 0.01").nearest(Q, 50).run()
    m = int(_mask(digits_store, ids, "u < 0.01").sum())
    assert t.num_rows == 64 * min(50, m)


def test_two_checkpoints_combined_score_equals_reference(tmp_path, digits_feats):
    """Combined cosine sum_c w_c cos over two checkpoints (real rows; c1 = the rows in reverse dim order)."""
    ids, X = digits_feats
    X1 = X[:, ::-1].copy()
    st = GradientStore.create(tmp_path / "two", dim=X.shape[1], codec="fp16", spec={"p": 1}, model="m",
                              checkpoints=[("c0", 0.7), ("c1", 0.3)])
    st.append(ids, X, "c0")
    st.append(ids, X1, "c1")
    Q = np.stack([X[[5, 9]], X1[[5, 9]]])
    t = Query(st).nearest(Q, 7).run()
    def cos(A, B):
        return (A / np.linalg.norm(A, axis=1, keepdims=True)) @ (B / np.linalg.norm(B, axis=1, keepdims=True)).T
    S = 0.7 * cos(Q[0], X) + 0.3 * cos(Q[1], X1)
    ref = ids[np.argsort(-S, axis=1)[:, :7]]
    assert t.column("id").to_numpy().reshape(2, 7).tolist() == ref.tolist()


def test_array_source_with_arrow_metadata(digits_feats):
    ids, X = digits_feats
    src = ArraySource(X, ids, metadata={"id": ids, "even": (ids % 2 == 0)})
    t = Query(src).where("even").nearest(X[0], 5).run()
    assert (t.column("id").to_numpy() % 2 == 0).all() and t.num_rows == 5
