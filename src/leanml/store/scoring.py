"""One implementation of every gradient score (LESS, its balanced take, TRAK, DsDM, inner product), streamed.

The selectors (`leanml.select.targeted`) and the store's queries (`leanml.store.search`) both call this
module, so selecting from a store and calling a selector on the same features give the same scores.
Training-side features arrive through one block interface, `FeatureBlocks`: `ArrayBlocks` wraps
per-checkpoint matrices already in memory, `StoreBlocks` decodes a `GradientStore` block by block. Only
``block_rows`` rows are decoded at a time; target features (a few hundred rows) are held whole.

Defaults (the only place they are set; docs/store.md "Scores" lists them):

- ``BLOCK_ROWS = 16384`` rows per block; arithmetic in float64 on the chosen torch device
  (CUDA when present), so block size and device change scores by rounding only (< 1e-9 relative).
- LESS: ``sum_c w_c cos(x_c, t_c)`` with the features' checkpoint weights ``w_c`` (LESS: the
  learning rate at checkpoint c), mean over each subtask's target rows, then ``reduce`` over subtasks:
  ``"max"`` (the paper), ``"mean"``, or ``"zmax"`` (each subtask's column standardized over the pool
  before the max, an ablation).
- TRAK: ``mean_c[phi_c(i)^T (Phi_c^T Phi_c + lambda_c I)^-1 phi_c(z)] * mean_c[1 - p_c(i)]`` (Park et
  al., 2023, eq. 11 with the ensemble over checkpoints), ``lambda_c = RIDGE * trace(Phi_c^T Phi_c) / d``
  (times the kernel's mean eigenvalue), ``RIDGE = leanml.grads.defaults.DAMPING`` (its docstring gives
  the value and the rule that fixed it); ``ridge=0`` inverts exactly. The ``1 - p`` (Q) weights come
  with the features; when they hold none, Q = 1 and a `MissingQWarning` says so.
- DsDM: ``-mean_z`` of TRAK's attribution to the target *loss* (targets differentiate the loss).
- inner: ``sum_c w_c x_c . t_c``.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from leanml.store.view import StoreView as GradientStore  # typed by what it uses: no import of store.py

from leanml.grads.defaults import DAMPING
from leanml.store.codecs import scan_block_rows

BLOCK_ROWS = 16384
RIDGE = DAMPING
LESS_REDUCE = ("max", "mean", "zmax")


class ScoringError(ValueError):
    """Features or targets a score cannot use (the message says what to change)."""


class MissingQWarning(UserWarning):
    """TRAK ran without its Q = 1 - p weights because the features carry none (Q = 1 was used)."""


@dataclass
class Block:
    """Rows of every checkpoint for the same examples: ``xs[c]`` is ``[b, d]``; ``q`` is ``[C, b]`` 1 - p or None."""

    ids: np.ndarray
    xs: list[np.ndarray]
    q: np.ndarray | None


class FeatureBlocks(ABC):
    """Training-side features: N rows at C checkpoints, read in blocks, in one fixed row order."""

    @property
    @abstractmethod
    def weights(self) -> np.ndarray:
        """One weight per checkpoint (LESS: the checkpoint's learning rate)."""

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @property
    @abstractmethod
    def has_q(self) -> bool:
        """Whether the rows carry TRAK's per-checkpoint ``1 - p`` (probability of the label)."""

    @abstractmethod
    def blocks(self, block_rows: int) -> Iterator[Block]:
        """Yield `Block` s of at most ``block_rows`` rows covering every row once, in order."""

    @property
    def n_checkpoints(self) -> int:
        return len(self.weights)


class ArrayBlocks(FeatureBlocks):
    """Features in memory: ``mats[c]`` is ``[N, d]``; ``q`` is ``[C, N]`` (or ``[N]``, every checkpoint) 1 - p."""

    def __init__(self, mats: Sequence[np.ndarray], weights: Sequence[float] | None = None,
                 q: np.ndarray | None = None, ids: np.ndarray | None = None) -> None:
        self.mats = [np.asarray(m) for m in mats]
        if not self.mats or {m.ndim for m in self.mats} != {2} or len({m.shape for m in self.mats}) != 1:
            raise ScoringError(f"features: need one [N, d] matrix per checkpoint, same shape, got "
                               f"{[m.shape for m in self.mats]}")
        n = self.mats[0].shape[0]
        self._w = np.ones(len(self.mats)) if weights is None else np.asarray(weights, dtype=np.float64)
        if self._w.shape != (len(self.mats),):
            raise ScoringError(f"features: {len(self.mats)} checkpoints but weights {self._w.tolist()}")
        self.q = None if q is None else np.array(np.broadcast_to(np.asarray(q, dtype=np.float64), (len(self.mats), n)))
        self.ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)

    @property
    def weights(self) -> np.ndarray:
        return self._w

    @property
    def dim(self) -> int:
        return self.mats[0].shape[1]

    @property
    def has_q(self) -> bool:
        return self.q is not None

    def blocks(self, block_rows: int) -> Iterator[Block]:
        n = self.mats[0].shape[0]
        for a in range(0, n, block_rows):
            b = min(n, a + block_rows)
            yield Block(self.ids[a:b], [m[a:b] for m in self.mats], None if self.q is None else self.q[:, a:b])


