"""The selection contract: `Pool`, `Target`, `Selection`, the `Selector` base and the method registry.

A selector turns a pool of training examples and a budget into a `Selection`: which examples
to train on, with what per-example weights, the scores it ranked them by, and what choosing
them cost (metered, so the study can set it beside the training it saves).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from leanml.meter import Cost, Meter

if TYPE_CHECKING:  # pragma: no cover
    from leanml.select.features import GradientFeatures
    from leanml.select.learner import Learner


class SelectionError(ValueError):
    """A selector was given input it cannot work with (the message says what to change)."""


@dataclass
class Pool:
    """The candidate training examples.

    ``X`` holds the model inputs (an array with one row per example, or a list of records for
    text/LM learners), ``y`` the labels where there are any. ``learner`` trains and scores the
    model family of the study (warm-ups, proxies, gradients). ``holdout`` is a separate labelled
    split (RHO-LOSS trains its irreducible-loss model there). ``features`` are precomputed
    per-example gradient features (from the gradient store or an earlier selection), so that a
    second target task does not recompute them. ``texts`` feed the text baselines.
    """

    X: Any
    y: np.ndarray | None = None
    ids: np.ndarray | None = None
    learner: Learner | None = None
    texts: list[str] | None = None
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    holdout: Pool | None = None
    features: GradientFeatures | None = None
    name: str = "pool"
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)  # warm-ups/features reused across targets

    def __post_init__(self) -> None:
        n = len(self.X)
        if n == 0:
            raise SelectionError(f"Pool '{self.name}': no examples (X is empty)")
        if self.y is not None:
            self.y = np.asarray(self.y)
            if len(self.y) != n:
                raise SelectionError(f"Pool '{self.name}': X has {n} rows but y has {len(self.y)}")
        if self.ids is None:
            self.ids = np.arange(n, dtype=np.int64)
        elif len(self.ids) != n:
            raise SelectionError(f"Pool '{self.name}': X has {n} rows but ids has {len(self.ids)}")
        if self.texts is not None and len(self.texts) != n:
            raise SelectionError(f"Pool '{self.name}': X has {n} rows but texts has {len(self.texts)}")

    def __len__(self) -> int:
        return len(self.X)

    def take(self, idx: np.ndarray) -> tuple[Any, np.ndarray | None]:
        """Inputs and labels of the rows ``idx``."""
        return take_rows(self.X, idx), (None if self.y is None else self.y[idx])

    @property
    def n_classes(self) -> int | None:
        if self.learner is not None and getattr(self.learner, "n_classes", None):
            return self.learner.n_classes
        return None if self.y is None else int(self.y.max()) + 1


@dataclass
class Target:
    """Examples of the task a targeted selector selects for (LESS, TRAK, DsDM, embedding, BM25).

    ``tasks`` names each example's subtask: LESS averages over a subtask's examples and takes
    the maximum over subtasks. ``features`` are precomputed target gradients, if any.
    """

    X: Any = None
    y: np.ndarray | None = None
    texts: list[str] | None = None
    tasks: np.ndarray | None = None
    features: GradientFeatures | None = None
    name: str = "target"

    def __post_init__(self) -> None:
        n = self.size()
        if n == 0:
            raise SelectionError(f"Target '{self.name}': give at least one example (X or texts)")
        if self.tasks is None:
            self.tasks = np.array([self.name] * n)
        else:
            self.tasks = np.asarray(self.tasks)
            if len(self.tasks) != n:
                raise SelectionError(f"Target '{self.name}': {n} examples but {len(self.tasks)} task labels")

    def size(self) -> int:
        if self.X is not None:
            return len(self.X)
        return len(self.texts) if self.texts is not None else 0


@dataclass
class OnlinePlan:
    """How an online method trains: presample batches of ``presample`` examples, let ``hook`` pick.

    ``hook`` has the signature of `leanml.models.fit`'s ``batch_hook``; ``hook_cost`` returns the
    metered cost of all hook calls so far (the selection's per-batch share of training time). Each
    step back-propagates about ``batch_size`` of the ``presample`` examples, so a budget b stops
    training after ``round(b * pool * epochs / batch_size)`` steps.
    """

    presample: int
    batch_size: int
    hook: Callable
    hook_cost: Callable[[], Cost]
    loss_norm: str = "weights"  # "mean" for importance-sampling weights (unbiased), see leanml.models.fit


@dataclass
class Selection:
    """What a selector chose: pool row indices, per-example training weights, scores, its own cost."""

    indices: np.ndarray
    weights: np.ndarray | None
    scores: np.ndarray | None
    cost: Cost
    method: str = ""
    online: OnlinePlan | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.indices = np.asarray(self.indices, dtype=np.int64)
        if self.weights is not None:
            self.weights = np.asarray(self.weights, dtype=np.float32)
            if len(self.weights) != len(self.indices):
                raise SelectionError(
                    f"Selection: {len(self.indices)} indices but {len(self.weights)} weights")
        if len(np.unique(self.indices)) != len(self.indices):
            raise SelectionError("Selection: indices contain duplicates")

    def __len__(self) -> int:
        return len(self.indices)


def budget_to_k(budget: float | int, n: int) -> int:
    """A budget as a fraction of the pool (0 < b <= 1) or an example count (int > 1) -> k examples."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.integer, np.floating)):
        raise SelectionError(f"budget must be a fraction in (0, 1] or a count >= 1, got {budget!r}")
    if isinstance(budget, (float, np.floating)) and budget <= 1.0:
        if not budget > 0:
            raise SelectionError(f"budget must be > 0, got {budget}")
        return max(1, min(n, int(round(budget * n))))
    k = int(budget)
    if k != budget or k < 1:
        raise SelectionError(f"budget count must be a whole number >= 1, got {budget}")
    if k > n:
        raise SelectionError(f"budget {k} exceeds the pool size {n}; use a fraction or a smaller count")
    return k


def take_rows(X: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of an array or of a list of records."""
    if isinstance(X, np.ndarray) or hasattr(X, "__array__") and not isinstance(X, list):
        return X[idx]
    return [X[int(i)] for i in idx]


def top_k(scores: np.ndarray, k: int, *, largest: bool = True) -> np.ndarray:
    """Indices of the k highest (or lowest) scores, best first; ties broken by index for determinism."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(len(s)), -s if largest else s))
    return order[:k]


class Selector(ABC):
    """One data selection method. Subclasses set ``method`` and implement ``_select``.

    ``needs_target``: the method selects for a target task. ``needs``: what the pool must carry
    ("learner", "texts", "holdout") for the method to apply. ``online``: the method picks inside
    training, per batch (its ``select`` returns an `OnlinePlan`).
    """

    method: ClassVar[str] = ""
    needs_target: ClassVar[bool] = False
    needs: ClassVar[tuple[str, ...]] = ()
    online: ClassVar[bool] = False

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = int(seed)

    def applicable(self, pool: Pool, target: Target | None = None) -> str | None:
        """None if the method applies to this pool/target, else the reason it does not."""
        if self.needs_target and target is None:
            return f"{self.method} selects for a target task; pass target="
        for need in self.needs:
            if need == "learner" and pool.learner is None:
                return f"{self.method} needs a pool with a learner (model to warm up and score)"
            if need == "texts" and pool.texts is None:
                return f"{self.method} needs pool texts"
            if need == "texts" and target is not None and target.texts is None:
                return f"{self.method} needs target texts"
            if need == "holdout" and pool.holdout is None:
                return f"{self.method} needs a labelled holdout split (pool.holdout)"
            if need == "labels" and pool.y is None:
                return f"{self.method} needs labels (pool.y)"
        return None

    def select(self, pool: Pool, budget: float | int, *, target: Target | None = None) -> Selection:
        """Choose ``budget`` examples (fraction or count) from ``pool``; the work is metered.

        ``Selection.cost.stages`` splits it: "train" (warm-ups, proxies), "infer" (forward scoring
        passes), "grads" (per-example gradient features); the rest is host work (numpy scoring,
        greedy coreset loops), for the study's projection onto other hardware.
        """
        why = self.applicable(pool, target)
        if why:
            raise SelectionError(why)
        k = budget_to_k(budget, len(pool))
        with Meter() as m:
            sel = self._select(pool, k, target)
        sel.cost = m.cost + sel.cost if sel.cost is not None else m.cost
        sel.method = self.method
        return sel

    @abstractmethod
    def _select(self, pool: Pool, k: int, target: Target | None) -> Selection:
        """Do the work; return a Selection whose ``cost`` is any cost incurred outside this call
        (e.g. a cached score computation), or ``Cost.zero()``."""


class ScoreSelector(Selector):
    """Selectors that rank the pool by a budget-independent score and keep the top k.

    Scores are cached per pool/target, so a study asking for several budgets computes them once;
    each budget's Selection still carries the full scoring cost (what it costs standalone), with
    its stages (warm-up "train", forward "infer", per-example "grads").
    """

    largest: ClassVar[bool] = True

    def __init__(self, *, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self._cache: dict[tuple[int, int], tuple[np.ndarray, Cost]] = {}

    @abstractmethod
    def scores(self, pool: Pool, target: Target | None) -> np.ndarray:
        """One score per pool row; higher is kept first unless ``largest`` is False."""

    def _select(self, pool: Pool, k: int, target: Target | None) -> Selection:
        key = (id(pool), id(target))
        if key in self._cache:
            s, cost = self._cache[key]
            extra = cost
        else:
            with Meter() as m:
                s = np.asarray(self.scores(pool, target), dtype=np.float64)
            if s.shape != (len(pool),):
                raise AssertionError(f"{self.method}: scores shape {s.shape}, pool has {len(pool)} rows")
            self._cache[key] = (s, m.cost)
            # Measured by select()'s own meter this time; keep the stage split ("train", "infer", "grads")
            # that leanml.meter.stage recorded in this inner meter.
            extra = m.cost.stages_only()
        idx = self.choose(s, k, pool)
        return Selection(idx, None, s, extra)

    def choose(self, scores: np.ndarray, k: int, pool: Pool) -> np.ndarray:
        return top_k(scores, k, largest=self.largest)


# ---- registry ---------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Selector]] = {}

METHOD_IDS = (
    "random", "random-balanced", "loss", "el2n", "dlis", "least-confidence", "margin", "entropy",
    "rho-loss", "craig", "grad-match", "less", "trak", "dsdm", "embedding", "bm25", "full",
)


def register(cls: type[Selector]) -> type[Selector]:
    """Class decorator: make a selector available under its ``method`` id."""
    if not cls.method:
        raise ValueError(f"{cls.__name__} has no method id")
    if cls.method in _REGISTRY and _REGISTRY[cls.method] is not cls:
        raise ValueError(f"method id '{cls.method}' is already registered by {_REGISTRY[cls.method].__name__}")
    _REGISTRY[cls.method] = cls
    return cls


def get_selector(method: str, **params: Any) -> Selector:
    """A new selector for a method id, with validated parameters."""
    _ensure_loaded()
    try:
        cls = _REGISTRY[method]
    except KeyError:
        raise SelectionError(f"unknown method '{method}'; known methods: {', '.join(sorted(_REGISTRY))}") from None
    try:
        return cls(**params)
    except TypeError as e:
        raise SelectionError(f"method '{method}': bad parameters {sorted(params)}: {e}") from None


def list_methods() -> list[str]:
    _ensure_loaded()
    return [m for m in METHOD_IDS if m in _REGISTRY] + sorted(set(_REGISTRY) - set(METHOD_IDS))


def _ensure_loaded() -> None:
    from leanml.select import coreset, dedup, online, random, scores, targeted, text  # noqa: F401


def check_finite(name: str, a: np.ndarray) -> np.ndarray:
    """Raise a clear error when a score or feature array has NaN/inf (a diverged warm-up, say)."""
    if not np.all(np.isfinite(a)):
        bad = int((~np.isfinite(a)).sum())
        raise SelectionError(f"{name}: {bad} non-finite values (did the warm-up diverge? lower the lr)")
    return a


def ceil_div(a: int, b: int) -> int:
    return int(math.ceil(a / b))
