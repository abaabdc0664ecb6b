"""Exact queries over a store in memory-bounded blocks (torch; CUDA when present).

Top-k search and raw similarity scans live here; LESS, TRAK and DsDM scores are thin callers of
`leanml.store.scoring`, the one implementation the selectors use too.
Scan scores combine checkpoints as LESS does: ``score(x, q) = sum_c w_c * sim(x_c, q_c)`` with ``sim`` the
cosine or inner product at checkpoint c. Only ``block_rows`` stored rows are decoded at a time, so
memory is ``O(block_rows * (d + n_queries) + n_queries * k)`` whatever the store's size.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from leanml.store import scoring
from leanml.store.codecs import scan_block_rows
from leanml.store.manifest import StoreError

if TYPE_CHECKING:
    from leanml.store.view import StoreView as GradientStore  # typed by what it uses: no import of store.py

METRICS = ("cosine", "ip")


def pick_device(device: str | None = None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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


def _scan_args(store: GradientStore, queries: Sequence[np.ndarray], metric: str,
               weights: Sequence[float] | None) -> tuple[list[str], np.ndarray]:
    """(checkpoint names, weights) of a scan, after checking the metric and one query set and weight each."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    names = store.checkpoint_names()
    w = store.weights() if weights is None else np.asarray(weights, dtype=np.float64)
    if len(w) != len(names) or len(queries) != len(names):
        raise ValueError(f"scan: need one query set and one weight per checkpoint ({len(names)})")
    return names, w


def scan(store: GradientStore, queries: Sequence[np.ndarray], *, metric: str = "cosine",
         weights: Sequence[float] | None = None, block_rows: int = 65536, device: str | None = None,
         normalize_queries: bool | None = None) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield (ids, scores ``[b, nq]``) block by block, scores summed over checkpoints with ``weights``."""
    names, w = _scan_args(store, queries, metric, weights)
    dev = pick_device(device)
    Q = []
    for q in queries:
        t = torch.as_tensor(np.asarray(q, dtype=np.float32), device=dev)
        norm_q = metric == "cosine" if normalize_queries is None else normalize_queries
        Q.append(torch.nn.functional.normalize(t, dim=1) if norm_q else t)
    if len(names) == 1:  # nothing to align: the store's blocks as they come (rechunking would copy them),
        # decoded into one reused buffer: each block is scored before the next is read
        gens = [store.iter_blocks(names[0], block_rows, reuse=True)]
    else:
        br = scan_block_rows(store.manifest, block_rows)  # what iter_blocks yields: align on it, not re-merge
        gens = [scoring.rechunk(store.iter_blocks(c, br), br) for c in names]
    for blocks in zip(*gens, strict=True):
        ids = blocks[0][0]
        S = None
        for c, (bid, x) in enumerate(blocks):
            if not np.array_equal(bid, ids):
                raise StoreError(f"{store.root}: checkpoint {names[c]} stores rows in a different order from "
                                 f"{names[0]}; ingest every checkpoint over the same ordered ids")
            with warnings.catch_warnings():  # read-only memmapped rows go to torch uncopied; nothing writes them
                warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
                X = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dev)
            s = X @ Q[c].T
            if metric == "cosine":  # x̂·q = (x·q)/|x|: divides the [b, nq] scores, never copies the rows
                s = s / torch.linalg.vector_norm(X, dim=1, keepdim=True).clamp_min(1e-12)
            s = s * float(w[c])
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
    if dev.type == "cpu" and store.n_rows(store.checkpoint_names()[0]) <= SMALL_ROWS:
        return _topk_small(store, qs, k, metric, weights, exclude_ids)
    best_s = torch.full((nq, 0), -torch.inf, device=dev)
    best_i = torch.zeros((nq, 0), dtype=torch.int64, device=dev)
    excl = None if exclude_ids is None else np.asarray(exclude_ids, dtype=np.int64)
    for ids, S in scan(store, qs, metric=metric, weights=weights, block_rows=block_rows, device=device):
        idt = torch.as_tensor(np.array(ids, dtype=np.int64), device=dev).expand(nq, -1)  # ids: small, copied
        if excl is not None:
            S = S.masked_fill(torch.as_tensor(np.isin(ids, excl), device=dev)[:, None], -torch.inf)
        cat_s = torch.cat([best_s, S.T], dim=1)
        cat_i = torch.cat([best_i, idt], dim=1)
        kk = min(k, cat_s.shape[1])
        best_s, pos = cat_s.topk(kk, dim=1)
        best_i = cat_i.gather(1, pos)
    return best_i.cpu().numpy(), best_s.cpu().numpy()


SMALL_ROWS = 4096  # at most this many rows on the CPU: `topk` scores them in NumPy (`_topk_small`)


def _topk_small(store: GradientStore, qs: list[np.ndarray], k: int, metric: str,
                weights: Sequence[float] | None, exclude_ids: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """`topk` over a few rows in NumPy, with the same scores and order (ties: the earlier row first).

    A 0.1% filter's 96 matches cost 0.53 ms through the torch scan after 25 MB of other work and 0.23 ms so
    (0.11 against 0.06 ms in a loop; 10^5 x 256 int8 store, one query; `benchmarks/query_micro.py`): at this
    size the cost is the code the call runs, not the arithmetic, and torch's dispatch is most of it."""
    names, w = _scan_args(store, qs, metric, weights)
    ids, S = None, None
    for c, q in enumerate(qs):
        blocks = list(store.iter_blocks(names[c], SMALL_ROWS))
        if not blocks:  # no rows: nothing to rank (as the block scan returns)
            return np.zeros((len(qs[0]), 0), np.int64), np.zeros((len(qs[0]), 0), np.float32)
        bid = np.concatenate([b for b, _ in blocks]) if len(blocks) != 1 else blocks[0][0]
        x = np.concatenate([x for _, x in blocks]) if len(blocks) != 1 else blocks[0][1]
        if ids is None:
            ids = bid
        elif not np.array_equal(bid, ids):
            raise StoreError(f"{store.root}: checkpoint {names[c]} stores rows in a different order from "
                             f"{names[0]}; ingest every checkpoint over the same ordered ids")
        q = np.asarray(q, dtype=np.float32)
        s = x @ q.T
        if metric == "cosine":  # as `scan`: unit queries, scores divided by the row norms
            s /= np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x)), 1e-12)[:, None]
            s /= np.maximum(np.sqrt(np.einsum("ij,ij->i", q, q)), 1e-12)[None, :]
        s *= np.float32(w[c])
        S = s if S is None else S + s
    assert ids is not None and S is not None
    if exclude_ids is not None:
        S[np.isin(ids, np.asarray(exclude_ids, dtype=np.int64))] = -np.inf
    S = np.ascontiguousarray(S.T)  # [nq, m], m >= 1 (no rows returned above)
    kk = min(k, S.shape[1])
    part = np.argpartition(-S, kk - 1, axis=1)[:, :kk]
    # best first; ties to the earlier row, so sort on (-score, position)
    ps = np.take_along_axis(S, part, 1)
    order = np.lexsort((part, -ps), axis=1)
    top = np.take_along_axis(part, order, 1)
    return np.asarray(ids, dtype=np.int64)[top], np.take_along_axis(S, top, 1).astype(np.float32)


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
                subtasks: Sequence | None = None, *, reduce: str = "max", block_rows: int = scoring.BLOCK_ROWS,
                device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """LESS influence of every stored row on a target task: (ids, scores ``[N]``), by `leanml.store.scoring.less`.

    ``score(x) = max_s mean_{j in s} sum_c w_c cos(x_c, t_jc)``: checkpoint weights (LESS: the
    checkpoint's average learning rate), mean over each subtask's target examples, max over subtasks
    (``reduce="mean"`` or ``"zmax"`` for the ablations).
    """
    return scoring.less(scoring.StoreBlocks(store), as_per_checkpoint(store, target), subtasks, reduce=reduce,
                        block_rows=block_rows, device=device)