class StoreBlocks(FeatureBlocks):
    """A `GradientStore`'s rows, decoded block by block; every checkpoint must hold the same ordered ids."""

    def __init__(self, store: GradientStore) -> None:
        self.store = store
        self.names = store.checkpoint_names()

    @property
    def weights(self) -> np.ndarray:
        return self.store.weights()

    @property
    def dim(self) -> int:
        return self.store.manifest.dim

    @property
    def has_q(self) -> bool:
        return self.store.has_one_minus_p()

    def blocks(self, block_rows: int) -> Iterator[Block]:
        from leanml.store.manifest import StoreError

        counts = {c: self.store.n_rows(c) for c in self.names}
        if len(set(counts.values())) > 1:
            raise StoreError(f"{self.store.root}: checkpoints hold different row counts {counts}; finish ingesting")
        qs = [self.store.one_minus_p(c) for c in self.names] if self.has_q else None
        br = scan_block_rows(self.store.manifest, block_rows)  # iter_blocks' own size: no re-merge copy
        gens = [rechunk(self.store.iter_blocks(c, br), br) for c in self.names]
        at = 0
        for parts in zip(*gens, strict=True):
            ids = parts[0][0]
            for c, (bid, _) in enumerate(parts):
                if not np.array_equal(bid, ids):
                    raise StoreError(f"{self.store.root}: checkpoint {self.names[c]} stores rows in a different "
                                     f"order from {self.names[0]}; ingest every checkpoint over the same ordered ids")
            q = None if qs is None else np.stack([qc[at : at + len(ids)] for qc in qs])
            at += len(ids)
            yield Block(ids, [x for _, x in parts], q)


def rechunk(gen: Iterator[tuple[np.ndarray, np.ndarray]], n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
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


# ---- helpers ------------------------------------------------------------------------------------

def _device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _t(a: np.ndarray, dev: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a, dtype=np.float64), device=dev)


def _targets(feats: FeatureBlocks, target: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """Target features as one ``[n, d]`` float64 array per checkpoint, checked against the pool's."""
    C, d = feats.n_checkpoints, feats.dim
    mats = [target] if isinstance(target, np.ndarray) and target.ndim == 2 else list(target)
    t = [np.asarray(x, dtype=np.float64) for x in mats]
    if len(t) != C or any(x.ndim != 2 or x.shape[1] != d for x in t) or len({x.shape for x in t}) != 1:
        raise ScoringError(f"target features: need {C} checkpoint matrices [n, d={d}], same n; "
                           f"got {[x.shape for x in t]}")
    if not all(np.isfinite(x).all() for x in t):
        raise ScoringError("target features contain NaN or inf")
    return t


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-30)


def _collect(feats: FeatureBlocks, block_rows: int, dev: torch.device, fn: Any) -> tuple[np.ndarray, np.ndarray]:
    ids, out = [], []
    for blk in feats.blocks(block_rows):
        ids.append(blk.ids)
        out.append(fn(blk).cpu().numpy())
    if not ids:
        raise ScoringError("features hold no rows")
    return np.concatenate(ids), np.concatenate(out)


