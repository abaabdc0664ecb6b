"""Data selection: one `Selector` interface, every method, each selection's cost metered.

    from leanml.select import Pool, get_selector
    sel = get_selector("craig", seed=0).select(pool, 0.1)
    sel.indices, sel.weights, sel.cost.wall_s
"""

from leanml.select.base import (
    METHOD_IDS,
    OnlinePlan,
    Pool,
    ScoreSelector,
    Selection,
    SelectionError,
    Selector,
    Target,
    budget_to_k,
    get_selector,
    list_methods,
    register,
)
from leanml.select.features import Featurizer, GradientFeatures, MatrixFeatures, StoreFeatures, StoreTaskFeatures
from leanml.select.learner import Learner, TorchClassifier, TrainConfig

__all__ = [
    "METHOD_IDS", "Featurizer", "GradientFeatures", "Learner", "MatrixFeatures", "OnlinePlan", "Pool",
    "ScoreSelector", "Selection", "SelectionError", "Selector", "StoreFeatures", "StoreTaskFeatures", "Target",
    "TorchClassifier", "TrainConfig", "budget_to_k", "get_selector", "list_methods", "register",
]
