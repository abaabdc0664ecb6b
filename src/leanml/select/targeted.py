"""Targeted selection from gradient features: LESS, TRAK and DsDM.

Features come from ``pool.features``/``target.features`` when given (e.g. a gradient store), else
from a warm-up whose checkpoints and pool features are cached on the pool, so a second target task
pays only for its own gradients.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from leanml.meter import stage
from leanml.select.base import Pool, ScoreSelector, SelectionError, Target, check_finite, register
from leanml.select.features import (
    Featurizer,
    GradientFeatures,
    check_compatible,
    checkpoints_of,
    load_checkpoint,
    normalize_rows,
)
from leanml.select.warmup import warm_up


class _GradientTargeted(ScoreSelector):
    needs_target = True
    pool_kind = "sgd"      # LESS gradient type of the pool's features
    pool_output = "loss"   # function differentiated for the pool (TRAK: margin)
    target_output = "loss"

    def __init__(self, *, seed: int = 0, warmup_fraction: float = 0.05, warmup_epochs: int = 4,
                 dim: int = 512, params: str = "all") -> None:
        super().__init__(seed=seed)
        if not 0 < warmup_fraction <= 1:
            raise SelectionError(f"{self.method}: warmup_fraction must be in (0, 1], got {warmup_fraction}")
        if warmup_epochs < 1 or dim < 1:
            raise SelectionError(f"{self.method}: warmup_epochs and dim must be >= 1")
        self.warmup_fraction, self.warmup_epochs, self.dim, self.params = (
            float(warmup_fraction), int(warmup_epochs), int(dim), params)

    def applicable(self, pool: Pool, target: Target | None = None) -> str | None:
        why = super().applicable(pool, target)
        if why or (pool.features is not None and target is not None and target.features is not None):
            return why
        if pool.learner is None:
            return f"{self.method} needs pool.features and target.features, or a pool learner to compute them"
        if target is not None and target.X is None:
            return f"{self.method} needs target inputs X to compute target gradients"
        return None

    # ---- features -------------------------------------------------------------------------
    def _warm(self, pool: Pool) -> dict[str, Any]:
        key = ("warm-up", self.warmup_fraction, self.warmup_epochs, self.seed)
        if key not in pool.cache:
            model, res, _ = warm_up(pool, epochs=self.warmup_epochs, fraction=self.warmup_fraction,
                                    seed=self.seed, keep_checkpoints=True)
            pool.cache[key] = {"model": model, "checkpoints": checkpoints_of(res)}
        return pool.cache[key]

    def _featurizer(self, pool: Pool) -> Featurizer:
        return Featurizer(pool.learner, dim=self.dim, seed=self.seed, params=self.params)

    def pool_features(self, pool: Pool, *, kind: str, output: str) -> GradientFeatures:
        if pool.features is not None and pool.features.kind == kind:
            return pool.features
        key = ("features", kind, output, self.warmup_fraction, self.warmup_epochs, self.dim, self.params, self.seed)
        if key not in pool.cache:
            w = self._warm(pool)
            pool.cache[key] = self._featurizer(pool).features(w["model"], w["checkpoints"], pool.X, pool.y,
                                                              kind=kind, output=output)
        return pool.cache[key]

    def target_features(self, pool: Pool, target: Target, *, output: str) -> GradientFeatures:
        if target.features is not None:
            return target.features
        w = self._warm(pool)
        if target.y is None and output != "loss":
            raise SelectionError(f"{self.method}: target labels y are needed for output={output!r}")
        return self._featurizer(pool).features(w["model"], w["checkpoints"], target.X, target.y,
                                               kind="sgd", output=output)

    def correct_prob(self, pool: Pool, checkpoint: int) -> np.ndarray:
        """Probability of the labelled output under a warm-up checkpoint: exp(-loss)."""
        w = self._warm(pool)
        model = w["model"]
        load_checkpoint(model, w["checkpoints"][checkpoint])
        with stage("infer"):
            loss = pool.learner.per_example_loss(model, pool.X, pool.y)
        return np.exp(-loss)


def less_scores(pool_f: GradientFeatures, target_f: GradientFeatures, tasks: np.ndarray) -> np.ndarray:
    """LESS: sum over checkpoints of lr-weighted cosine(pool Adam feature, target gradient), averaged
    over each subtask's target examples, then the maximum over subtasks."""
    check_compatible(pool_f, target_f)
    wts = pool_f.checkpoint_weights
    sim = None
    for c in range(pool_f.n_checkpoints):
        s = normalize_rows(pool_f.rows(c)).astype(np.float64) @ normalize_rows(target_f.rows(c)).T.astype(np.float64)
        sim = wts[c] * s if sim is None else sim + wts[c] * s
    names = np.unique(tasks)
    per_task = np.stack([sim[:, tasks == t].mean(1) for t in names], 1)
    return check_finite("less scores", per_task.max(1))


