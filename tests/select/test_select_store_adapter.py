"""Selectors read pool and target features from the gradient store: same answer as in memory."""

import numpy as np
import pytest
from select_fixtures import digits_pool

from leanml.select import MatrixFeatures, Pool, SelectionError, StoreFeatures, StoreTaskFeatures, Target, get_selector
from leanml.select.features import Featurizer

store_mod = pytest.importorskip("leanml.store")


def test_less_from_store_matches_in_memory_and_second_task_reuses_pool_rows(tmp_path):
    pool = digits_pool(epochs=3)
    less = get_selector("less", seed=0, warmup_fraction=0.1, warmup_epochs=2, dim=64)
    w = less._warm(pool)
    fz = Featurizer(pool.learner, dim=64, seed=0, pair_grad_type="adam")  # LESS: SGD targets paired with an Adam pool
    pf = fz.features(w["model"], w["checkpoints"], pool.X, pool.y, kind="adam")
    tX, ty = pool.holdout.X[:12], pool.holdout.y[:12]
    tf = fz.features(w["model"], w["checkpoints"], tX, ty, kind="sgd")

    ids = pool.ids + 5000  # store ids need not be row numbers
    st = store_mod.GradientStore.create(tmp_path / "s", dim=64, spec={"projection": "test"}, model=pf.fingerprint,
                                        grad_type="adam", checkpoints=[(f"c{i}", float(x)) for i, x in
                                                                       enumerate(pf.checkpoint_weights)])
    order = np.random.default_rng(0).permutation(len(ids))  # stored in another order than the pool's
    for c in range(pf.n_checkpoints):
        st.append(ids[order], pf.rows(c)[order], checkpoint=f"c{c}")
    st.add_task("digits-val", [tf.rows(c) for c in range(tf.n_checkpoints)])

    mem = get_selector("less").select(Pool(pool.X, pool.y, features=pf), 0.1, target=Target(tX, ty, features=tf))
    sp = Pool(pool.X, pool.y, ids=ids, features=StoreFeatures(tmp_path / "s", ids))
    got = get_selector("less").select(sp, 0.1, target=Target(tX, ty, features=StoreTaskFeatures(tmp_path / "s",
                                                                                                "digits-val")))
    assert np.array_equal(np.sort(mem.indices), np.sort(got.indices))

    missing = StoreFeatures(tmp_path / "s", np.r_[ids, 99])
    with pytest.raises(SelectionError, match="lacks 1 pool ids"):
        missing.rows(0)
    with pytest.raises(SelectionError, match="different models"):
        get_selector("less").select(sp, 0.1, target=Target(tX, ty, features=MatrixFeatures(
            [tf.rows(c) for c in range(tf.n_checkpoints)], fp="another-model")))


def test_featurizer_uses_the_learners_smaller_grad_chunk_and_gives_the_same_features():
    pool = digits_pool(epochs=3)
    less = get_selector("less", seed=0, warmup_fraction=0.1, warmup_epochs=1, dim=32)
    w = less._warm(pool)
    X, y = pool.X[:50], pool.y[:50]
    whole = Featurizer(pool.learner, dim=32, seed=0).features(w["model"], w["checkpoints"][:1], X, y)

    class Small(type(pool.learner)):
        grad_chunk = 7

        def grad_batch(self, Xc, yc=None):
            sizes.append(len(Xc))
            return super().grad_batch(Xc, yc)

    sizes: list[int] = []
    small = Small.__new__(Small)
    small.__dict__.update(pool.learner.__dict__)
    got = Featurizer(small, dim=32, seed=0).features(w["model"], w["checkpoints"][:1], X, y)
    assert sizes == [7] * 7 + [1]
    np.testing.assert_allclose(got.rows(0), whole.rows(0), rtol=1e-4, atol=1e-6)
