"""Baselines: uniform random, class-balanced random, and the full pool (the study's reference)."""

from __future__ import annotations

import numpy as np

from leanml.meter import Cost
from leanml.select.base import Pool, Selection, Selector, Target, budget_to_k, register


@register
class RandomSelector(Selector):
    """Uniform sample without replacement (seeded)."""

    method = "random"

    def _select(self, pool: Pool, k: int, target: Target | None) -> Selection:
        rng = np.random.default_rng(self.seed)
        return Selection(np.sort(rng.choice(len(pool), size=k, replace=False)), None, None, Cost.zero())


@register
class RandomBalancedSelector(Selector):
    """Class-balanced random: an equal share per class (a small class gives up its surplus to the others)."""

    method = "random-balanced"
    needs = ("labels",)

    def _select(self, pool: Pool, k: int, target: Target | None) -> Selection:
        rng = np.random.default_rng(self.seed)
        quotas = balanced_quotas(pool.y, k)
        picked = [rng.choice(np.flatnonzero(pool.y == c), size=q, replace=False) for c, q in quotas.items() if q]
        return Selection(np.sort(np.concatenate(picked)), None, None, Cost.zero())


@register
class FullSelector(Selector):
    """Every example: the reference row of the study (budget is ignored)."""

    method = "full"
    uses_budget = False

    def select(self, pool: Pool, budget: float | int = 1.0, *, target: Target | None = None) -> Selection:
        budget_to_k(budget, len(pool))  # a bad budget is an error here too, not silently ignored
        return super().select(pool, 1.0, target=target)

    def _select(self, pool: Pool, k: int, target: Target | None) -> Selection:
        return Selection(np.arange(len(pool)), None, None, Cost.zero())


def balanced_quotas(y: np.ndarray, k: int) -> dict[int, int]:
    """Per-class counts summing to k, as equal as class sizes allow (water-filling)."""
    classes, counts = np.unique(y, return_counts=True)
    quota = dict.fromkeys(classes.tolist(), 0)
    left = dict(zip(classes.tolist(), counts.tolist(), strict=True))
    remaining = k
    while remaining > 0:
        open_ = [c for c in quota if left[c] > 0]
        share = max(1, remaining // len(open_))
        for c in open_:
            take = min(share, left[c], remaining)
            quota[c] += take
            left[c] -= take
            remaining -= take
            if remaining == 0:
                break
    return quota


def per_class_quotas(y: np.ndarray, k: int) -> dict[int, int]:
    """Per-class counts proportional to class sizes, summing to k (largest remainders), each >= 1."""
    classes, counts = np.unique(y, return_counts=True)
    exact = counts / counts.sum() * k
    q = np.maximum(1, np.floor(exact)).astype(int)
    q = np.minimum(q, counts)
    while q.sum() > k:
        i = int(np.argmax(q - exact))
        q[i] -= 1
    order = np.argsort(-(exact - np.floor(exact)))
    i = 0
    while q.sum() < k:
        c = order[i % len(order)]
        if q[c] < counts[c]:
            q[c] += 1
        i += 1
    return dict(zip(classes.tolist(), q.tolist(), strict=True))
