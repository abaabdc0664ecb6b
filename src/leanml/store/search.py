"""Exact queries over a store in memory-bounded blocks (torch; CUDA when present).

Scores combine checkpoints as LESS does: ``score(x, q) = sum_c w_c * sim(x_c, q_c)`` with ``sim`` the
cosine or inner product at checkpoint c. Only ``block_rows`` stored rows are decoded at a time, so
memory is ``O(block_rows * (d + n_queries) + n_queries * k)`` whatever the store's size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from leanml.store.manifest import StoreError

if TYPE_CHECKING:
    from leanml.store.view import StoreView as GradientStore  # typed by what it uses: no import of store.py

METRICS = ("cosine", "ip")


def pick_device(device: str | None = None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _fixed(gen: Iterator[tuple[np.ndarray, np.ndarray]], n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Re-chunk (ids, rows) blocks into blocks of exactly n rows (the last may be shorter)."""
    buf_i: list[np.ndarray] = []
    buf_x: list[np.ndarray] = []
    have = 0
    for i, x in gen:
        buf_i.append(i)
        buf_x.append(x)
        have += len(i)
        while have >= n:
            ii, xx = np.concatenate(buf_i), np.concatenate(buf_x)
            yield ii[:n], xx[:n]
            buf_i, buf_x, have = [ii[n:]], [xx[n:]], have - n
    if have:
        yield np.concatenate(buf_i), np.concatenate(buf_x)


def as_per_checkpoint(store: GradientStore, queries: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """Queries as one ``[nq, d]`` array per checkpoint; a single ``[nq, d]`` is allowed for one-checkpoint stores."""
    C, d = len(store.checkpoint_names()), store.manifest.dim
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, None, :] if C == 1 else q[:, None, :]
    if q.ndim == 2:
        if C != 1:
            raise ValueError(f"queries: the store has {C} checkpoints; pass [C={C}, n, d] features")
        q = q[None]
    if q.ndim != 3 or q.shape[0] != C or q.shape[2] != d:
        raise ValueError(f"queries: expected shape [C={C}, n, d={d}], got {q.shape}")
    return [q[c] for c in range(C)]


def scan(store: GradientStore, queries: Sequence[np.ndarray], *, metric: str = "cosine",
         weights: Sequence[float] | None = None, block_rows: int = 65536, device: str | None = None,
         normalize_queries: bool | None = None) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield (ids, scores ``[b, nq]``) block by block, scores summed over checkpoints with ``weights``."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    names = store.checkpoint_names()
    w = store.weights() if weights is None else np.asarray(weights, dtype=np.float64)
    if len(w) != len(names) or len(queries) != len(names):
        raise ValueError(f"scan: need one query set and one weight per checkpoint ({len(names)})")
    dev = pick_device(device)
    Q = []
    for q in queries:
        t = torch.as_tensor(np.asarray(q, dtype=np.float32), device=dev)
        norm_q = metric == "cosine" if normalize_queries is None else normalize_queries
        Q.append(torch.nn.functional.normalize(t, dim=1) if norm_q else t)
    gens = [_fixed(store.iter_blocks(c, block_rows), block_rows) for c in names]
    for blocks in zip(*gens, strict=True):
        ids = blocks[0][0]
        S = None
        for c, (bid, x) in enumerate(blocks):
            if not np.array_equal(bid, ids):
                raise StoreError(f"{store.root}: checkpoint {names[c]} stores rows in a different order from "
                                 f"{names[0]}; ingest every checkpoint over the same ordered ids")
            X = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dev)
            if metric == "cosine":
                X = torch.nn.functional.normalize(X, dim=1)
            s = (X @ Q[c].T) * float(w[c])
            S = s if S is None else S + s
        yield ids, S
    counts = {c: store.n_rows(c) for c in names}
    if len(set(counts.values())) > 1:
        raise StoreError(f"{store.root}: checkpoints hold different row counts {counts}; finish ingesting them")


