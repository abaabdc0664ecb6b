"""`SuiteData`: what one seed of a study suite runs on (pool, target, test split, learner).

Its own module, below `leanml.bench.suites` (the suite registry) and the suite builders that return it
(`leanml.bench.instruct`), so that a builder does not import the registry that lists it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from leanml.select import Pool, Target


@dataclass
class SuiteData:
    """What one seed of a suite runs on."""

    pool: Pool
    target: Target | None
    test_X: Any
    test_y: Any
    learner: Any
    metric: str = "accuracy"
    info: dict[str, Any] = field(default_factory=dict)  # fixed costs outside the grid (e.g. frozen features)
