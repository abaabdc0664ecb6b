"""Linear datamodeling score (LDS; Park et al., 2023, "TRAK"), the field's test of data attribution.

An attribution method gives ``tau[t, i]``: the predicted effect of training example ``i`` on the
output (e.g. the correct-class margin) of held-out example ``t``. Its linear datamodel predicts the
output of a model trained on a subset ``S`` as ``sum_{i in S} tau[t, i]``. LDS draws ``M`` random
subsets (the peers use about 50 of half the training set), retrains a model on each, measures the
actual outputs, and reports, per held-out example, the Spearman rank correlation across the ``M``
subsets between predicted and actual outputs; the score is the mean over held-out examples.

The pieces, each usable alone:

- `subset_masks`: the ``(M, N)`` boolean subset matrix (seeded, exactly ``round(fraction*N)`` each);
- `retrain_outputs`: the retraining driver, calling ``train_and_eval(indices) -> outputs[T]`` per subset;
- `lds`: the score, with per-example correlations and a 95% bootstrap interval over held-out examples.

This is the protocol of dattri's ``dattri.metric.lds`` (which takes subset index lists rather than
masks); `lds` gives the same per-example correlations (the benchmark checks the two agree).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


@dataclass(frozen=True)
class LDSResult:
    """Mean LDS over held-out examples, its 95% bootstrap interval, and the per-example correlations."""

    mean: float
    ci95: tuple[float, float]
    per_example: np.ndarray  # (T,); NaN where a row of outputs or predictions was constant
    n_subsets: int

    def as_dict(self) -> dict[str, float | list[float] | int]:
        return {"lds": self.mean, "ci95": [self.ci95[0], self.ci95[1]], "n_subsets": self.n_subsets,
                "n_examples": int(np.isfinite(self.per_example).sum())}


def subset_masks(n_train: int, n_subsets: int = 50, fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """``(n_subsets, n_train)`` boolean masks, each selecting ``round(fraction * n_train)`` examples
    uniformly at random without replacement (independently per subset)."""
    if n_train < 2 or n_subsets < 2:
        raise ValueError(f"subset_masks: need n_train >= 2 and n_subsets >= 2, got {n_train}, {n_subsets}")
    if not 0 < fraction < 1:
        raise ValueError(f"subset_masks: fraction must be in (0, 1), got {fraction}")
    size = max(1, int(round(fraction * n_train)))
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_subsets, n_train), dtype=bool)
    for m in range(n_subsets):
        masks[m, rng.choice(n_train, size, replace=False)] = True
    return masks


def retrain_outputs(masks: np.ndarray, train_and_eval: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Actual outputs ``(M, T)``: ``train_and_eval(indices)`` trains a fresh model on the training
    examples at ``indices`` (sorted) and returns its outputs on the T held-out examples."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 2:
        raise ValueError(f"retrain_outputs: masks must be (n_subsets, n_train), got shape {masks.shape}")
    out = []
    for m, row in enumerate(masks):
        y = np.asarray(train_and_eval(np.flatnonzero(row)), dtype=np.float64).reshape(-1)
        if out and y.shape != out[0].shape:
            raise ValueError(f"retrain_outputs: subset {m} returned {y.shape[0]} outputs, subset 0 {out[0].shape[0]}")
        out.append(y)
    return np.stack(out)


def _spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of ``a`` with the same column of ``b`` (average ranks for ties)."""
    ra, rb = rankdata(a, axis=0), rankdata(b, axis=0)
    ra -= ra.mean(0)
    rb -= rb.mean(0)
    den = np.sqrt((ra**2).sum(0) * (rb**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(0) / np.where(den > 0, den, 1.0), np.nan)


def lds(attributions: np.ndarray, masks: np.ndarray, outputs: np.ndarray, *, n_boot: int = 2000,
        seed: int = 0) -> LDSResult:
    """LDS of ``attributions`` ``(T, N)`` against retrained ``outputs`` ``(M, T)`` on subsets ``masks`` ``(M, N)``.

    Predicted output of subset m for example t: ``sum_i masks[m, i] * attributions[t, i]``. Per example,
    Spearman across the M subsets; mean over examples with a defined correlation. The interval is the
    2.5-97.5 percentile of the mean over ``n_boot`` bootstrap resamples of the held-out examples (it
    reflects which examples were held out, not the finite number of subsets)."""
    A = np.asarray(attributions, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    Y = np.asarray(outputs, dtype=np.float64)
    if A.ndim != 2 or masks.ndim != 2 or Y.ndim != 2:
        raise ValueError("lds: attributions (T, N), masks (M, N) and outputs (M, T) must all be 2-D")
    if masks.shape[1] != A.shape[1]:
        raise ValueError(f"lds: attributions cover {A.shape[1]} training examples, masks {masks.shape[1]}")
    if Y.shape != (masks.shape[0], A.shape[0]):
        raise ValueError(f"lds: outputs must be (n_subsets, n_targets) = {(masks.shape[0], A.shape[0])}, got {Y.shape}")
    if not np.isfinite(A).all() or not np.isfinite(Y).all():
        raise ValueError("lds: attributions and outputs must be finite")
    pred = masks.astype(np.float64) @ A.T  # (M, T)
    per = _spearman_columns(pred, Y)
    ok = per[np.isfinite(per)]
    if not len(ok):
        raise ValueError("lds: every held-out example has constant predictions or outputs; no correlation is defined")
    rng = np.random.default_rng(seed)
    boots = ok[rng.integers(0, len(ok), size=(n_boot, len(ok)))].mean(1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return LDSResult(float(ok.mean()), (float(lo), float(hi)), per, int(masks.shape[0]))
