"""scikit-learn's bundled datasets: always available, no data root needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from leanml.data.registry import register
from leanml.data.types import DatasetSpec, Split

# A fixed, seeded split so that ids and splits never change between runs.
_TEST_FRACTION = 0.25
_SPLIT_SEED = 0


def _split_bundled(name: str, X: np.ndarray, y: np.ndarray, split: str, info: dict) -> Split:
    rng = np.random.default_rng(_SPLIT_SEED)
    order = rng.permutation(len(y))
    n_test = int(round(len(y) * _TEST_FRACTION))
    rows = np.sort(order[n_test:] if split == "train" else order[:n_test])
    # The id is the row in scikit-learn's canonical order, so it is stable across splits.
    return Split(name, split, ids=rows.astype(np.int64), X=X[rows], y=y[rows], info=info)


def _digits(root: Path, split: str) -> Split:
    from sklearn.datasets import load_digits

    d = load_digits()
    X = (d.data / 16.0).astype(np.float32)
    return _split_bundled("digits", X, d.target.astype(np.int64), split, {"classes": list(range(10))})


def _breast_cancer(root: Path, split: str) -> Split:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    return _split_bundled(
        "breast_cancer", d.data.astype(np.float32), d.target.astype(np.int64), split,
        {"classes": list(d.target_names), "features": list(d.feature_names)},
    )


register(DatasetSpec(
    name="digits", kind="tabular", description="8x8 handwritten digits (scikit-learn bundled)",
    splits={"train": 1348, "test": 449}, files=(), license="CC BY 4.0 (UCI)",
    source="bundled with scikit-learn", loader=_digits, bundled=True,
))
register(DatasetSpec(
    name="breast_cancer", kind="tabular", description="Wisconsin diagnostic breast cancer (scikit-learn bundled)",
    splits={"train": 427, "test": 142}, files=(), license="CC BY 4.0 (UCI)",
    source="bundled with scikit-learn", loader=_breast_cancer, bundled=True,
))
