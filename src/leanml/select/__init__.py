"""Data selection: one `Selector` interface, every method, each selection's cost metered.

    from leanml.select import Pool, get_selector
    sel = get_selector("craig", seed=0).select(pool, 0.1)
    sel.indices, sel.weights, sel.cost.wall_s
"""

# The assembler: importing the method modules registers them (the registry base does not import them).
from leanml.select import coreset, dedup, online, random, scores, targeted, text  # noqa: F401
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
from leanml.select.learner import Learner, TorchClassifierLearner, TrainConfig

__all__ = [
    "METHOD_IDS", "Featurizer", "GradientFeatures", "Learner", "MatrixFeatures", "OnlinePlan", "Pool",
    "ScoreSelector", "Selection", "SelectionError", "Selector", "StoreFeatures", "StoreTaskFeatures", "Target",
    "TorchClassifierLearner", "TrainConfig", "budget_to_k", "get_selector", "list_methods", "register",
]


def __getattr__(name: str):
    """``TorchClassifier``: the old name of `TorchClassifierLearner` (renamed: serve has its own
    TorchClassifier, a served variant). Deprecated; importing it warns."""
    if name == "TorchClassifier":
        import warnings

        warnings.warn("leanml.select.TorchClassifier is renamed TorchClassifierLearner; the old name will go",
                      DeprecationWarning, stacklevel=2)
        return TorchClassifierLearner
    raise AttributeError(f"module 'leanml.select' has no attribute {name!r}")
