"""Batched per-example gradients and their projections equal a naive batch-1 reference loop."""

import numpy as np
import pytest
import torch

from leanml.data import load
from leanml.grads import AdamState, ClassificationLoss, GradientComputer
from leanml.models import build_cnn, build_mlp, fit

# fp32 throughout; batched einsum/vmap vs per-example backward differ only by summation order.
RTOL, ATOL = 1e-4, 1e-5


def naive_grads(model, X, y, names):
    """Reference: one backward per example (what LESS does), full flattened gradient."""
    pm = dict(model.named_parameters())
    out = []
    model.eval()
    for i in range(len(X)):
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(X[i : i + 1]), y[i : i + 1])
        g = torch.autograd.grad(loss, [pm[n] for n in names])
        out.append(torch.cat([t.reshape(-1) for t in g]))
    return torch.stack(out)


@pytest.fixture(scope="module")
def digits():
    s = load("digits", "train")
    return torch.as_tensor(s.X[:24], dtype=torch.float32), torch.as_tensor(s.y[:24])


@pytest.mark.parametrize("backend", ["hooks", "vmap"])
def test_dense_features_match_naive_loop_mlp(digits, backend):
    X, y = digits
    model = build_mlp(X.shape[1], 10, hidden=(32,))
    gc = GradientComputer(model, ClassificationLoss(), projector="dense", dim=64, seed=3, backend=backend)
    ref = naive_grads(model, X, y, gc.names)
    got_g = torch.cat(gc.per_example_grads({"x": X, "y": y}), dim=1)
    torch.testing.assert_close(got_g, ref, rtol=RTOL, atol=ATOL)
    feats = gc.features({"x": X, "y": y})
    P = torch.cat([gc.projector.block(b) for b in range(-(-gc.grad_dim // gc.projector.block_rows))])
    torch.testing.assert_close(feats, ref @ P, rtol=RTOL, atol=ATOL)


def test_vmap_cnn_matches_naive_loop():
    torch.manual_seed(0)
    X = torch.rand(6, 3, 32, 32)
    y = torch.randint(0, 10, (6,))
    model = build_cnn(width=4)
    gc = GradientComputer(model, ClassificationLoss(), projector="dense", dim=32)
    assert gc.backend == "vmap"
    ref = naive_grads(model, X, y, gc.names)
    torch.testing.assert_close(torch.cat(gc.per_example_grads({"x": X, "y": y}), 1), ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("dim", [200, 10_000])  # with and without the second (dense) stage
def test_factorized_matches_projected_naive_gradient(digits, dim):
    X, y = digits
    model = build_mlp(X.shape[1], 10, hidden=(32,))
    gc = GradientComputer(model, ClassificationLoss(), projector="factorized", dim=dim, seed=1)
    ref = naive_grads(model, X, y, gc.names)
    # Rebuild each layer's full gradient from the reference and project it with P_out^T G P_in.
    expected, off = [], 0
    pm = dict(model.named_parameters())
    cols = []
    for name, (d_in, d_out, has_b) in gc.projector.layers.items():
        gw = ref[:, off : off + d_in * d_out].reshape(-1, d_out, d_in)
        off += d_in * d_out
        gb = None
        if has_b:
            gb = ref[:, off : off + d_out]
            off += d_out
        cols.append(torch.stack([gc.projector.reference(name, gw[i], None if gb is None else gb[i])
                                 for i in range(len(X))]))
    assert off == sum(pm[n].numel() for n in gc.names)
    expected = torch.cat(cols, 1)
    assert (gc.projector.second is None) == (dim == 10_000)
    if gc.projector.second is not None:
        expected = gc.projector.second.project(expected)
    got = gc.features({"x": X, "y": y})
    assert got.shape == (len(X), gc.dim)
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)


def test_sign_and_adam_types_follow_less(digits):
    X, y = digits
    model = build_mlp(X.shape[1], 10, hidden=(16,))
    res = fit(model, X.numpy(), y.numpy(), epochs=1, batch_size=8, keep_checkpoints=True)
    adam = AdamState.from_optimizer(model, res.checkpoints[-1]["optimizer"])
    gc = GradientComputer(model, ClassificationLoss(), dim=48, grad_type="adam", adam_state=adam, seed=5)
    ref = naive_grads(model, X, y, gc.names)
    m = torch.cat([adam.m[n] for n in gc.names])
    v = torch.cat([adam.v[n] for n in gc.names])
    m2 = 0.9 * m + 0.1 * ref
    v2 = 0.999 * v + 0.001 * ref**2
    want = (m2 / torch.sqrt(v2 + 1e-8)) @ torch.cat([gc.projector.block(b) for b in range(-(-gc.grad_dim // 8192))])
    torch.testing.assert_close(gc.features({"x": X, "y": y}), want, rtol=1e-4, atol=1e-4)
    gs = GradientComputer(model, ClassificationLoss(), dim=48, grad_type="sign", seed=5)
    P = gs.projector.block(0)
    torch.testing.assert_close(gs.features({"x": X, "y": y}), torch.sign(ref) @ P, rtol=RTOL, atol=1e-4)


def test_bad_configs_are_refused(digits):
    model = build_mlp(64, 10)
    with pytest.raises(ValueError, match="factorized"):
        GradientComputer(model, ClassificationLoss(), projector="factorized", grad_type="sign")
    with pytest.raises(ValueError, match="adam_state"):
        GradientComputer(model, ClassificationLoss(), grad_type="adam")
    with pytest.raises(ValueError, match="no module named"):
        GradientComputer(model, ClassificationLoss(), params=["nope"])
    with pytest.raises(ValueError, match="factorized"):
        GradientComputer(build_cnn(width=4), ClassificationLoss(), projector="factorized")


def test_named_module_subset(digits):
    X, y = digits
    model = build_mlp(64, 10, hidden=(16,))
    gc = GradientComputer(model, ClassificationLoss(), params=["2"], dim=16)
    assert gc.names == ["2.weight", "2.bias"]
    np.testing.assert_allclose(gc.per_example_grads({"x": X, "y": y})[0].numpy(),
                               naive_grads(model, X, y, gc.names)[:, : 16 * 10].numpy(), rtol=1e-4, atol=1e-5)
