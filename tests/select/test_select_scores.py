"""Uncertainty sampling picks points near the decision boundary; loss/EL2N score sanely."""

import numpy as np
import pytest
from select_fixtures import digits_pool, mlp_learner

from leanml.select import Pool, get_selector
from leanml.select.scores import uncertainty


def _two_blobs(n=600, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.standard_normal((n, 2)).astype(np.float32)
    X[:, 0] += np.where(y == 1, 1.5, -1.5)  # Bayes boundary: x0 = 0
    return X, y


@pytest.mark.parametrize("method", ["least-confidence", "margin", "entropy"])
@pytest.mark.parametrize("proxy", [True, False])
def test_uncertainty_picks_points_near_the_boundary(method, proxy):
    X, y = _two_blobs()
    pool = Pool(X, y, learner=mlp_learner(2, 2, hidden=(32,), epochs=10, lr=1e-2))
    sel = get_selector(method, seed=0, warmup_epochs=10, proxy=proxy).select(pool, 0.1)
    near = np.abs(X[sel.indices, 0]).mean()
    rnd = np.abs(X[:, 0]).mean()
    assert near < 0.35 * rnd, (near, rnd)


def test_uncertainty_rules_on_known_probabilities():
    p = np.array([[0.98, 0.01, 0.01], [0.4, 0.35, 0.25], [0.5, 0.5, 0.0]])
    assert np.argmax(uncertainty(p, "least-confidence")) == 1  # lowest top-class probability
    assert np.argmax(uncertainty(p, "margin")) == 2  # tie between the top two classes
    assert np.argmax(uncertainty(p, "entropy")) == 1  # mass spread over three classes
    assert np.argmin(uncertainty(p, "entropy")) == 0


def test_loss_and_el2n_rank_mislabelled_examples_first():
    pool = digits_pool(epochs=5)
    rng = np.random.default_rng(0)
    flip = rng.choice(len(pool), 40, replace=False)
    pool.y = pool.y.copy()
    pool.y[flip] = (pool.y[flip] + 5) % 10
    for m in ("loss", "el2n"):
        sel = get_selector(m, seed=0, warmup_epochs=5).select(pool, 40)
        assert len(np.intersect1d(sel.indices, flip)) >= 20, m  # base rate would be ~1.6
