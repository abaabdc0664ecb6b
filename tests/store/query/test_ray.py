"""Per-shard Ray tasks give the same top-k and scores as the single-process query."""

import numpy as np
import pytest

from leanml.store.query import Query, as_source


@pytest.mark.slow
@pytest.mark.ray
def test_ray_per_shard_equals_local(digits_store, digits_feats):
    pytest.importorskip("ray")
    import ray

    from leanml.store.query.distributed import nearest_ray, score_ray

    _, X = digits_feats
    src = as_source(digits_store)
    pos = src.positions_of(digits_store.sql("select id from metadata where u < 0.3")["id"].to_numpy())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ids, sc = nearest_ray(digits_store, X[:3], 7, pos)
        ref = Query(digits_store).where("u < 0.3").nearest(X[:3], 7).run()
        np.testing.assert_allclose(sc.ravel(), ref.column("score").to_numpy(), atol=1e-5)
        assert [set(r) for r in ids.tolist()] == [set(r) for r in ref.column("id").to_numpy().reshape(3, 7).tolist()]
        sid, s = score_ray(digits_store, "inner", X[:4], pos)
        r2 = Query(digits_store).where("u < 0.3").score("inner", target=X[:4]).run().sort_by("id")
        o = np.argsort(sid)
        np.testing.assert_array_equal(sid[o], r2.column("id").to_numpy())
        np.testing.assert_allclose(s[o], r2.column("score").to_numpy(), atol=1e-5)
    finally:
        ray.shutdown()
