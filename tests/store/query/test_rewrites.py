"""Each rewrite gives the naive plan's answer (scores within 1e-5, same selection) on real features."""

import numpy as np
import pytest

from leanml.store.query import Query


@pytest.fixture(scope="module")
def task(digits_store, digits_feats):
    """A target task of 64 real stored rows in 8 subtasks."""
    _, X = digits_feats
    rng = np.random.default_rng(3)
    rows = rng.choice(len(X), 64, replace=False)
    subtasks = [f"s{i % 8}" for i in range(64)]
    digits_store.add_task("val8", X[rows][None], subtasks=subtasks)
    return X[rows], subtasks


def _scores(t):
    order = np.argsort(t.column("id").to_numpy())
    return t.column("id").to_numpy()[order], t.column("score").to_numpy()[order]


@pytest.mark.parametrize("method", ["less", "inner", "trak"])
def test_filter_pushdown_equals_naive(digits_store, task, method):
    target = "val8" if method == "less" else task[0]
    q = Query(digits_store).score(method, target=target).where("length < 300 AND label <> 4")
    pushed = q.run()
    assert any("filter pushdown" in n for n in q.notes)
    assert q.records[0].operator.startswith("where")  # the filter now runs first
    assert q.records[1].rows_in < len(digits_store.ids())  # and scoring sees only the matches
    naive = Query(digits_store).score(method, target=target).where("length < 300 AND label <> 4").run(rewrites=False)
    a, b = _scores(pushed), _scores(naive)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], atol=1e-5)


@pytest.mark.parametrize("method", ["less", "inner"])
def test_aggregation_pushdown_equals_naive_and_same_selection(digits_store, task, method):
    target = "val8" if method == "less" else task[0]
    q = Query(digits_store).score(method, target=target).top_fraction(0.05)
    pushed = q.run()
    assert any("aggregation pushdown" in n for n in q.notes)
    naive = Query(digits_store).score(method, target=target).top_fraction(0.05).run(rewrites=False)
    assert set(pushed.column("id").to_pylist()) == set(naive.column("id").to_pylist())
    full_p = Query(digits_store).score(method, target=target).run()
    full_n = Query(digits_store).score(method, target=target).run(rewrites=False)
    np.testing.assert_allclose(_scores(full_p)[1], _scores(full_n)[1], atol=1e-5)


def test_less_matches_store_select(digits_store, task):
    """The query's LESS top-5% is the store's own `select` (the same scoring function underneath)."""
    ids, _ = digits_store.select("val8", 0.05)
    t = Query(digits_store).score("less", target="val8").top_fraction(0.05).run()
    assert set(t.column("id").to_pylist()) == set(ids.tolist())


def test_filter_before_graph_equals_naive(digits_store):
    sql = "u < 0.5"
    q = Query(digits_store).knn_graph(None, threshold=0.9).where(sql).components()
    pushed = q.run()
    assert any("filter before graph" in n for n in q.notes)
    naive = Query(digits_store).knn_graph(None, threshold=0.9).where(sql).components().run(rewrites=False)
    assert pushed.num_rows == naive.num_rows

    def partition(t):
        ids, comp = t.column("id").to_numpy(), t.column("component").to_numpy()
        return sorted(sorted(ids[comp == c].tolist()) for c in np.unique(comp))
    assert partition(pushed) == partition(naive)


def test_knn_graph_with_k_is_not_reordered(digits_store):
    q = Query(digits_store).knn_graph(5, threshold=0.9).where("u < 0.5").components()
    q.run()
    assert not any("filter before graph" in n for n in q.notes)
    assert q.records[0].operator.startswith("knn_graph")
