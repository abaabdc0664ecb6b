"""Shared small fixtures for the selection tests (digits, tiny MLPs, synthetic data)."""

from __future__ import annotations

import numpy as np
import torch

from leanml.data import load
from leanml.models import build_mlp
from leanml.select import Pool, TorchClassifierLearner, TrainConfig

# Tiny models: one intra-op thread is fastest, and on a shared CPU more threads spin against each other.
torch.set_num_threads(1)


def mlp_learner(d_in: int = 64, n_classes: int = 10, hidden=(64,), epochs: int = 15, lr: float = 3e-3,
                batch_size: int = 64) -> TorchClassifierLearner:
    return TorchClassifierLearner(lambda s: build_mlp(d_in, n_classes, hidden, seed=s), n_classes,
                           TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size),
                           proxy_factory=lambda s: build_mlp(d_in, n_classes, (16,), seed=s))


def digits_split(seed: int = 0, holdout: int = 300):
    """Digits train split cut into (pool rows X, y) and (holdout X, y)."""
    tr = load("digits", "train")
    perm = np.random.default_rng(seed).permutation(len(tr))
    h, p = perm[:holdout], perm[holdout:]
    return tr.X[p], tr.y[p], tr.X[h], tr.y[h]


def digits_pool(**kw) -> Pool:
    X, y, Xh, yh = digits_split()
    L = mlp_learner(**kw)
    return Pool(X, y, learner=L, holdout=Pool(Xh, yh, learner=L, name="holdout"), name="digits")
