"""Targeted selection from gradient features: LESS (and its balanced and ablation variants), TRAK and DsDM.

Every score is computed by `leanml.store.scoring`, the module the store's queries call too; this module
gets the features (and TRAK's 1 - p) and turns scores into selections.

Features come from ``pool.features``/``target.features`` when given (e.g. a gradient store), else
from a warm-up whose checkpoints and pool features are cached on the pool, so a second target task
pays only for its own gradients.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from leanml.grads import defaults
from leanml.meter import Meter, stage
from leanml.select.base import Pool, ScoreSelector, Selection, SelectionError, Target, check_finite, register
from leanml.select.features import (
    Featurizer,
    GradientFeatures,
    MatrixFeatures,
    check_compatible,
    checkpoints_of,
    load_checkpoint,
)
from leanml.select.warmup import warm_up
from leanml.store import scoring


class _GradientTargeted(ScoreSelector):
    needs_target = True
    pool_kind = "sgd"      # LESS gradient type of the pool's features
    pool_output = "loss"   # function differentiated for the pool (TRAK: margin)
    target_output = "loss"
    pair_grad_type: str | None = None  # LESS: its SGD targets are scored against an Adam pool

    def __init__(self, *, seed: int = 0, warmup_fraction: float = 0.05, warmup_epochs: int = 4,
                 dim: int = defaults.PROJECTION_DIM, params: str = "all", codec: str | None = None) -> None:
        """``codec``: hold the pool features the warm-up computes as a gradient store of that codec would
        (a round trip through `leanml.store.codecs`, e.g. "int4"), to measure what compression costs
        downstream; None keeps them float32."""
        super().__init__(seed=seed)
        if not 0 < warmup_fraction <= 1:
            raise SelectionError(f"{self.method}: warmup_fraction must be in (0, 1], got {warmup_fraction}")
        if warmup_epochs < 1 or dim < 1:
            raise SelectionError(f"{self.method}: warmup_epochs and dim must be >= 1")
        if codec is not None:
            from leanml.store.codecs import get_codec

            get_codec(codec)  # a clear error naming the codecs
        self.warmup_fraction, self.warmup_epochs, self.dim, self.params, self.codec = (
            float(warmup_fraction), int(warmup_epochs), int(dim), params, codec)

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
        return Featurizer(pool.learner, dim=self.dim, seed=self.seed, params=self.params,
                          pair_grad_type=self.pair_grad_type)

    def pool_features(self, pool: Pool, *, kind: str, output: str) -> GradientFeatures:
        if pool.features is not None and pool.features.kind == kind:
            return pool.features
        key = ("features", kind, output, self.warmup_fraction, self.warmup_epochs, self.dim, self.params, self.seed,
               self.pair_grad_type, self.codec)
        if key not in pool.cache:
            w = self._warm(pool)
            f = self._featurizer(pool).features(w["model"], w["checkpoints"], pool.X, pool.y, kind=kind, output=output)
            if self.codec is not None:
                from leanml.store.codecs import get_codec

                c = get_codec(self.codec)
                f = MatrixFeatures([c.decode(*c.encode(m), m.shape[1]) for m in f.mats], f.weights, kind=f.kind,
                                   fp=f.fp, q=f.q)
            pool.cache[key] = f
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


def less_per_subtask(pool_f: GradientFeatures, target_f: GradientFeatures,
                     tasks: np.ndarray | None) -> np.ndarray:
    """``[N, S]`` LESS scores, one column per subtask (`leanml.store.scoring.less_per_subtask`)."""
    check_compatible(pool_f, target_f)
    _, per = scoring.less_per_subtask(pool_f.blocks(), _target_rows(target_f), tasks)
    return check_finite("less scores", per)


def less_scores(pool_f: GradientFeatures, target_f: GradientFeatures, tasks: np.ndarray | None,
                reduce: str = "max") -> np.ndarray:
    """LESS: sum over checkpoints of lr-weighted cosine(pool Adam feature, target gradient), averaged
    over each subtask's target examples, then ``reduce`` over subtasks (the paper: the maximum)."""
    return scoring.reduce_subtasks(less_per_subtask(pool_f, target_f, tasks), reduce)


def _target_rows(f: GradientFeatures) -> list[np.ndarray]:
    return [f.rows(c) for c in range(f.n_checkpoints)]


