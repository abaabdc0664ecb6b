"""LDS on constructed cases whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from leanml.grads.lds import lds, retrain_outputs, subset_masks


def _case(n_train=200, n_targets=30, n_subsets=60, seed=0):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(n_targets, n_train))
    masks = subset_masks(n_train, n_subsets, 0.5, seed=seed)
    return theta, masks


def test_subset_masks_half_and_seeded():
    m = subset_masks(101, 50, 0.5, seed=3)
    assert m.shape == (50, 101) and m.dtype == bool
    assert (m.sum(1) == 50).all()  # round(50.5) = 50 (banker's rounding of Python's round)
    assert np.array_equal(m, subset_masks(101, 50, 0.5, seed=3))
    assert not np.array_equal(m, subset_masks(101, 50, 0.5, seed=4))
    assert 0.4 < m.mean(0).mean() < 0.6 and len({r.tobytes() for r in m}) == 50


def test_exact_linear_datamodel_scores_one_and_its_negation_minus_one():
    theta, masks = _case()
    # the retraining driver: a "model" whose output on target t is exactly the sum of the included
    # examples' contributions plus a constant, so the linear datamodel theta is exact
    outputs = retrain_outputs(masks, lambda idx: theta[:, idx].sum(1) + 5.0)
    assert outputs.shape == (60, 30)
    assert lds(theta, masks, outputs).mean == pytest.approx(1.0)
    assert lds(-theta, masks, outputs).mean == pytest.approx(-1.0)
    # Spearman is rank-based: a monotone distortion of the outputs changes nothing
    assert lds(theta, masks, np.exp(outputs / 10)).mean == pytest.approx(1.0)
    # scaling each target's attributions (a per-target constant) changes nothing either
    assert lds(theta * np.arange(1, 31)[:, None], masks, outputs).mean == pytest.approx(1.0)


def test_noisy_datamodel_matches_the_gaussian_rank_correlation():
    # outputs = subset sums + independent noise with the same variance: Pearson rho = 1/sqrt(2) and,
    # for (approximately, by the CLT) bivariate normal pairs, Spearman = (6/pi) asin(rho/2) = 0.3343*...
    rng = np.random.default_rng(1)
    theta, masks = _case(n_train=400, n_targets=40, n_subsets=400, seed=1)
    clean = masks.astype(float) @ theta.T
    sd = clean.std(0, keepdims=True)
    noisy = clean + rng.normal(size=clean.shape) * sd
    expected = 6 / math.pi * math.asin((1 / math.sqrt(2)) / 2)
    res = lds(theta, masks, noisy)
    assert res.mean == pytest.approx(expected, abs=0.03)
    assert res.ci95[0] < expected < res.ci95[1] or abs(res.mean - expected) < 0.01


def test_per_example_values_equal_scipy_spearman():
    theta, masks = _case(n_targets=5, n_subsets=20, seed=2)
    rng = np.random.default_rng(2)
    outputs = rng.normal(size=(20, 5))
    res = lds(theta, masks, outputs)
    pred = masks.astype(float) @ theta.T
    for t in range(5):
        assert res.per_example[t] == pytest.approx(spearmanr(pred[:, t], outputs[:, t]).statistic)
    assert res.mean == pytest.approx(res.per_example.mean())


def test_random_attributions_score_near_zero_and_interval_covers_it():
    theta, masks = _case(n_targets=80, n_subsets=60, seed=4)
    outputs = masks.astype(float) @ theta.T
    res = [lds(np.random.default_rng(100 + s).normal(size=theta.shape), masks, outputs, n_boot=500)
           for s in range(20)]
    assert all(abs(r.mean) < 0.06 for r in res)
    covered = sum(r.ci95[0] < 0 < r.ci95[1] for r in res)
    assert covered >= 15  # a 95% interval: about 19 of 20 (binomial: >= 15 with probability > 0.999)


def test_constant_target_is_skipped_not_averaged_as_zero():
    theta, masks = _case(n_targets=3, seed=5)
    outputs = masks.astype(float) @ theta.T
    outputs[:, 1] = 2.0  # a held-out example whose output never moves
    res = lds(theta, masks, outputs)
    assert np.isnan(res.per_example[1]) and res.mean == pytest.approx(1.0)
    assert res.as_dict()["n_examples"] == 2


def test_bad_shapes_name_the_parameter():
    theta, masks = _case()
    outputs = masks.astype(float) @ theta.T
    with pytest.raises(ValueError, match="outputs must be"):
        lds(theta, masks, outputs.T)
    with pytest.raises(ValueError, match="attributions cover"):
        lds(theta[:, :10], masks, outputs)
    with pytest.raises(ValueError, match="fraction"):
        subset_masks(10, 5, 1.0)
    with pytest.raises(ValueError, match="subset 1 returned"):
        calls = iter([3, 4])
        retrain_outputs(masks[:2], lambda idx: np.zeros(next(calls)))
