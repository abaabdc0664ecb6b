"""Gradient-matching coresets: CRAIG and GRAD-MATCH, on last-layer gradient features.

Both follow their papers' deep-network recipe: per-example gradients are approximated by the
gradient of the loss w.r.t. the last linear layer, [(softmax - onehot) (x) h, softmax - onehot],
computed under a warm-up model (or read from ``pool.features``), and selection runs per class
with per-class budgets proportional to class sizes.
"""

from __future__ import annotations

import heapq

import numpy as np
from scipy.optimize import nnls

from leanml.meter import Cost, stage
from leanml.select.base import Pool, Selection, SelectionError, Selector, Target, check_finite, register
from leanml.select.learner import last_layer_grad_features
from leanml.select.random import per_class_quotas
from leanml.select.warmup import warm_up


def gradient_features(pool: Pool, *, seed: int, warmup_epochs: int, rows: Pool | None = None) -> np.ndarray:
    """Last-layer gradient features of the pool (from ``pool.features``' last checkpoint if present)."""
    if pool.features is not None:
        return pool.features.rows(pool.features.n_checkpoints - 1)
    model, _, _ = warm_up(pool, epochs=warmup_epochs, seed=seed)
    with stage("infer"):  # a forward pass; the outer product below is host-side numpy
        err, h = pool.learner.last_layer(model, pool.X, pool.y)
    return check_finite("last-layer gradients", last_layer_grad_features(err, h))


# ---- CRAIG --------------------------------------------------------------------------------------

