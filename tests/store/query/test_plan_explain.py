"""The plan text before and after a run, the per-operator calibration, and a few step semantics."""

import numpy as np
import pytest

from leanml.store.query import IVF, Query, as_source
from leanml.store.query.calibration import operator_costs


def test_explain_before_and_after_run(digits_store, digits_feats):
    _, X = digits_feats
    q = Query(digits_store).score("inner", target=X[:4]).where("u < 0.3").top(5)
    before = q.explain()
    assert "not run yet" in before and "filter pushdown" in before and "selectivity" in before
    q.run()
    after = q.explain()
    assert "not run yet" not in after and "ms" in after
    assert all(r.measured_s is not None for r in q.records)
    assert [r.rows_out for r in q.records][-1] == 5


def test_calibration_fits_nonnegative_work_weights_per_runnable_candidate(digits_store):
    from leanml.store.query.physical import FILTER_STATE, PLANNING, cost, features

    src = as_source(digits_store)
    ivf = IVF.build(src, nprobe=8)
    cal = operator_costs(src, ivf, "dev_vm")
    assert not ivf.__dict__.get("_filters")  # calibration's throwaway filters are not left in the filter cache
    assert set(cal) == {"exact-filtered", "exact-masked", "ivf-bitmap", "ivf-postfilter", PLANNING, FILTER_STATE}
    facts = {"m": 10, "n": 100, "nq": 1, "k": 10, "D": 64, "visited": np.ones(1), "matched": np.ones(1),
             "k_prime": np.ones(1), "Iq": np.array([[0]]), "mask_lists": np.array([1]), "list_sizes": np.array([2]),
             "holding": 1, "mixed_rows": 1.0, "visited_total": 1.0, "matched_total": 1.0, "nprobe": 16, "nlist": 1}
    for name, w in cal.items():
        assert len(w) == len(features(name, facts)) and min(w) >= 0
        assert cost(w, features(name, facts)) > 0  # a call costs something
        assert cost(w, features(name, facts)) == pytest.approx(float(np.dot(w, features(name, facts))))
    assert operator_costs(src, ivf, "dev_vm") is cal  # cached per source and index


def test_the_walk_counts_the_minority_side_of_each_walked_list():
    from leanml.store.kernels import walk

    # lists 0..3 hold 10 rows each with 0, 3, 10 and 6 matches (list 0 is never walked: it holds none). Query 0
    # is nearest lists 1 then 3, query 1 nearest 2 then 3; one probe and k = 4: query 0 walks 1 and 3 (3 < 4
    # matches after one list), query 1 walks list 2 alone
    S = np.array([[0.9, 0.8, 0.1, 0.7], [0.9, 0.1, 0.8, 0.7]], np.float32)
    Iq, visited, matched, mixed, k_prime, short, v, mt = walk(S, np.full(4, 10), np.array([0, 3, 10, 6]), 4, 1, 10)
    assert Iq.tolist() == [[1, 3], [2, -1]] and visited.tolist() == [20, 10] and matched.tolist() == [9, 10]
    assert mixed == (3 + 4) + 0  # min(matches, rows - matches) per walked list
    # over-fetch for top-10 at the walk's match rate (9/20, 10/10) with a 1.5x margin, capped at the rows visited
    assert k_prime.tolist() == [20, 10] and short == 1  # query 0 met 9 < 10 matches
    assert (v, mt) == (30, 19)  # the totals over both queries


def test_where_after_nearest_post_filters(digits_store, digits_feats):
    _, X = digits_feats
    full = Query(digits_store).nearest(X[0], 20).run()
    post = Query(digits_store).nearest(X[0], 20).where("u < 0.5").run()
    keep = set(digits_store.sql("select id from metadata where u < 0.5")["id"].to_pylist())
    assert post.column("id").to_pylist() == [i for i in full.column("id").to_pylist() if i in keep]


