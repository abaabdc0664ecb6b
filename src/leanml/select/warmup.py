"""Brief training runs that selectors need (warm-ups, proxies, irreducible-loss models)."""

from __future__ import annotations

from typing import Any

import numpy as np

from leanml.meter import stage
from leanml.select.base import Pool, SelectionError


def warm_up(pool: Pool, *, epochs: int, fraction: float = 1.0, seed: int = 0,
            keep_checkpoints: bool = False, learner: Any = None) -> tuple[Any, Any, np.ndarray]:
    """Train a fresh model of the pool's learner on a seeded random ``fraction`` of the pool.

    Returns (model, FitResult, rows trained on). The caller's Meter counts this time, as its
    stage "train" (`leanml.meter.stage`).
    """
    learner = learner or pool.learner
    if learner is None:
        raise SelectionError(f"pool '{pool.name}' has no learner to warm up")
    if not 0 < fraction <= 1:
        raise SelectionError(f"warm-up fraction must be in (0, 1], got {fraction}")
    if epochs < 1:
        raise SelectionError(f"warm-up epochs must be >= 1, got {epochs}")
    rng = np.random.default_rng(seed + 7919)
    n = len(pool)
    rows = np.arange(n) if fraction >= 1 else np.sort(rng.choice(n, size=max(2, int(round(fraction * n))),
                                                                   replace=False))
    X, y = pool.take(rows)
    with stage("train"):
        model = learner.new_model(seed)
        res = learner.fit(model, X, y, epochs=epochs, seed=seed, keep_checkpoints=keep_checkpoints)
    return model, res, rows