def facility_location(F: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Lazy-greedy maximisation of sum_i max_{j in S} s_ij with s_ij = max(d) - ||F_i - F_j||.

    Returns (chosen rows in selection order, weights = how many rows each chosen row is closest to).
    Memory: one (n, n) float32 similarity matrix.
    """
    n = len(F)
    if not 1 <= k <= n:
        raise SelectionError(f"facility_location: k must be in [1, {n}], got {k}")
    F = np.asarray(F, dtype=np.float32)
    sq = np.square(F).sum(1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * (F @ F.T), 0.0))
    S = (d.max() - d).astype(np.float32)
    cur = np.zeros(n, dtype=np.float32)
    heap = [(-float(g), j) for j, g in enumerate(S.sum(0))]
    heapq.heapify(heap)
    chosen: list[int] = []
    while len(chosen) < k and heap:
        _, j = heapq.heappop(heap)
        gain = float(np.maximum(S[:, j] - cur, 0).sum())
        if not heap or gain >= -heap[0][0] - 1e-9 * max(1.0, abs(gain)):
            chosen.append(j)
            np.maximum(cur, S[:, j], out=cur)
        else:
            heapq.heappush(heap, (-gain, j))
    sel = np.array(chosen)
    nearest = np.argmax(S[:, sel], axis=1)
    return sel, np.bincount(nearest, minlength=len(sel)).astype(np.float32)


@register
class CraigSelector(Selector):
    """CRAIG (Mirzasoleiman et al., 2020): per-class facility location on gradient features,
    lazy greedy; each chosen point is weighted by the number of points it covers (is closest to)."""

    method = "craig"
    needs = ("learner", "labels")

    def __init__(self, *, seed: int = 0, warmup_epochs: int = 3) -> None:
        super().__init__(seed=seed)
        self.warmup_epochs = int(warmup_epochs)

    def _select(self, pool: Pool, k: int, target: Target | None) -> Selection:
        F = gradient_features(pool, seed=self.seed, warmup_epochs=self.warmup_epochs)
        idx, w = [], []
        for c, q in per_class_quotas(pool.y, k).items():
            rows = np.flatnonzero(pool.y == c)
            sel, wc = facility_location(F[rows], q)
            idx.append(rows[sel])
            w.append(wc)
        return Selection(np.concatenate(idx), np.concatenate(w), None, Cost.zero())


# ---- GRAD-MATCH ---------------------------------------------------------------------------------

def omp_nnls(A: np.ndarray, b: np.ndarray, k: int, *, lam: float = 0.5, tol: float = 1e-3,
             ) -> tuple[np.ndarray, np.ndarray, float]:
    """Orthogonal matching pursuit with non-negative weights: greedily add the row of ``A`` most
    aligned with the residual, refit all weights by (ridge-regularised) NNLS, stop at ``k`` rows or
    when ||residual|| <= tol * ||b||. Returns (rows, weights, relative residual)."""
    A = np.asarray(A, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    bn = np.linalg.norm(b)
    if bn == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0), 0.0
    r, chosen, w = b.copy(), [], np.zeros(0)
    used = np.zeros(len(A), dtype=bool)
    while len(chosen) < k and np.linalg.norm(r) > tol * bn:
        proj = A @ r
        proj[used] = -np.inf
        j = int(np.argmax(proj))
        if not proj[j] > 0:
            break  # no remaining row can reduce the residual with a non-negative weight
        chosen.append(j)
        used[j] = True
        M = A[chosen].T
        if lam > 0:
            w, _ = nnls(np.vstack([M, np.sqrt(lam) * np.eye(len(chosen))]),
                        np.concatenate([b, np.zeros(len(chosen))]), maxiter=50 * max(10, len(chosen)))
        else:
            w, _ = nnls(M, b, maxiter=50 * max(10, len(chosen)))
        r = b - M @ w
    return np.array(chosen, dtype=np.int64), w, float(np.linalg.norm(r) / bn)


@register
class GradMatchSelector(Selector):
    """GRAD-MATCH (Killamsetty et al., 2021): per class, OMP with non-negative weights so that the
    weighted sum of chosen gradients matches the class's full training gradient (``match="train"``)
    or its validation gradient scaled to the class size (``match="val"``, uses ``pool.holdout``).

    Chosen rows that NNLS gives zero weight are dropped and, as in CORDS, the budget left over is
    filled uniformly at random with weight 1.
    """

    method = "grad-match"
    needs = ("learner", "labels")

    def __init__(self, *, seed: int = 0, warmup_epochs: int = 3, lam: float = 0.5, tol: float = 1e-3,
                 match: str = "train") -> None:
        super().__init__(seed=seed)
        if match not in ("train", "val"):
            raise SelectionError(f"grad-match: match must be 'train' or 'val', got {match!r}")
        if lam < 0 or tol < 0:
            raise SelectionError("grad-match: lam and tol must be >= 0")
        self.warmup_epochs, self.lam, self.tol, self.match = int(warmup_epochs), float(lam), float(tol), match

    def _select(self, pool: Pool, k: int, target: Target | None) -> Selection:
        if self.match == "val" and pool.holdout is None:
            raise SelectionError("grad-match with match='val' needs pool.holdout (a validation split)")
        F = gradient_features(pool, seed=self.seed, warmup_epochs=self.warmup_epochs)
        Fv = None
        if self.match == "val":
            model, _, _ = warm_up(pool, epochs=self.warmup_epochs, seed=self.seed)
            with stage("infer"):
                err, h = pool.learner.last_layer(model, pool.holdout.X, pool.holdout.y)
            Fv = last_layer_grad_features(err, h)
        idx, w, resid = [], [], {}
        for c, q in per_class_quotas(pool.y, k).items():
            rows = np.flatnonzero(pool.y == c)
            if Fv is None:
                tgt = F[rows].sum(0)
            else:
                vrows = np.flatnonzero(pool.holdout.y == c)
                tgt = (Fv[vrows].mean(0) * len(rows)) if len(vrows) else F[rows].sum(0)
            sel, wc, res = omp_nnls(F[rows], tgt, q, lam=self.lam, tol=self.tol)
            keep = wc > 0
            idx.append(rows[sel[keep]])
            w.append(wc[keep])
            resid[int(c)] = res
        idx, w = np.concatenate(idx), np.concatenate(w)
        short = k - len(idx)
        if short > 0:
            rest = np.setdiff1d(np.arange(len(pool)), idx)
            fill = np.random.default_rng(self.seed).choice(rest, size=short, replace=False)
            idx, w = np.concatenate([idx, fill]), np.concatenate([w, np.ones(short)])
        return Selection(idx, w, None, Cost.zero(), info={"relative_residual": resid, "random_fill": max(short, 0)})
