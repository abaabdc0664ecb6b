"""Dense and sparse projections: seeded, reproducible, and within Johnson-Lindenstrauss bounds."""

import math

import numpy as np
import pytest
import torch

from leanml.grads import DenseProjector, FactorizedProjector, SparseProjector


@pytest.mark.parametrize("kind", ["gaussian", "rademacher", "sparse"])
def test_inner_products_within_jl_bound(kind):
    # n points, k dims: with probability >= 1 - delta every pairwise inner product error is at most
    # eps * |x| |y| for eps = sqrt(8 ln(n^2 / delta) / k) (JL for inner products via the polarization identity).
    n, D, k, delta = 40, 3000, 1024, 0.01
    rng = np.random.default_rng(0)
    base = rng.standard_normal((5, D))
    X = torch.as_tensor(rng.standard_normal((n, 5)) @ base + 0.5 * rng.standard_normal((n, D)), dtype=torch.float32)
    P = SparseProjector(D, k, seed=11) if kind == "sparse" else DenseProjector(D, k, kind=kind, seed=11, block_rows=700)
    Y = P.project(X)
    G, H = X.double() @ X.double().T, Y.double() @ Y.double().T
    norms = X.double().norm(dim=1)
    err = (H - G).abs() / torch.outer(norms, norms)
    eps = math.sqrt(8 * math.log(n * n / delta) / k)
    assert err.max().item() <= eps
    # and the typical error matches the JL variance (1 + cos^2)/k within a factor 1.5
    cos = G / torch.outer(norms, norms)
    iu = torch.triu_indices(n, n, 1)
    pred = torch.sqrt(((1 + cos[iu[0], iu[1]] ** 2) / k).mean())
    assert 0.67 < (err[iu[0], iu[1]].pow(2).mean().sqrt() / pred).item() < 1.5


def test_same_seed_same_matrix_any_block_order_and_segments():
    D, k = 5000, 64
    a = DenseProjector(D, k, seed=3, block_rows=1000)
    b = DenseProjector(D, k, seed=3, block_rows=1000, cache_bytes=1 << 30)
    x = torch.randn(4, D)
    torch.testing.assert_close(a.project(x), b.project(x), rtol=0, atol=0)
    torch.testing.assert_close(b.project(x), a.project(x), rtol=0, atol=0)  # cached path
    assert torch.equal(a.block(3), DenseProjector(D, k, seed=3, block_rows=1000).block(3))  # no state between blocks
    segs = [x[:, :123], x[:, 123:4100], x[:, 4100:]]
    torch.testing.assert_close(a.project_segments(segs), a.project(x), rtol=1e-5, atol=1e-5)
    assert not torch.equal(a.block(0), DenseProjector(D, k, seed=4, block_rows=1000).block(0))
    r = DenseProjector(D, k, kind="rademacher", seed=0).block(0)
    assert set(torch.unique(r * math.sqrt(k)).tolist()) == {-1.0, 1.0}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cpu_and_gpu_give_identical_matrices():
    p = DenseProjector(3000, 128, kind="gaussian", seed=7, block_rows=1000)
    for b in range(3):
        assert torch.equal(p.block(b, "cpu"), p.block(b, "cuda").cpu())
    f = FactorizedProjector({"l": (300, 200, False)}, dim=400, seed=2)
    assert torch.equal(f.matrix("l", "in", "cpu"), f.matrix("l", "in", "cuda").cpu())
    s, x = SparseProjector(3000, 128, seed=7), torch.randn(4, 3000)
    torch.testing.assert_close(s.project(x.cuda()).cpu(), s.project(x), rtol=1e-6, atol=1e-6)