def topk(store: GradientStore, queries: np.ndarray | Sequence[np.ndarray], k: int = 10, *, metric: str = "cosine",
         weights: Sequence[float] | None = None, block_rows: int = 65536, device: str | None = None,
         exclude_ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k per query: (ids ``[nq, k]``, scores ``[nq, k]``), best first."""
    if k < 1:
        raise ValueError(f"topk: k must be >= 1, got {k}")
    qs = as_per_checkpoint(store, queries)
    nq = qs[0].shape[0]
    dev = pick_device(device)
    best_s = torch.full((nq, 0), -torch.inf, device=dev)
    best_i = torch.zeros((nq, 0), dtype=torch.int64, device=dev)
    excl = None if exclude_ids is None else np.asarray(exclude_ids, dtype=np.int64)
    for ids, S in scan(store, qs, metric=metric, weights=weights, block_rows=block_rows, device=device):
        idt = torch.as_tensor(ids, device=dev).expand(nq, -1)
        if excl is not None:
            S = S.masked_fill(torch.as_tensor(np.isin(ids, excl), device=dev)[:, None], -torch.inf)
        cat_s = torch.cat([best_s, S.T], dim=1)
        cat_i = torch.cat([best_i, idt], dim=1)
        kk = min(k, cat_s.shape[1])
        best_s, pos = cat_s.topk(kk, dim=1)
        best_i = cat_i.gather(1, pos)
    return best_i.cpu().numpy(), best_s.cpu().numpy()


def score_all(store: GradientStore, queries: np.ndarray | Sequence[np.ndarray], *, metric: str = "cosine",
              weights: Sequence[float] | None = None, reduce: str | None = None, block_rows: int = 65536,
              device: str | None = None, normalize_queries: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids ``[N]``, scores ``[N, nq]`` or ``[N]`` with ``reduce="max"|"mean"`` over queries) for every stored row."""
    out_i, out_s = [], []
    for ids, S in scan(store, as_per_checkpoint(store, queries), metric=metric, weights=weights,
                       block_rows=block_rows, device=device, normalize_queries=normalize_queries):
        if reduce == "max":
            S = S.max(dim=1).values
        elif reduce == "mean":
            S = S.mean(dim=1)
        elif reduce is not None:
            raise ValueError(f"reduce must be None, 'max' or 'mean', got {reduce!r}")
        out_i.append(ids)
        out_s.append(S.cpu().numpy())
    if not out_i:
        return np.zeros(0, np.int64), np.zeros((0,) if reduce else (0, len(as_per_checkpoint(store, queries)[0])))
    return np.concatenate(out_i), np.concatenate(out_s)


def less_scores(store: GradientStore, target: np.ndarray | Sequence[np.ndarray],
                subtasks: Sequence | None = None, *, block_rows: int = 65536,
                device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """LESS influence of every stored row on a target task: (ids, scores ``[N]``).

    ``score(x) = max_s mean_{j in s} sum_c w_c cos(x_c, t_jc)``: checkpoint weights (LESS: the
    checkpoint's average learning rate), mean over each subtask's target examples, max over subtasks.
    The mean of cosines is the cosine's numerator against the mean of normalized targets, so each
    subtask costs one query column.
    """
    qs = as_per_checkpoint(store, target)
    n = qs[0].shape[0]
    labels = np.zeros(n, dtype=np.int64) if subtasks is None else np.asarray(subtasks)
    if len(labels) != n:
        raise ValueError(f"less_scores: {len(labels)} subtask labels for {n} target examples")
    groups = [np.flatnonzero(labels == u) for u in np.unique(labels)]
    means = []
    for q in qs:
        qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
        means.append(np.stack([qn[g].mean(0) for g in groups]).astype(np.float32))
    # The stored rows are normalized by scan (metric cosine); the target means are averages of unit
    # vectors and must stay as they are, so query normalization is off.
    return score_all(store, means, metric="cosine", reduce="max", normalize_queries=False,
                     block_rows=block_rows, device=device)


def trak_kernel_inverse(store: GradientStore, checkpoint: str, *, ridge: float = 1e-3,
                        block_rows: int = 65536) -> np.ndarray:
    """``(Φᵀ Φ + λ I)^-1`` for one checkpoint's features Φ, streamed in blocks; ``λ = ridge * trace(ΦᵀΦ)/d``."""
    d = store.manifest.dim
    K = np.zeros((d, d), dtype=np.float64)
    for _, x in store.iter_blocks(checkpoint, block_rows):
        x64 = x.astype(np.float64)
        K += x64.T @ x64
    lam = ridge * max(np.trace(K) / d, 1e-30)
    return np.linalg.inv(K + lam * np.eye(d))


def trak_scores(store: GradientStore, queries: np.ndarray | Sequence[np.ndarray], *, ridge: float = 1e-3,
                block_rows: int = 65536, device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """TRAK attribution scores (ids ``[N]``, scores ``[N, nq]``): ``φ_i ᵀ (ΦᵀΦ + λI)^-1 φ_q`` averaged over checkpoints.

    This is TRAK's estimator (Park et al., 2023, eq. 11) without the per-example ``Q = diag(1 - p_i)``
    weights on the training side (they need the model's probabilities, which the store does not
    hold; multiply the returned rows by them if you have them) and with a small ridge ``λ`` so the
    kernel is invertible when there are fewer rows than dimensions.
    """
    qs = as_per_checkpoint(store, queries)
    names = store.checkpoint_names()
    pre = [q @ trak_kernel_inverse(store, c, ridge=ridge, block_rows=block_rows).astype(np.float32).T
           for q, c in zip(qs, names, strict=True)]
    w = np.full(len(names), 1.0 / len(names))
    return score_all(store, pre, metric="ip", weights=w, block_rows=block_rows, device=device)