class _LessFamily(_GradientTargeted):
    """LESS (Xia et al., 2024): warm-up on a random 5% for a few epochs, Adam-preconditioned projected pool
    gradients and SGD target gradients at each epoch checkpoint; score by `less_scores`; keep the top k.
    Subclasses differ only in how the per-subtask scores become a selection (``reduce``, ``subtasks``)."""

    pool_kind = "adam"
    pair_grad_type = "adam"
    reduce: str = "max"
    per_subtask: bool = True  # False: the whole target is one subtask

    def subtask_matrix(self, pool: Pool, target: Target) -> np.ndarray:
        pf = self.pool_features(pool, kind="adam", output="loss")
        tf = self.target_features(pool, target, output="loss")
        return less_per_subtask(pf, tf, target.tasks if self.per_subtask else None)

    def scores(self, pool: Pool, target: Target | None) -> np.ndarray:
        return scoring.reduce_subtasks(self.subtask_matrix(pool, target), self.reduce)


@register
class LessSelector(_LessFamily):
    """LESS as the paper runs it: one subtask per target task (the study's in-distribution suites give one
    per class), the maximum over subtasks. The reference variant."""

    method = "less"


@register
class LessZMaxSelector(_LessFamily):
    """Ablation: each subtask's scores standardized over the pool before the maximum, so a coherent
    subtask with long mean gradients cannot win every row."""

    method = "less-zmax"
    reduce = "zmax"


@register
class LessSingleSelector(_LessFamily):
    """Ablation: the whole target as one task (mean cosine over every target example)."""

    method = "less-single"
    per_subtask = False


@register
class LessBalancedSelector(_LessFamily):
    """Balanced LESS: rank the pool for each subtask separately and take each subtask's best untaken
    example in turn, round-robin, until the budget is spent (`leanml.store.scoring.round_robin`)."""

    method = "less-balanced"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._per: dict[tuple[int, int], tuple[np.ndarray, Any]] = {}

    def _select(self, pool: Pool, k: int, target: Target | None) -> Selection:
        key = (id(pool), id(target))
        if key not in self._per:
            with Meter() as m:
                per = self.subtask_matrix(pool, target)
            self._per[key] = (per, m.cost)
            extra = m.cost.stages_only()
        else:
            per, extra = self._per[key]
        return Selection(scoring.round_robin(per, k), None, per.max(1), extra)



class _TrakFamily(_GradientTargeted):
    """TRAK's estimator, ensembled over warm-up checkpoints (`leanml.store.scoring.trak`): attribution of
    pool example i to target z is  mean_c[ phi_c(z)^T (Phi_c^T Phi_c + lambda I)^-1 phi_c(i) ] * mean_c[ 1 - p_c(i) ],
    with phi the projected gradient of the margin f = log(p / (1 - p)) and p the probability of the label.
    Positive = including i raises z's correct-class margin (lowers its loss)."""

    def __init__(self, *, seed: int = 0, warmup_fraction: float = 0.5, warmup_epochs: int = 4,
                 dim: int = defaults.PROJECTION_DIM, params: str = "all", ridge: float = scoring.RIDGE,
                 codec: str | None = None) -> None:
        super().__init__(seed=seed, warmup_fraction=warmup_fraction, warmup_epochs=warmup_epochs,
                         dim=dim, params=params, codec=codec)
        self.ridge = float(ridge)

    def trak_pool_features(self, pool: Pool) -> GradientFeatures:
        """Margin-gradient pool features with their 1 - p: from the warm-up's checkpoints when computed
        here; from the features themselves (e.g. the store's) when given."""
        pf = self.pool_features(pool, kind="sgd", output="margin")
        if pool.features is not None or pf.one_minus_p() is not None:
            return pf
        key = ("trak-q", id(pf))
        if key not in pool.cache:
            q = np.stack([1.0 - self.correct_prob(pool, c) for c in range(pf.n_checkpoints)])
            pool.cache[key] = MatrixFeatures(pf.mats, pf.weights, kind=pf.kind, fp=pf.fp, q=q)
        return pool.cache[key]

    def attributions(self, pool: Pool, target: Target, *, target_output: str) -> np.ndarray:
        """(T, N) matrix: the predicted change in each target's ``target_output`` (margin or loss)
        from including each pool example (TRAK's linearised one-step estimate)."""
        pf = self.trak_pool_features(pool)
        tf = self.target_features(pool, target, output=target_output)
        check_compatible(pf, tf)
        _, A = scoring.trak(pf.blocks(), _target_rows(tf), ridge=self.ridge)
        return check_finite(f"{self.method} attributions", A.T)

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