def test_sample_and_multi_query_graph(digits_store, digits_feats):
    _, X = digits_feats
    a = Query(digits_store).sample(50, seed=1).run()
    b = Query(digits_store).sample(50, seed=1).run()
    assert a.column("id").to_pylist() == b.column("id").to_pylist() and a.num_rows == 50
    t = Query(digits_store).nearest(X[:5], 30).dedup(0.95).run()  # several queries, then a graph step
    assert len(set(t.column("id").to_pylist())) == t.num_rows and "query" not in t.column_names
    assert len(np.unique(t.column("component").to_numpy())) == t.num_rows  # one row per component


def test_joins_with_user_tables_in_sequence(digits_store, digits_feats):
    """The source's DuckDB connection is reused; each join sees its own table."""
    _, X = digits_feats
    ids = digits_store.ids()[:30]
    a = Query(digits_store).nearest(X[0], 30).join({"id": ids, "tag": ["a"] * 30}, on="id").run()
    b = Query(digits_store).nearest(X[0], 30).join({"id": ids, "tag": ["b"] * 30}, on="id", how="left").run()
    assert set(a.column("tag").to_pylist()) <= {"a"} and b.num_rows == 30
    assert set(b.column("tag").to_pylist()) <= {"b", None}


def test_ivf_floor_bounds_every_costed_ivf_plan_from_below(digits_store, digits_feats):
    """The early exit is sound: `ivf_floor` never exceeds what the full IVF costing predicts, over filters
    from 0.5% to all rows, 1 and 16 queries, k = 10 and 100."""
    from leanml.store.query.physical import APPROX, ivf_floor, plan_nearest

    _, X = digits_feats
    src = as_source(digits_store)
    ivf = IVF.build(src, nprobe=8)
    cal = operator_costs(src, ivf, "dev_vm")
    rng = np.random.default_rng(4)
    n = len(X)
    for m in (7, 70, 700, n):
        pos = np.sort(rng.choice(n, m, replace=False))
        for nq in (1, 16):
            for k in (10, 100):
                cands, facts = plan_nearest(src, pos, [X[rng.choice(n, nq)]], k, host="dev_vm", recall=0.95,
                                            ivf=ivf, calibration=cal, cost_all=True)
                holding = int(np.count_nonzero(facts["mask_lists"]))
                best_ivf = min(c.predicted_s for c in cands if c.name in APPROX)
                assert ivf_floor(cal, facts, holding) <= best_ivf * (1 + 1e-9)
                assert ivf_floor(cal, facts, 1) <= ivf_floor(cal, facts, holding)


def test_cheap_exact_skips_the_ivf_planning_and_says_so(digits_store, digits_feats):
    """Hand-set weights (the known answer): an exact scan cheaper than any IVF call's floor skips the
    coarse assignment; ten times dearer, the IVF plans are costed."""
    from leanml.store.query.physical import CHEAP_EXACT, plan_nearest

    _, X = digits_feats
    src = as_source(digits_store)
    ivf = IVF.build(src, nprobe=8)
    pos = np.arange(0, len(X), 2)  # 674 matches: a selectivity the recall table measured
    ivf_w = {"ivf-bitmap": (1e-4, 0.0, 0.0, 0.0, 0.0, 0.0), "ivf-postfilter": (1e-4, 0.0, 0.0, 0.0),
             "ivf-planning": (5e-5, 0.0, 0.0), "exact-masked": (1.0, 0.0, 0.0, 0.0)}
    for exact_s, skipped in ((1e-4, True), (1.5e-3, False)):
        cal = {**ivf_w, "exact-filtered": (exact_s, 0.0, 0.0, 0.0)}
        cands, facts = plan_nearest(src, pos, [X[:1]], 5, host="dev_vm", recall=0.95, ivf=ivf, calibration=cal)
        assert ("sims" not in facts and "mask_lists" not in facts) is skipped  # no coarse assignment if skipped
        assert all(c.why_not == CHEAP_EXACT for c in cands[2:]) is skipped
        assert any(c.eligible for c in cands[2:]) is not skipped

