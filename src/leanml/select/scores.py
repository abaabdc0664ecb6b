"""Score-based selection under a briefly trained model: loss, EL2N, and uncertainty.

- ``loss``: keep the highest training losses under a warm-up model.
- ``el2n`` (Paul et al., 2021): keep the highest EL2N score, ||softmax(f(x)) - onehot(y)||_2,
  averaged over ``n_models`` independently initialised warm-ups early in training. It bounds
  the per-example gradient norm up to the last-layer input norm.
- ``least-confidence``, ``margin``, ``entropy``: keep the most uncertain predictions, scored by
  the warm-up model or, with ``proxy=True``, by a small proxy model the learner provides, trained
  briefly (selection via proxy, Coleman et al., 2020). Labels are not used to score.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from leanml.meter import stage
from leanml.select.base import Pool, ScoreSelector, SelectionError, Target, check_finite, register
from leanml.select.warmup import warm_up


class _WarmupScore(ScoreSelector):
    needs = ("learner", "labels")

    def __init__(self, *, seed: int = 0, warmup_epochs: int = 3, n_models: int = 1) -> None:
        super().__init__(seed=seed)
        if warmup_epochs < 1 or n_models < 1:
            raise SelectionError(f"{self.method}: warmup_epochs and n_models must be >= 1")
        self.warmup_epochs, self.n_models = int(warmup_epochs), int(n_models)

    def scores(self, pool: Pool, target: Target | None) -> np.ndarray:
        total = np.zeros(len(pool))
        for m in range(self.n_models):
            model, _, _ = warm_up(pool, epochs=self.warmup_epochs, seed=self.seed * 1000 + m)
            total += self.score_model(pool, model)
        return check_finite(self.method, total / self.n_models)

    def score_model(self, pool: Pool, model) -> np.ndarray:
        raise NotImplementedError


@register
class LossSelector(_WarmupScore):
    """Highest cross-entropy under a warm-up model."""

    method = "loss"

    def score_model(self, pool, model):
        with stage("infer"):
            return pool.learner.per_example_loss(model, pool.X, pool.y)


@register
class EL2NSelector(_WarmupScore):
    """Highest EL2N = ||softmax - onehot||_2, averaged over early-training models."""

    method = "el2n"

    def __init__(self, *, seed: int = 0, warmup_epochs: int = 3, n_models: int = 2) -> None:
        super().__init__(seed=seed, warmup_epochs=warmup_epochs, n_models=n_models)

    def score_model(self, pool, model):
        with stage("infer"):
            p = pool.learner.probs(model, pool.X)
        onehot = np.eye(p.shape[1])[pool.y]
        return np.linalg.norm(p - onehot, axis=1)


class _Uncertainty(ScoreSelector):
    needs = ("learner", "labels")
    rule: ClassVar[str] = ""

    def __init__(self, *, seed: int = 0, warmup_epochs: int = 3, proxy: bool = True) -> None:
        super().__init__(seed=seed)
        if warmup_epochs < 1:
            raise SelectionError(f"{self.method}: warmup_epochs must be >= 1")
        self.warmup_epochs, self.proxy = int(warmup_epochs), bool(proxy)

    def scores(self, pool: Pool, target: Target | None) -> np.ndarray:
        learner = pool.learner
        if self.proxy:
            learner = learner.proxy()
        model, _, _ = warm_up(pool, epochs=self.warmup_epochs, seed=self.seed, learner=learner)
        with stage("infer"):
            p = learner.probs(model, pool.X)
        return check_finite(self.method, uncertainty(p, self.rule))


def uncertainty(p: np.ndarray, rule: str) -> np.ndarray:
    """Uncertainty of each row of class probabilities; higher = less certain."""
    p = np.asarray(p, dtype=np.float64)
    if rule == "least-confidence":
        return 1.0 - p.max(1)
    if rule == "margin":
        top2 = np.sort(p, axis=1)[:, -2:]
        return -(top2[:, 1] - top2[:, 0])  # a small margin between the two best classes is uncertain
    if rule == "entropy":
        return -(p * np.log(np.clip(p, 1e-12, 1))).sum(1)
    raise ValueError(f"unknown uncertainty rule {rule!r}")


@register
class LeastConfidenceSelector(_Uncertainty):
    """Lowest top-class probability."""

    method = "least-confidence"
    rule = "least-confidence"


@register
class MarginSelector(_Uncertainty):
    """Smallest gap between the two most probable classes."""

    method = "margin"
    rule = "margin"


@register
class EntropySelector(_Uncertainty):
    """Highest predictive entropy."""

    method = "entropy"
    rule = "entropy"
