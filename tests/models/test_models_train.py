"""The metered training loop: learning-rate schedules and the checkpoints LESS weights by their rate."""

import math

import numpy as np
import pytest
import torch

from leanml.models import build_mlp, fit


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 8)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(np.int64)


def test_cosine_schedule_decays_to_zero_and_checkpoints_carry_epoch_mean_rate():
    X, y = _data()
    seen = []

    def hook(model, xb, yb, idx):  # called once per step, before the optimizer step
        seen.append(None)
        return xb, yb, torch.ones(len(yb))
    model = build_mlp(8, 2, (8,), seed=0)
    res = fit(model, X, y, epochs=3, batch_size=32, lr=0.1, schedule="cosine", keep_checkpoints=True,
              batch_hook=hook)
    total = 3 * 3
    rates = [0.05 * (1 + math.cos(math.pi * s / total)) for s in range(total)]
    assert len(seen) == total
    got = [c["lr"] for c in res.checkpoints]
    np.testing.assert_allclose(got, [np.mean(rates[e * 3:(e + 1) * 3]) for e in range(3)], rtol=1e-9)
    assert got[0] > got[1] > got[2] > 0  # decays; LESS weights later checkpoints less
    assert res.checkpoints[-1]["optimizer"]["param_groups"][0]["lr"] == pytest.approx(rates[-1])


def test_constant_schedule_is_the_default_and_bad_schedule_is_refused():
    X, y = _data()
    res = fit(build_mlp(8, 2, (8,), seed=0), X, y, epochs=2, batch_size=32, lr=0.01, keep_checkpoints=True)
    assert [c["lr"] for c in res.checkpoints] == [0.01, 0.01]
    with pytest.raises(ValueError, match="schedule"):
        fit(build_mlp(8, 2, (8,)), X, y, epochs=1, schedule="linear-warmup")


def test_cosine_training_still_learns():
    X, y = _data(400, seed=1)
    model = build_mlp(8, 2, (16,), seed=0)
    fit(model, X, y, epochs=20, batch_size=32, lr=0.01, schedule="cosine")
    with torch.no_grad():
        acc = (model(torch.as_tensor(X)).argmax(1).numpy() == y).mean()
    assert acc > 0.9


def test_max_steps_stops_early_and_the_schedule_spans_the_steps():
    X, y = _data(96)
    res = fit(build_mlp(8, 2, (8,), seed=0), X, y, epochs=5, batch_size=32, lr=0.1, schedule="cosine",
              max_steps=4, keep_checkpoints=True)
    assert res.steps == 4 and res.examples == 4 * 32
    assert len(res.checkpoints) == 2  # epoch 1 (3 steps) and the partial epoch 2 (1 step)
    assert res.checkpoints[1]["lr"] == pytest.approx(0.05 * (1 + math.cos(math.pi * 3 / 4)))
    with pytest.raises(ValueError, match="max_steps"):
        fit(build_mlp(8, 2, (8,)), X, y, epochs=1, max_steps=0)


def test_drop_last_skips_the_short_batch_so_every_step_is_full():
    X, y = _data(100)  # 3 full batches of 32 and a short one of 4
    seen: list[int] = []

    def hook(model, xb, yb, idx):
        seen.append(len(idx))
        return xb, yb, torch.ones(len(yb))

    res = fit(build_mlp(8, 2, (8,), seed=0), X, y, epochs=2, batch_size=32, batch_hook=hook, drop_last=True)
    assert seen == [32] * 6 and res.steps == 6 and res.examples == 6 * 32
    seen.clear()
    fit(build_mlp(8, 2, (8,), seed=0), X, y, epochs=1, batch_size=32, batch_hook=hook)
    assert seen == [32, 32, 32, 4]
    seen.clear()  # fewer rows than one batch: nothing to drop, one short step per epoch
    fit(build_mlp(8, 2, (8,), seed=0), X[:10], y[:10], epochs=2, batch_size=32, batch_hook=hook, drop_last=True)
    assert seen == [10, 10]
