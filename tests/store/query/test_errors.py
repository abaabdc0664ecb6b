"""Bad queries: a clear error naming the step and the problem, never a deep library traceback."""

import json

import numpy as np
import pytest

from leanml.store.query import Query, QueryError, load_spec


@pytest.mark.parametrize("build, step, text", [
    (lambda q, X: q.where("label = = 3").nearest(X[0], 5), "1 where", "SQL error"),
    (lambda q, X: q.where("colour = 'red'").nearest(X[0], 5), "1 where", "unknown column"),
    (lambda q, X: q.nearest(np.zeros(7, np.float32), 5), "1 nearest", "dimension mismatch"),
    (lambda q, X: q.score("less", target=np.zeros((3, 9), np.float32)), "1 score", "dimension mismatch"),
    (lambda q, X: q.where("u < 0").nearest(X[0], 5), "2 nearest", "empty result"),
    (lambda q, X: q.where("u < 0").score("inner", target=X[:2]), "2 score", "empty result"),
    (lambda q, X: q.score("inner", target="no-such-task"), "1 score", "no task"),
    (lambda q, X: q.components(), "1 components", "needs a graph"),
    (lambda q, X: q.top(3), "1 top", "needs a score column"),
    (lambda q, X: q.diversify(3), "1 diversify", "needs components"),
    (lambda q, X: q.join({"x": [1]}, on="id"), "1 join", "unknown join column"),
])
def test_bad_query_names_step_and_problem(digits_store, digits_feats, build, step, text):
    _, X = digits_feats
    with pytest.raises(QueryError, match=text) as e:
        build(Query(digits_store), X).run()
    assert e.value.step == step


@pytest.mark.parametrize("call, text", [
    (lambda q: q.nearest(np.zeros(64), 0), "k must be a whole number >= 1"),
    (lambda q: q.nearest(np.zeros(64), -3), "k must be a whole number >= 1"),
    (lambda q: q.top(0), "n must be"),
    (lambda q: q.top_fraction(1.5), "p must be"),
    (lambda q: q.score("bm25", target=np.zeros(64)), "method must be one of"),
    (lambda q: q.dedup(2.0), "threshold must be"),
    (lambda q: q.where(""), "sql must be"),
])
def test_bad_arguments_refused_when_added(digits_store, call, text):
    with pytest.raises(QueryError, match=text):
        call(Query(digits_store))


def test_no_metadata_and_empty_query(tmp_path, digits_feats):
    from leanml.store import GradientStore

    ids, X = digits_feats
    st = GradientStore.create(tmp_path / "nm", dim=X.shape[1], spec={"p": 1}, model="m")
    st.append(ids[:50], X[:50])
    with pytest.raises(QueryError, match="no metadata"):
        Query(st).where("label = 1").run()
    with pytest.raises(QueryError, match="no steps"):
        Query(st).run()


def test_spec_files(tmp_path, digits_feats):
    _, X = digits_feats
    np.save(tmp_path / "q.npy", X[:2])
    (tmp_path / "q.json").write_text(json.dumps({"steps": [{"op": "where", "sql": "u < 0.5"},
                                                           {"op": "nearest", "queries": "q.npy", "k": 3}]}))
    steps = load_spec(tmp_path / "q.json")
    assert [s.kind for s in steps] == ["where", "nearest"] and steps[1].args["queries"].shape == (2, 64)
    (tmp_path / "bad.toml").write_text("[[step]]\nsql = 'x'\n")
    with pytest.raises(QueryError, match="needs op"):
        load_spec(tmp_path / "bad.toml")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(QueryError, match="not valid"):
        load_spec(tmp_path / "bad.json")
