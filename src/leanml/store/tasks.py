"""Target tasks kept next to the training features, and the queries users ask of them.

``add_task`` stores a task's own gradient features (float32 ``[C, n, d]``) once; every later
selection, explanation or n-shot choice for it reads the stored training features and costs no
new training-side gradients.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from leanml.io import atomic_write_bytes
from leanml.store.manifest import StoreError, StoreMismatchError
from leanml.store.search import as_per_checkpoint, less_balanced, less_scores
from leanml.store.view import check_name

if TYPE_CHECKING:
    from leanml.store.view import StoreView as GradientStore  # typed by what it uses: no import of store.py


def add_task(store: GradientStore, name: str, features: np.ndarray | Sequence[np.ndarray], *,
             ids: Sequence[int] | None = None, subtasks: Sequence[Any] | None = None,
             spec: dict[str, Any] | None = None, model: str | None = None,
             fingerprints: Sequence[str] | None = None) -> dict[str, Any]:
    """Store a target task's features (one ``[n, d]`` per checkpoint), refusing other models/projections.

    ``spec``/``model``/``fingerprints`` (from the `GradientComputer` that made the features, one
    weights fingerprint per checkpoint) are checked against the manifest when given.
    """
    check_name("task", name)
    qs = as_per_checkpoint(store, features)
    n = qs[0].shape[0]
    if n == 0:
        raise ValueError(f"add_task {name!r}: no target examples")
    if spec is not None or model is not None:
        store.check_compatible(spec=spec, model=model)
    if fingerprints is not None:
        for c, fp in zip(store.manifest.checkpoints, fingerprints, strict=True):
            if c.fingerprint is not None and fp != c.fingerprint:
                raise StoreMismatchError(f"add_task {name!r}: checkpoint {c.name}'s features come from weights "
                                         f"{fp}, the store's from {c.fingerprint}")
    arr = np.stack(qs).astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"add_task {name!r}: features contain NaN or inf")
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    data = buf.getvalue()
    rel = f"tasks/{name}.npy"
    atomic_write_bytes(store.root / rel, data)
    labels = None if subtasks is None else [str(s) for s in subtasks]
    if labels is not None and len(labels) != n:
        raise ValueError(f"add_task {name!r}: {len(labels)} subtask labels for {n} examples")
    entry = {"file": rel, "sha256": hashlib.sha256(data).hexdigest(), "rows": n,
             "ids": None if ids is None else [int(i) for i in ids], "subtasks": labels}

    def change(m):  # noqa: ANN001, ANN202
        m.tasks[name] = entry
    store._commit_manifest_change(change)
    return entry


def task_features(store: GradientStore, name: str) -> tuple[np.ndarray, dict[str, Any]]:
    if name not in store.manifest.tasks:
        raise StoreError(f"{store.root}: no task {name!r}; tasks: {sorted(store.manifest.tasks)}")
    t = store.manifest.tasks[name]
    return np.load(store.root / t["file"]), t


SELECT_METHODS = ("less", "less-balanced", "less-zmax", "less-single")


def select(store: GradientStore, task: str, budget: int | float, *, method: str = "less",
           device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """LESS selection for a stored task: the ``budget`` (int, or fraction < 1) best ids and their scores.

    ``method`` is one of the LESS variants the selectors register (docs/select.md): ``less`` (max over the
    task's subtasks), ``less-balanced`` (round-robin over subtasks; scores are each row's best subtask
    score), ``less-zmax``, ``less-single``."""
    if method not in SELECT_METHODS:
        raise ValueError(f"select: method must be one of {SELECT_METHODS}, got {method!r}")
    feats, t = task_features(store, task)
    sub = None if method == "less-single" else t.get("subtasks")
    n_rows = store.n_rows()
    n = int(round(budget * n_rows)) if isinstance(budget, float) and budget < 1 else int(budget)
    if not 0 < n <= n_rows:
        raise ValueError(f"select: budget {budget} gives {n} of {n_rows} stored rows")
    if method == "less-balanced":
        ids, per = less_balanced(store, list(feats), sub, n, device=device)
        return ids, per.max(1)
    ids, scores = less_scores(store, list(feats), sub, reduce="zmax" if method == "less-zmax" else "max",
                              device=device)
    order = np.argsort(-scores, kind="stable")[:n]
    return ids[order], scores[order]
