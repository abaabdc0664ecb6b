"""`SelectionError` and input checks shared by the selection contract and the feature adapters.

Below both `leanml.select.base` (which types `Pool.features` as `GradientFeatures`) and
`leanml.select.features` (which raises these), so neither imports the other at run time.
"""

from __future__ import annotations

import numpy as np


class SelectionError(ValueError):
    """A selector was given input it cannot work with (the message says what to change)."""


def check_finite(name: str, a: np.ndarray) -> np.ndarray:
    """Raise a clear error when a score or feature array has NaN/inf (a diverged warm-up, say)."""
    if not np.all(np.isfinite(a)):
        bad = int((~np.isfinite(a)).sum())
        raise SelectionError(f"{name}: {bad} non-finite values (did the warm-up diverge? lower the lr)")
    return a