def test_factorized_dims_and_errors():
    f = FactorizedProjector({"a": (384, 8, False), "b": (8, 384, True)}, dim=4096, seed=0)
    assert f.dims["a"] == (128, 8)  # the rank side (8) is never widened: identity there
    assert f.dims["b"] == (8, 128)
    assert f.dim == f.inner_dim == 128 * 8 + 8 * 128 + 128 and f.second is None
    assert f.matrix("a", "out") is None and f.matrix("b", "in") is None
    g = FactorizedProjector({"a": (384, 8, False), "b": (8, 384, True)}, dim=100, seed=0)
    assert g.dim == 100 and isinstance(g.second, SparseProjector) and g.second.grad_dim == g.inner_dim
    assert g.spec()["second"]["type"] == "sparse"
    h = FactorizedProjector({"a": (384, 8, False), "b": (8, 384, True)}, dim=100, seed=0, second="dense")
    assert isinstance(h.second, DenseProjector) and h.spec() != g.spec()  # a store tells the two apart
    with pytest.raises(ValueError, match="kind"):
        FactorizedProjector({"a": (4, 4, False)}, dim=4, kind="sparse")
    with pytest.raises(ValueError, match="second"):
        FactorizedProjector({"a": (4, 4, False)}, dim=4, second="countsketch")
    with pytest.raises(ValueError, match="expected"):
        DenseProjector(10, 4).project(torch.zeros(2, 11))


def test_sparse_projector_is_seeded_unbiased_and_sparse():
    D, k = 2000, 256
    a, b = SparseProjector(D, k, seed=3, nnz=4), SparseProjector(D, k, seed=3, nnz=4)
    x = torch.randn(3, D)
    assert torch.equal(a.project(x), b.project(x))
    assert not torch.equal(a.project(x), SparseProjector(D, k, seed=4).project(x))
    e = torch.zeros(1, D)
    e[0, 17] = 1.0  # one coordinate lands in exactly nnz buckets, one per block, with weight 1/sqrt(nnz)
    col = a.project(e)[0]
    assert (col != 0).sum().item() == 4 and torch.allclose(col.abs()[col != 0], torch.full((4,), 0.5))
    torch.testing.assert_close(a.project_segments([x[:, :700], x[:, 700:]]), a.project(x))
    # E<Sx, Sy> = <x, y>: the mean over 300 seeds is within 4 standard errors of the truth
    y = torch.randn(1, D)
    est = torch.tensor([(SparseProjector(D, k, seed=s).project(x[:1]) @ SparseProjector(D, k, seed=s).project(y).T)
                        .item() for s in range(300)])
    truth = (x[:1] @ y.T).item()
    assert abs(est.mean().item() - truth) <= 4 * est.std().item() / math.sqrt(300)
    with pytest.raises(ValueError, match="nnz"):
        SparseProjector(10, 4, nnz=5)
    with pytest.raises(ValueError, match="expected"):
        a.project(torch.zeros(2, D + 1))


def test_auto_projector_rule_is_the_one_default():
    """``projector="auto"`` (the default everywhere): factorized for Linear-only sgd features, dense when any
    side needs the full gradient (adam/sign, or SGD targets paired with an Adam pool) or a layer is not Linear."""
    from leanml.grads import ClassificationLoss, GradientComputer, defaults
    from leanml.grads.gradtypes import AdamState
    from leanml.models import build_cnn, build_mlp

    mlp = build_mlp(8, 3, hidden=(6,), seed=0)
    gc = GradientComputer(mlp, ClassificationLoss())
    assert isinstance(gc.projector, FactorizedProjector)
    assert gc.dim == 8 * 6 + 6 + 6 * 3 + 3 < defaults.PROJECTION_DIM  # narrow layers: exact coordinates
    assert isinstance(GradientComputer(mlp, ClassificationLoss(), pair_grad_type="adam").projector, DenseProjector)
    assert isinstance(GradientComputer(mlp, ClassificationLoss(), grad_type="sign").projector, DenseProjector)
    adam = AdamState({n: torch.zeros(p.numel()) for n, p in mlp.named_parameters()},
                     {n: torch.ones(p.numel()) for n, p in mlp.named_parameters()})
    assert isinstance(GradientComputer(mlp, ClassificationLoss(), grad_type="adam", adam_state=adam).projector,
                      DenseProjector)
    assert isinstance(GradientComputer(build_cnn(width=4), ClassificationLoss()).projector, DenseProjector)
    with pytest.raises(ValueError, match="projector must be one of"):
        defaults.resolve_projector("sparse", linear_only=True, grad_types=["sgd"])
