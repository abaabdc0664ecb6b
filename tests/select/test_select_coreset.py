"""CRAIG and GRAD-MATCH on data where the answer is known."""

import numpy as np
from select_fixtures import digits_pool

from leanml.select import get_selector
from leanml.select.coreset import facility_location, gradient_features, omp_nnls


def test_craig_weighted_gradient_is_closer_to_full_than_random():
    """CRAIG's claim: the weighted subset gradient approximates the full gradient."""
    pool = digits_pool(epochs=3)
    F = gradient_features(pool, seed=0, warmup_epochs=3)  # last-layer gradients under the same warm-up
    full = F.sum(0)
    for budget in (0.05, 0.1):
        sel = get_selector("craig", seed=0, warmup_epochs=3).select(pool, budget)
        assert sel.weights.sum() == len(pool)  # every point is covered by exactly one chosen point
        craig_err = np.linalg.norm((F[sel.indices] * sel.weights[:, None]).sum(0) - full)
        rnd = []
        for s in range(20):
            idx = np.random.default_rng(s).choice(len(pool), size=len(sel), replace=False)
            rnd.append(np.linalg.norm(F[idx].sum(0) * len(pool) / len(idx) - full))
        assert craig_err < np.median(rnd), (budget, craig_err, np.median(rnd))


def test_facility_location_picks_cluster_centres_and_weights_are_cluster_sizes():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], float)
    sizes = [50, 30, 20]
    X = np.concatenate([c + 0.1 * rng.standard_normal((n, 2)) for c, n in zip(centres, sizes, strict=True)])
    sel, w = facility_location(X, 3)
    got = sorted(zip(np.argmin(((X[sel][:, None] - centres[None]) ** 2).sum(-1), 1), w, strict=True))
    assert [int(c) for c, _ in got] == [0, 1, 2]
    assert [int(x) for _, x in got] == sizes


def test_omp_nnls_matches_target_within_tolerance():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((200, 30))
    true = np.zeros(200)
    true[rng.choice(200, 12, replace=False)] = rng.uniform(0.5, 2.0, 12)
    b = true @ A  # reachable with non-negative weights
    tol = 1e-3
    rows, w, rel = omp_nnls(A, b, k=60, lam=0.0, tol=tol)
    assert rel <= tol
    assert (w >= 0).all()
    assert np.linalg.norm(w @ A[rows] - b) <= tol * np.linalg.norm(b) + 1e-9


def test_grad_match_on_digits_reduces_residual_with_budget():
    pool = digits_pool(epochs=3)
    res = []
    for budget in (0.02, 0.1):
        sel = get_selector("grad-match", seed=0, warmup_epochs=3, lam=0.0).select(pool, budget)
        assert len(sel) == round(budget * len(pool)) and (sel.weights > 0).all()
        res.append(np.mean(list(sel.info["relative_residual"].values())))
    assert res[1] < res[0] and res[1] < 0.2, res
