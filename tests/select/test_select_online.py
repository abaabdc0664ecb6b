"""DLIS and RHO-LOSS: unbiasedness, the variance-reduction switch, and RHO-LOSS under label noise."""

import numpy as np
import torch
from select_fixtures import digits_split, mlp_learner

from leanml.models import build_mlp
from leanml.select import Pool, get_selector
from leanml.select.online import dlis_sample, dlis_tau, gradnorm_bound, reducible_top


def test_dlis_weighted_estimate_is_unbiased():
    """Mean over many draws of (1/b) sum_j w_j g_j equals the presampled batch's mean gradient."""
    rng = np.random.default_rng(0)
    B, b, d = 48, 16, 5
    G = rng.standard_normal((B, d)) * rng.uniform(0.1, 5, (B, 1))  # very unequal gradient norms
    bounds = np.linalg.norm(G, axis=1) + 0.05
    draws = 20000
    est = np.empty((draws, d))
    for t in range(draws):
        idx, w = dlis_sample(bounds, b, rng)
        est[t] = (w[:, None] * G[idx]).mean(0)
    se = est.std(0) / np.sqrt(draws)
    assert np.all(np.abs(est.mean(0) - G.mean(0)) < 4 * se + 1e-12)
    # and importance sampling by the norm has lower variance than uniform sampling here
    uni = np.stack([G[rng.choice(B, b)].mean(0) for _ in range(4000)])
    assert est.var(0).sum() < uni.var(0).sum()


def test_dlis_unbiased_on_real_last_layer_gradients():
    X, y, _, _ = digits_split()
    L = mlp_learner()
    model = build_mlp(64, 10, (64,), seed=0)
    err, h = L.last_layer(model, X[:60], y[:60])
    G = np.concatenate([(err[:, :, None] * h[:, None, :]).reshape(60, -1), err], 1)  # exact last-layer grads
    bounds = gradnorm_bound(L, model, X[:60], y[:60])
    assert np.allclose(bounds, np.linalg.norm(G, axis=1), rtol=1e-5)  # the bound is this layer's exact norm
    rng = np.random.default_rng(1)
    est = np.mean([(w[:, None] * G[i]).mean(0) for i, w in (dlis_sample(bounds, 20, rng) for _ in range(6000))], 0)
    assert np.linalg.norm(est - G.mean(0)) < 0.05 * np.linalg.norm(G.mean(0))


def test_tau_is_one_for_uniform_and_grows_with_skew():
    assert abs(dlis_tau(np.ones(30)) - 1.0) < 1e-12
    assert dlis_tau(np.r_[np.ones(29), 100.0]) > 2.0


def test_dlis_hook_switches_on_importance_sampling_once_tau_exceeds_threshold():
    X, y, _, _ = digits_split()
    L = mlp_learner(epochs=10)
    pool = Pool(X, y, learner=L)
    assert get_selector("dlis").select(pool, 0.3).info["tau_th"] == 2.0  # default: (B + 3b) / 3b with B = 3b
    sel = get_selector("dlis", seed=0, a_tau=0.0, tau_th=1.5).select(pool, 0.3)  # a_tau=0: tau = last estimate
    plan, state = sel.online, sel.info["state"]
    assert plan.presample == 3 * L.config.batch_size
    model = L.new_model(0)
    L.fit(model, X, y)  # a trained model: most examples are easy, gradient norms are very unequal
    xb, yb = torch.as_tensor(X[:plan.presample]), torch.as_tensor(y[:plan.presample])
    idx = np.arange(plan.presample)
    _, _, w1 = plan.hook(model, xb, yb, idx)
    assert len(w1) == plan.batch_size and torch.all(w1 == 1)  # tau starts at 0: a uniform step
    assert state["tau"] > sel.info["tau_th"]
    _, _, w2 = plan.hook(model, xb, yb, idx)
    assert state["is_steps"] == 1 and len(w2) == plan.batch_size and w2.std() > 0  # importance-sampled
    assert plan.hook_cost().wall_s > 0


def test_reducible_top_prefers_learnable_over_noisy():
    train = np.array([3.0, 3.0, 0.1, 2.0])
    irred = np.array([2.9, 0.2, 0.1, 0.5])  # row 0: noisy (high irreducible); row 1: learnable
    assert reducible_top(train, irred, 2).tolist() == [1, 3]


def _noisy_digits(rate=0.2, seed=0):
    X, y, Xh, yh = digits_split()
    rng = np.random.default_rng(seed)
    noisy = rng.random(len(y)) < rate
    y_noisy = y.copy()
    y_noisy[noisy] = (y[noisy] + rng.integers(1, 10, noisy.sum())) % 10  # always a wrong label
    return X, y_noisy, noisy, Xh, yh


def test_rho_loss_avoids_noisy_labels_while_loss_selection_seeks_them():
    """RHO-LOSS paper's prediction: high-loss selection picks noisy labels, reducible loss does not."""
    X, yn, noisy, Xh, yh = _noisy_digits()
    base = noisy.mean()
    L = mlp_learner(epochs=12)
    pool = Pool(X, yn, learner=L, holdout=Pool(Xh, yh, learner=L))
    sel = get_selector("rho-loss", seed=0, il_epochs=20).select(pool, 0.1)
    picked: list[np.ndarray] = []

    def spy(model, xb, yb, idx):
        out = sel.online.hook(model, xb, yb, idx)
        picked.append(sel.info["state"]["last_rows"])
        assert np.array_equal(out[1].numpy(), yn[picked[-1]])  # the rows trained on are the rows reported
        return out

    L.fit(L.new_model(0), X, yn, epochs=6, batch_size=sel.online.presample, batch_hook=spy)
    rho_noisy = noisy[np.concatenate(picked)].mean()
    loss_sel = get_selector("loss", seed=0, warmup_epochs=6).select(pool, 0.1)
    loss_noisy = noisy[loss_sel.indices].mean()
    rnd_noisy = noisy[get_selector("random", seed=0).select(pool, 0.1).indices].mean()
    assert rho_noisy < 0.6 * base, (rho_noisy, base)
    assert loss_noisy > 1.5 * base, (loss_noisy, base)
    assert rho_noisy < rnd_noisy < loss_noisy
