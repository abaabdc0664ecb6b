"""scikit-learn variants: any fitted classifier, and smaller tree ensembles derived from a big one."""

from __future__ import annotations

import copy

import numpy as np

from leanml.serve.variants.base import ClassifierModel, serialized_size


class SklearnClassifier(ClassifierModel):
    """A fitted scikit-learn classifier with ``predict_proba``, served as class probabilities."""

    def __init__(self, estimator, n_features: int) -> None:
        if not hasattr(estimator, "predict_proba"):
            raise TypeError(f"SklearnClassifier: {type(estimator).__name__} has no predict_proba")
        classes = getattr(estimator, "classes_", None)
        if classes is None:
            raise ValueError("SklearnClassifier: the estimator is not fitted (no classes_)")
        if not np.array_equal(np.asarray(classes), np.arange(len(classes))):
            raise ValueError("SklearnClassifier: classes_ must be 0..C-1 so that labels are class indices")
        super().__init__((int(n_features),), len(classes))
        self.estimator = estimator

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.estimator.predict_proba(X), dtype=np.float32)

    def size_bytes(self) -> int | None:
        return serialized_size(self.estimator)


def fewer_trees(forest, n_trees: int):
    """A copy of a fitted random forest / extra-trees ensemble that keeps only its first ``n_trees`` trees.

    Averaging fewer of the same trees costs proportionally less and loses a little accuracy; no refit.
    """
    if not hasattr(forest, "estimators_"):
        raise TypeError(f"fewer_trees: {type(forest).__name__} is not a fitted bagging ensemble")
    total = len(forest.estimators_)
    if not 1 <= n_trees <= total:
        raise ValueError(f"fewer_trees: n_trees must be in [1, {total}], got {n_trees}")
    small = copy.copy(forest)
    small.estimators_ = forest.estimators_[:n_trees]
    small.n_estimators = n_trees
    return small


def fewer_iterations(hgb, n_iter: int):
    """A copy of a fitted HistGradientBoosting model that keeps only its first ``n_iter`` boosting rounds.

    Boosting is additive, so the truncated model is exactly the model after ``n_iter`` rounds
    (without early stopping), at a fraction of the prediction cost.
    """
    preds = getattr(hgb, "_predictors", None)
    if preds is None:
        raise TypeError(f"fewer_iterations: {type(hgb).__name__} is not a fitted HistGradientBoosting model")
    if not 1 <= n_iter <= len(preds):
        raise ValueError(f"fewer_iterations: n_iter must be in [1, {len(preds)}], got {n_iter}")
    small = copy.copy(hgb)
    small._predictors = preds[:n_iter]
    return small