# ---- LESS ---------------------------------------------------------------------------------------

def subtask_groups(subtasks: Sequence[Any] | None, n: int) -> tuple[list[Any], list[np.ndarray]]:
    """(names, row indices) of each subtask, in sorted name order; None means one subtask."""
    labels = np.zeros(n, dtype=np.int64) if subtasks is None else np.asarray(subtasks)
    if len(labels) != n:
        raise ScoringError(f"subtasks: {len(labels)} labels for {n} target examples")
    names = list(np.unique(labels))
    return names, [np.flatnonzero(labels == u) for u in names]


def less_per_subtask(feats: FeatureBlocks, target: np.ndarray | Sequence[np.ndarray],
                     subtasks: Sequence[Any] | None = None, *, block_rows: int = BLOCK_ROWS,
                     device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids ``[N]``, scores ``[N, S]``): ``sum_c w_c`` mean over subtask s of ``cos(x_c, t_c)``, one column per subtask.

    The mean of cosines equals the cosine's numerator against the mean of the unit target rows, so each
    subtask costs one column.
    """
    dev = _device(device)
    ts = _targets(feats, target)
    _, groups = subtask_groups(subtasks, len(ts[0]))
    means = [torch.stack([_unit(_t(t, dev))[g].mean(0) for g in groups]) for t in ts]  # [S, d] per checkpoint
    w = feats.weights

    def fn(blk: Block) -> torch.Tensor:
        return sum(float(w[c]) * (_unit(_t(x, dev)) @ means[c].T) for c, x in enumerate(blk.xs))
    return _collect(feats, block_rows, dev, fn)


def reduce_subtasks(per_task: np.ndarray, reduce: str = "max") -> np.ndarray:
    """One LESS score per row from ``[N, S]``: max (paper), mean, or zmax (columns standardized, then max)."""
    if reduce == "max":  # over the transposed copy: numpy's max along a short last axis is 5x slower
        return np.ascontiguousarray(per_task.T).max(0)
    if reduce == "mean":
        return per_task.mean(1)
    if reduce == "zmax":
        sd = per_task.std(0)
        return ((per_task - per_task.mean(0)) / np.where(sd > 0, sd, 1.0)).max(1)
    raise ScoringError(f"reduce must be one of {LESS_REDUCE}, got {reduce!r}")


def less(feats: FeatureBlocks, target: np.ndarray | Sequence[np.ndarray], subtasks: Sequence[Any] | None = None,
         *, reduce: str = "max", block_rows: int = BLOCK_ROWS, device: str | None = None
         ) -> tuple[np.ndarray, np.ndarray]:
    """LESS influence of every row on the target (Xia et al., 2024): (ids ``[N]``, scores ``[N]``)."""
    if reduce not in LESS_REDUCE:
        raise ScoringError(f"reduce must be one of {LESS_REDUCE}, got {reduce!r}")
    ids, per = less_per_subtask(feats, target, subtasks, block_rows=block_rows, device=device)
    return ids, reduce_subtasks(per, reduce)


def round_robin(per_task: np.ndarray, k: int) -> np.ndarray:
    """Balanced take: rank the rows for each subtask (column) separately, then take the best not yet
    taken row of each subtask in turn until k rows are taken. Returns row positions in take order."""
    n, s = per_task.shape
    if not 0 < k <= n:
        raise ScoringError(f"budget k={k} must be in [1, {n}]")
    orders = [np.lexsort((np.arange(n), -per_task[:, j])) for j in range(s)]
    taken = np.zeros(n, dtype=bool)
    heads = [0] * s
    out: list[int] = []
    while len(out) < k:
        for j in range(s):
            o = orders[j]
            while heads[j] < n and taken[o[heads[j]]]:
                heads[j] += 1
            if heads[j] < n:
                taken[o[heads[j]]] = True
                out.append(int(o[heads[j]]))
                if len(out) == k:
                    break
    return np.asarray(out, dtype=np.int64)


# ---- TRAK / DsDM / inner ------------------------------------------------------------------------

def kernels(feats: FeatureBlocks, *, ridge: float = RIDGE, block_rows: int = BLOCK_ROWS,
            device: str | None = None) -> list[torch.Tensor]:
    """``Phi_c^T Phi_c + lambda_c I`` per checkpoint (float64, streamed); ``lambda_c = ridge * trace / d``."""
    if ridge < 0:
        raise ScoringError(f"ridge must be >= 0, got {ridge}")
    dev = _device(device)
    d = feats.dim
    K = [torch.zeros(d, d, dtype=torch.float64, device=dev) for _ in range(feats.n_checkpoints)]
    for blk in feats.blocks(block_rows):
        for c, x in enumerate(blk.xs):
            xt = _t(x, dev)
            K[c] += xt.T @ xt
    eye = torch.eye(d, dtype=torch.float64, device=dev)
    return [k + ridge * max(float(torch.trace(k)) / d, 1e-30) * eye for k in K]


def mean_q(blk: Block, dev: torch.device) -> torch.Tensor | None:
    return None if blk.q is None else _t(blk.q, dev).mean(0)


def trak(feats: FeatureBlocks, target: np.ndarray | Sequence[np.ndarray], *, ridge: float = RIDGE,
         block_rows: int = BLOCK_ROWS, device: str | None = None,
         kernel_feats: FeatureBlocks | None = None) -> tuple[np.ndarray, np.ndarray]:
    """TRAK attributions (ids ``[N]``, ``[N, T]``): the predicted change of each target's output (the function
    its features differentiate) from including each row; see the module docstring for the estimator.

    ``kernel_feats``: the rows the kernel ``Phi^T Phi`` spans when they are more than the rows scored (a filtered
    query scores a subset, but the training set, and so the kernel, is every stored row); default ``feats``."""
    dev = _device(device)
    ts = _targets(feats, target)
    Ks = kernels(kernel_feats if kernel_feats is not None else feats, ridge=ridge, block_rows=block_rows,
                 device=device)
    try:
        M = [torch.linalg.solve(K, _t(t, dev).T) for K, t in zip(Ks, ts, strict=True)]  # [d, T]
    except RuntimeError as e:  # torch.linalg.LinAlgError is a RuntimeError
        raise ScoringError(f"TRAK kernel is singular ({e}); use ridge > 0 or more rows than dimensions") from None
    if not feats.has_q:
        warnings.warn("TRAK: the features carry no 1 - p (label probability) per row, so Q = 1 was used; "
                      "store them (GradientStore.create(..., one_minus_p=True)) for TRAK's Q weights",
                      MissingQWarning, stacklevel=2)
    C = feats.n_checkpoints

    def fn(blk: Block) -> torch.Tensor:
        a = sum(_t(x, dev) @ M[c] for c, x in enumerate(blk.xs)) / C
        q = mean_q(blk, dev)
        return a if q is None else a * q[:, None]
    return _collect(feats, block_rows, dev, fn)


def trak_mean(feats: FeatureBlocks, target: np.ndarray | Sequence[np.ndarray], **kw: Any
              ) -> tuple[np.ndarray, np.ndarray]:
    """TRAK's selection score: (ids, mean attribution over the target rows ``[N]``)."""
    ids, a = trak(feats, target, **kw)
    return ids, a.mean(1)


def dsdm(feats: FeatureBlocks, loss_target: np.ndarray | Sequence[np.ndarray], **kw: Any
         ) -> tuple[np.ndarray, np.ndarray]:
    """DsDM (Engstrom et al., 2024): (ids, -theta) with theta the TRAK datamodel of the mean target loss
    (``loss_target`` differentiates the loss); higher = including the row lowers the target loss more."""
    ids, a = trak(feats, loss_target, **kw)
    return ids, -a.mean(1)


def inner(feats: FeatureBlocks, target: np.ndarray | Sequence[np.ndarray], *, block_rows: int = BLOCK_ROWS,
          device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, ``[N, T]``) of ``sum_c w_c x_c . t_c``."""
    dev = _device(device)
    ts = [_t(t, dev) for t in _targets(feats, target)]
    w = feats.weights

    def fn(blk: Block) -> torch.Tensor:
        return sum(float(w[c]) * (_t(x, dev) @ ts[c].T) for c, x in enumerate(blk.xs))
    return _collect(feats, block_rows, dev, fn)