def less_balanced(store: GradientStore, target: np.ndarray | Sequence[np.ndarray], subtasks: Sequence | None,
                  k: int, *, block_rows: int = scoring.BLOCK_ROWS, device: str | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Balanced LESS selection of ``k`` stored rows: (ids in take order, per-subtask scores ``[k, S]``).

    Each subtask ranks the rows by its own LESS score; the subtasks take their best untaken row in turn
    (`leanml.store.scoring.round_robin`)."""
    ids, per = scoring.less_per_subtask(scoring.StoreBlocks(store), as_per_checkpoint(store, target), subtasks,
                                        block_rows=block_rows, device=device)
    take = scoring.round_robin(per, k)
    return ids[take], per[take]


def trak_scores(store: GradientStore, queries: np.ndarray | Sequence[np.ndarray], *, ridge: float = scoring.RIDGE,
                block_rows: int = scoring.BLOCK_ROWS, device: str | None = None,
                kernel_store: GradientStore | None = None) -> tuple[np.ndarray, np.ndarray]:
    """TRAK attribution scores (ids ``[N]``, scores ``[N, nq]``) by `leanml.store.scoring.trak`.

    ``mean_c[φ_c(i)ᵀ (Φ_cᵀΦ_c + λI)^-1 φ_c(q)] * mean_c[1 - p_c(i)]`` (Park et al., 2023, eq. 11), with the
    store's per-row ``1 - p`` (stores created with ``one_minus_p=True``; others use Q = 1 and warn).
    ``kernel_store``: the rows Φ spans when ``store`` is a filtered view of them (default: ``store``).
    """
    kf = None if kernel_store is None else scoring.StoreBlocks(kernel_store)
    return scoring.trak(scoring.StoreBlocks(store), as_per_checkpoint(store, queries), ridge=ridge,
                        block_rows=block_rows, device=device, kernel_feats=kf)


def dsdm_scores(store: GradientStore, loss_queries: np.ndarray | Sequence[np.ndarray], *,
                ridge: float = scoring.RIDGE, block_rows: int = scoring.BLOCK_ROWS,
                device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """DsDM scores (ids, ``-theta`` ``[N]``): TRAK's datamodel of the mean loss of the target rows
    ``loss_queries`` (loss gradients), negated so that higher is better."""
    return scoring.dsdm(scoring.StoreBlocks(store), as_per_checkpoint(store, loss_queries), ridge=ridge,
                        block_rows=block_rows, device=device)
