"""EK-FAC preconditioning of factorized features against the explicit eigen-corrected Kronecker inverse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from leanml.grads import ClassificationLoss, GradientComputer
from leanml.grads.ekfac import EKFAC
from leanml.grads.factorized import FactorizedProjector


def _data(n, d_in, n_cls, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d_in, generator=g) * torch.linspace(0.5, 2.0, d_in)  # distinct input eigenvalues
    return {"x": X, "y": torch.randint(0, n_cls, (n,), generator=g)}


def _explicit(G_train, G_test, A, S, damping):
    """vec(G_test)^T (F + λI)^-1 vec(G_train) with F = (Q_S ⊗ Q_A) diag(Λ) (Q_S ⊗ Q_A)^T, built densely."""
    _, qa = np.linalg.eigh(A)
    _, qs = np.linalg.eigh(S)
    rot = np.einsum("oi,noj,jk->nik", qs, G_train, qa)  # Q_S^T G Q_A per example
    lam = (rot**2).mean(0)
    Q = np.kron(qs, qa)  # row-major vec: vec(Q_S M Q_A^T) = (Q_S ⊗ Q_A) vec(M)
    F = Q @ np.diag(lam.reshape(-1)) @ Q.T
    Finv = np.linalg.inv(F + damping * lam.mean() * np.eye(len(F)))
    return G_test.reshape(len(G_test), -1) @ Finv @ G_train.reshape(len(G_train), -1).T


@pytest.mark.parametrize("projected", [False, True])
def test_ekfac_inner_products_match_explicit_kronecker_inverse(projected):
    torch.manual_seed(0)
    d_in, n_cls = (6, 4) if not projected else (20, 8)
    model = nn.Sequential(nn.Linear(d_in, n_cls))
    layer_dim = 10_000 if not projected else 12  # identity sides, or k_out=3, k_in=4 projections
    proj = FactorizedProjector({"0": (d_in, n_cls, True)}, dim=10_000, layer_dim=layer_dim, seed=1)
    gc = GradientComputer(model, ClassificationLoss(), params="trainable", projector=proj)
    assert proj.second is None
    train, test = _data(200, d_in, n_cls, 1), _data(7, d_in, n_cls, 2)
    ek = EKFAC(gc, damping=0.05).fit([{k: v[:120] for k, v in train.items()}, {k: v[120:] for k, v in train.items()}])

    def aug_grads(batch):  # projected per-example [k_out, k_in + 1] (bias last) from exact full gradients
        gw, gb = gc.per_example_grads(batch)
        p_in, p_out = proj.matrix("0", "in"), proj.matrix("0", "out")
        W = gw.reshape(len(gw), n_cls, d_in)
        W = W if p_out is None else p_out.T @ W
        W = W if p_in is None else W @ p_in
        b = gb if p_out is None else gb @ p_out
        return torch.cat([W, b[:, :, None]], 2).double().numpy()

    x = train["x"] if proj.matrix("0", "in") is None else train["x"] @ proj.matrix("0", "in")
    xa = torch.cat([x, torch.ones(len(x), 1)], 1).double().numpy()
    Gtr, Gte = aug_grads(train), aug_grads(test)
    A = xa.T @ xa
    S = np.einsum("noi,npi->op", Gtr[:, :, -1:], Gtr[:, :, -1:])  # g g^T: the bias column is g itself
    want = _explicit(Gtr, Gte, A, S, 0.05)
    got = (gc.features(test).double() @ ek.features(train).double().T).numpy()
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-6 * np.abs(want).max())
    # and preconditioning is not the identity: plain inner products differ
    plain = (gc.features(test) @ gc.features(train).T).double().numpy()
    assert np.abs(plain / np.abs(plain).max() - want / np.abs(want).max()).max() > 0.05


def test_ekfac_through_the_second_stage_is_unbiased():
    # identity first stage (every side fits in layer_dim), sparse JL second stage to k = 64 of 293:
    # one seed's preconditioned inner products are noisy, their mean over seeds converges to the exact ones
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5))
    big = GradientComputer(model, ClassificationLoss(), params="trainable", projector="factorized", dim=100_000)
    assert big.projector.second is None
    train, test = _data(200, 12, 5, 3), _data(20, 12, 5, 4)
    exact = (big.features(test) @ EKFAC(big).fit([train]).features(train).T).numpy().ravel()
    runs = []
    for seed in range(12):
        small = GradientComputer(model, ClassificationLoss(), params="trainable", projector="factorized", dim=64,
                                 seed=seed)
        assert small.projector.second is not None
        runs.append((small.features(test) @ EKFAC(small).fit([train]).features(train).T).numpy().ravel())
    one = np.corrcoef(exact, runs[0])[0, 1]
    mean = np.corrcoef(exact, np.mean(runs, 0))[0, 1]
    assert mean > 0.6 and mean > one + 0.2


def test_ekfac_refuses_dense_projector_and_unfitted_use():
    model = nn.Sequential(nn.Linear(4, 3))
    dense = GradientComputer(model, ClassificationLoss(), projector="dense", dim=8)
    with pytest.raises(ValueError, match="factorized"):
        EKFAC(dense)
    fac = GradientComputer(model, ClassificationLoss(), projector="factorized", dim=8)
    with pytest.raises(ValueError, match="damping"):
        EKFAC(fac, damping=0)
    with pytest.raises(RuntimeError, match="fit"):
        EKFAC(fac).features(_data(3, 4, 3, 0))