@register
class LessSelector(_GradientTargeted):
    """LESS (Xia et al., 2024): warm-up on a random 5% for a few epochs, Adam-preconditioned
    projected pool gradients and SGD target gradients at each epoch checkpoint; score by
    `less_scores`; keep the top k."""

    method = "less"
    pool_kind = "adam"

    def scores(self, pool: Pool, target: Target | None) -> np.ndarray:
        pf = self.pool_features(pool, kind="adam", output="loss")
        tf = self.target_features(pool, target, output="loss")
        return less_scores(pf, tf, target.tasks)


def trak_kernel_apply(phi: np.ndarray, targets: np.ndarray, ridge: float) -> np.ndarray:
    """targets @ (phi^T phi + ridge * mean_diag * I)^-1 @ phi^T, shape (T, N), in float64."""
    phi = phi.astype(np.float64)
    K = phi.T @ phi
    lam = ridge * max(np.trace(K) / len(K), 1e-12)
    sol = np.linalg.solve(K + lam * np.eye(len(K)), targets.astype(np.float64).T)  # (k, T)
    return sol.T @ phi.T


class _TrakFamily(_GradientTargeted):
    """TRAK's estimator, ensembled over warm-up checkpoints: attribution of pool example i to target
    z is  mean_c[ phi_c(z)^T (Phi_c^T Phi_c)^-1 phi_c(i) ] * mean_c[ 1 - p_c(i) ], with phi the
    projected gradient of the margin f = log(p / (1 - p)) and p the probability of the label.
    Positive = including i raises z's correct-class margin (lowers its loss)."""

    def __init__(self, *, seed: int = 0, warmup_fraction: float = 0.5, warmup_epochs: int = 4,
                 dim: int = 512, params: str = "all", ridge: float = 1e-3) -> None:
        super().__init__(seed=seed, warmup_fraction=warmup_fraction, warmup_epochs=warmup_epochs,
                         dim=dim, params=params)
        self.ridge = float(ridge)

    def attributions(self, pool: Pool, target: Target, *, target_output: str) -> np.ndarray:
        """(T, N) matrix: the predicted change in each target's ``target_output`` (margin or loss)
        from including each pool example (TRAK's linearised one-step estimate)."""
        pf = self.pool_features(pool, kind="sgd", output="margin")
        tf = self.target_features(pool, target, output=target_output)
        check_compatible(pf, tf)
        C = pf.n_checkpoints
        A = sum(trak_kernel_apply(pf.rows(c), tf.rows(c), self.ridge) for c in range(C)) / C
        if pool.features is not None:
            q = np.ones(len(pool))  # stored features carry no probabilities; Q = I
        else:
            q = sum(1.0 - self.correct_prob(pool, c) for c in range(C)) / C
        return check_finite(f"{self.method} attributions", A * q[None, :])


@register
class TrakSelector(_TrakFamily):
    """TRAK (Park et al., 2023): keep the pool examples with the highest mean attribution to the
    target examples' margins (those predicted to raise the targets' correct-class margin most)."""

    method = "trak"

    def scores(self, pool: Pool, target: Target | None) -> np.ndarray:
        return self.attributions(pool, target, target_output="margin").mean(0)


@register
class DsDMSelector(_TrakFamily):
    """DsDM (Engstrom et al., 2024): a linear datamodel of the mean target loss, estimated with
    TRAK; keep the k examples whose inclusion it predicts lowers the target loss most.

    Sign convention: ``theta_i`` = predicted change of the mean target loss when example i is
    included (the target side differentiates the loss, not the margin). Selection keeps the k
    most negative theta; ``scores`` returns -theta so that higher is better, like every selector.
    """

    method = "dsdm"

    def datamodel(self, pool: Pool, target: Target) -> np.ndarray:
        """theta: predicted change of mean target loss from including each pool example."""
        return self.attributions(pool, target, target_output="loss").mean(0)

    def scores(self, pool: Pool, target: Target | None) -> np.ndarray:
        return -self.datamodel(pool, target)
