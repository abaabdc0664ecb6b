"""The selection contract: budgets, registry, Selection validation, random baselines."""

import numpy as np
import pytest
from select_fixtures import digits_pool

from leanml.select import METHOD_IDS, Pool, Selection, SelectionError, Target, budget_to_k, get_selector, list_methods
from leanml.select.random import balanced_quotas, per_class_quotas


def test_every_method_id_is_registered():
    assert set(METHOD_IDS) <= set(list_methods())


def test_budget_to_k_fraction_and_count():
    assert budget_to_k(0.1, 1000) == 100
    assert budget_to_k(1.0, 7) == 7
    assert budget_to_k(0.0001, 10) == 1
    assert budget_to_k(25, 100) == 25
    for bad in (0.0, -0.5, 1000, 2.5, "0.1", True):
        with pytest.raises(SelectionError):
            budget_to_k(bad, 100)


def test_unknown_method_and_bad_params_are_clear():
    with pytest.raises(SelectionError, match="unknown method 'nope'.*known methods"):
        get_selector("nope")
    with pytest.raises(SelectionError, match="bad parameters"):
        get_selector("craig", bogus=1)
    with pytest.raises(SelectionError, match="ratio"):
        get_selector("rho-loss", ratio=0)


def test_selection_rejects_duplicates_and_mismatched_weights():
    with pytest.raises(SelectionError, match="duplicates"):
        Selection(np.array([1, 1]), None, None, None)
    with pytest.raises(SelectionError, match="weights"):
        Selection(np.array([1, 2]), np.ones(3), None, None)


def test_pool_and_target_validation():
    with pytest.raises(SelectionError, match="X has 3 rows but y has 2"):
        Pool(np.zeros((3, 2)), np.zeros(2))
    with pytest.raises(SelectionError, match="at least one example"):
        Target()
    with pytest.raises(SelectionError, match="target"):
        get_selector("less").select(Pool(np.zeros((3, 2)), np.zeros(3, dtype=int)), 1)


def test_random_and_balanced_and_full():
    y = np.array([0] * 80 + [1] * 15 + [2] * 5)
    pool = Pool(np.zeros((100, 1)), y)
    a = get_selector("random", seed=3).select(pool, 0.2)
    b = get_selector("random", seed=3).select(pool, 0.2)
    assert len(a) == 20 and np.array_equal(a.indices, b.indices)  # seeded
    assert a.cost.wall_s is not None and a.cost.wall_s >= 0  # metered
    bal = get_selector("random-balanced", seed=0).select(pool, 30)
    counts = np.bincount(y[bal.indices], minlength=3)
    assert counts.tolist() == [13, 12, 5]  # the 5-example class gives its surplus to the others
    assert len(get_selector("full").select(pool, 0.1)) == 100


def test_quotas_sum_to_k():
    y = np.random.default_rng(0).integers(0, 7, size=500)
    for k in (7, 50, 333, 500):
        assert sum(per_class_quotas(y, k).values()) == k
        assert sum(balanced_quotas(y, k).values()) == k


def test_score_cache_charges_every_budget_the_scoring_cost():
    pool = digits_pool(epochs=3)
    s = get_selector("loss", seed=0, warmup_epochs=1)
    a = s.select(pool, 0.05)
    b = s.select(pool, 0.2)
    assert b.cost.wall_s >= 0.5 * a.cost.wall_s  # cached scores still carry their cost
    assert set(a.indices) <= set(b.indices)  # same ranking, longer prefix
