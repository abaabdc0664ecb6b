"""Query planning: predict each way of answering a top-k query with `leanml.hw`'s cost model, pick the cheapest.

Candidates (each costed op by op on the device that runs it):

* ``exact-cpu``: `search.topk` on the host, block by block: the codec's decode (elementwise passes that
  allocate fresh float32 blocks), the re-chunking copy, row normalization (cosine), the score matmul and
  the running top-k (``costmodel.search``), weights and checkpoint sums;
* ``exact-gpu``: the same with decode on the host, the decoded block sent over the device's host link
  (``host_transfer_time``) and the rest on the GPU (the GPU present, or a catalog device as a what-if);
* ``ivf``: `ann.FaissIndex` IVF-Flat: per query the coarse quantizer (``nlist`` centroids) plus a scan of the
  fraction ``nprobe / nlist`` of the rows; plus the index build (decode everything, k-means: 10 iterations on
  at most 256 points per centroid, assignment of every row) when no index is given.

Recall is not something a roofline predicts. Exact scans have recall 1; IVF is eligible only for a
``recall`` target below 1 and only with a MEASURED ``ivf_recall`` at least that high (from
`measure_ivf_recall`, or a stated figure such as store_bench's 0.994 at 10^5 rows, nprobe 16). Predictions
assume the shards are in the OS page cache (no disk reads) and FAISS on as many threads as the host device
was calibrated with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from leanml.hw import costmodel as cm
from leanml.store.codecs import get_codec

if TYPE_CHECKING:
    from leanml.store.view import StoreView as GradientStore  # typed by what it uses: no import of store.py

IVF_NPROBE = 16
KMEANS_ITERS, KMEANS_POINTS_PER_CENTROID = 10, 256  # FAISS IVF's coarse quantizer training defaults


@dataclass
class PlanCandidate:
    """One way to answer the query: its predicted time, memory, recall, and whether it may be chosen."""

    name: str  # "exact-cpu", "exact-gpu", "ivf"
    device: str  # cost-model device that scores (the host for exact-cpu and ivf)
    time_s: float  # predicted
    breakdown: dict[str, float]
    memory_bytes: float  # predicted peak on the scoring device (host bytes for exact-cpu / ivf)
    recall: float | None  # 1.0 for exact; the measured figure for ivf; None = not measured
    recall_source: str
    params: dict[str, Any] = field(default_factory=dict)
    eligible: bool = True
    why_not: str = ""


@dataclass
class SearchPlan:
    """The chosen candidate plus every alternative (cheapest first), for one query shape on one store."""

    choice: PlanCandidate
    candidates: list[PlanCandidate]
    n_rows: int
    n_queries: int
    k: int
    metric: str
    generation: int | None = None
    notes: list[str] = field(default_factory=list)
    index: Any = field(default=None, repr=False)  # a FaissIndex given to plan_search, reused by execute

    def to_dict(self) -> dict[str, Any]:
        cands = [dict(c.__dict__) for c in self.candidates]
        return {"choice": self.choice.name, "n_rows": self.n_rows, "n_queries": self.n_queries, "k": self.k,
                "metric": self.metric, "candidates": cands, "notes": list(self.notes)}


class PlanError(ValueError):
    """Bad planning arguments, or no candidate meets the recall target and memory budget."""


def _elementwise(n: float, in_bytes: float, out_bytes: float, alloc: bool = True):
    """An elementwise pass over n elements reading ``in_bytes`` and writing ``out_bytes`` per element."""
    return cm.OpSpec("elementwise", float(n), float(n * (in_bytes + out_bytes)), "fp32", "elementwise",
                  alloc_bytes=float(n * out_bytes) if alloc else 0.0)


def decode_ops(codec: str, rows: int, dim: int) -> list:
    """The codec's decode of ``rows`` x ``dim`` codes to float32 as the kernels numpy runs (fresh outputs)."""
    n = float(rows) * dim
    get_codec(codec)
    if codec == "fp32":
        return []  # the memmapped float32 rows are used as they are
    if codec in ("fp16",):
        return [_elementwise(n, 2, 4)]
    if codec == "bf16":
        return [_elementwise(n, 2, 4), _elementwise(n, 4, 4)]  # widen to uint32, shift left 16
    if codec == "int8":
        return [_elementwise(n, 1, 4), _elementwise(n, 4, 4)]  # to float32, times the row scale
    if codec == "int4":  # low and high nibbles (mask, shift) into float32 halves, minus 8, times the row scale
        return [_elementwise(n / 2, 1, 4), _elementwise(n / 2, 1, 4), _elementwise(n, 4, 4), _elementwise(n, 4, 4)]
    if codec == "int2":  # four shift-and-mask passes into float32, minus 1.5, the repeated block scales, times
        return [*[_elementwise(n / 4, 1, 4) for _ in range(4)], _elementwise(n, 4, 4), _elementwise(n, 0, 4),
                _elementwise(n, 8, 4)]
    if codec == "sign1":  # unpack bits, to float32, 2x, -1, times the row norm / sqrt(d)
        return [_elementwise(n, 1 / 8, 1), _elementwise(n, 1, 4), *[_elementwise(n, 4, 4) for _ in range(3)]]
    raise ValueError(f"decode_ops: no decode cost model for codec {codec!r}; add one beside the codec")


def _block_host_ops(codec: str, b: int, d: int) -> list:
    return [*decode_ops(codec, b, d), cm.OpSpec("copy", 0.0, 8.0 * b * d, "fp32", "re-chunk copy",
                                                alloc_bytes=4.0 * b * d)]


def _block_score_ops(b: int, d: int, C: int, nq: int, k: int, metric: str) -> list:
    """Kernels of one block on the scoring device: normalize, score matmul + top-k, weights, merge."""
    ops = []
    for _ in range(C):
        if metric == "cosine":
            ops += [cm.reduction(b * d, b), _elementwise(b * d, 4, 4)]  # row norms, divide
        ops += cm.search(nq, b, d)[:1]  # the score matmul
        ops.append(_elementwise(nq * b, 4, 4))  # times the checkpoint weight
    ops += [_elementwise(nq * b, 8, 4) for _ in range(C - 1)]  # sum over checkpoints
    ops.append(cm.OpSpec("copy", 0.0, 2.0 * 12 * nq * (b + k), "fp32", "cat scores and ids",
                         alloc_bytes=12.0 * nq * (b + k)))
    ops += cm.search(nq, b + k, d)[1:]  # the top-k pass over kept + new scores
    return ops


def _time(model: Any, ops: list) -> float:
    return sum(model.time(o) for o in ops)


def _exact(host: Any, dev: Any, *, n: int, d: int, C: int, codec: str, nq: int, k: int, metric: str,
           block_rows: int, gpu: bool) -> tuple[float, dict[str, float]]:
    """Predicted seconds of `search.topk` over n rows with ``block_rows`` blocks, by part."""
    hm, dm = cm.CostModel(host), cm.CostModel(dev)
    parts = {"decode": 0.0, "transfer": 0.0, "score": 0.0}
    full, rest = divmod(n, block_rows)
    for count, b in ((full, block_rows), (1, rest)):
        if count == 0 or b == 0:
            continue
        parts["decode"] += count * C * _time(hm, _block_host_ops(codec, b, d))
        if gpu:
            parts["transfer"] += count * C * cm.host_transfer_time(dev, 4.0 * b * d)
        parts["score"] += count * _time(dm, _block_score_ops(b, d, C, nq, k, metric))
    return sum(parts.values()), parts


def exact_memory(block_rows: int, d: int, C: int, nq: int, k: int, gpu: bool) -> tuple[float, float]:
    """(host bytes, scoring-device bytes) at the peak of an exact scan: every checkpoint's decoded block,
    decode temporaries and the normalized copy, plus scores and the running top-k (values and ids)."""
    scores = 4.0 * nq * block_rows + 12.0 * nq * (block_rows + k)
    if gpu:
        return 4.0 * block_rows * d * (C + 1), 4.0 * block_rows * d * 2 + scores
    mem = 4.0 * block_rows * d * (C + 2) + scores
    return mem, mem


def ivf_params(n: int, nprobe: int = IVF_NPROBE) -> tuple[int, int]:
    """(nlist, nprobe) as `FaissIndex` picks them for n rows."""
    nlist = min(max(1, min(int(4 * np.sqrt(n)), n // 39)), n)
    return nlist, min(nprobe, nlist)


def _ivf(host: Any, *, n: int, d: int, C: int, codec: str, nq: int, k: int, nlist: int, nprobe: int,
         build: bool) -> tuple[float, dict[str, float], float]:
    """Predicted (seconds, parts, peak host bytes) of IVF-Flat queries, plus the build when ``build``."""
    matmul, reduction, copy = cm.matmul, cm.reduction, cm.copy
    m, D = cm.CostModel(host), C * d
    probed = max(1.0, n * nprobe / nlist)
    query = [matmul(nq, nlist, D), reduction(nq * nlist, nq),
             cm.OpSpec("matmul", 2.0 * nq * probed * D, 4.0 * nq * probed * D, "fp32", "IVF list scan"),
             cm.OpSpec("reduction", nq * probed, 4.0 * nq * probed, "fp32", "IVF top-k", vclass="sort")]
    parts = {"query": _time(m, query), "build": 0.0}
    if build:
        n_train = min(n, KMEANS_POINTS_PER_CENTROID * nlist)
        ops = [*(op for _ in range(C) for op in _block_host_ops(codec, n, d)),
               reduction(n * D, n), _elementwise(n * D, 4, 4), _elementwise(n * D, 4, 4), copy(4.0 * n * D)]
        ops += [op for _ in range(KMEANS_ITERS)
                for op in (matmul(n_train, nlist, D), reduction(n_train * nlist, n_train),
                           _elementwise(n_train * D, 4, 4, alloc=False))]
        ops += [matmul(n, nlist, D), reduction(n * nlist, n), copy(4.0 * n * D)]
        parts["build"] = _time(m, ops)
    mem = 4.0 * n * D * (3 if build else 1) + 8.0 * n
    return sum(parts.values()), parts, mem


def _device(name: str | None, what: str) -> Any:
    from leanml.hw import HwError, get_device, local_device_path

    try:
        return get_device(name)
    except HwError as e:
        if name == "local":
            state = "is unreadable (see the warning)" if local_device_path().exists() else "does not exist"
            raise PlanError(f"plan_search: {what}='local': this machine's calibration {local_device_path()} "
                            f"{state}; run `leanml hw calibrate` (add --quick for seconds), or pass a catalog "
                            "device, e.g. host='dev_vm' (--host dev_vm)") from None
        raise PlanError(f"plan_search: {what}: {e}") from None


def _present_gpu() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return None
    from leanml.hw.calibrate import catalog_base_for_gpu

    base = catalog_base_for_gpu(torch.cuda.get_device_name(0))
    return base.id if base is not None else None


def plan_search(store: GradientStore, n_queries: int, k: int, *, device: Any = None, host: Any = "local",
                recall: float | None = None, memory_budget: float | None = None, ivf_recall: float | None = None,
                index: Any = None, metric: str = "cosine", block_rows: int = 65536) -> SearchPlan:
    """Predict every candidate plan for ``n_queries`` top-``k`` queries on ``store``; choose the cheapest eligible.

    ``host``: cost-model id of this machine's CPU ("local" after `leanml hw calibrate`). ``device``: a GPU
    catalog id to cost an exact GPU scan on (default: the CUDA GPU present, if any; a GPU that is not
    present is a what-if, listed but never chosen). ``recall``: the target (None or 1.0 = exact).
    ``memory_budget``: bytes; exact scans shrink their blocks to fit it. ``ivf_recall``: a measured IVF
    recall@k (see module docstring); ``index``: an existing `FaissIndex` (no build cost).
    """
    return plan_for_shape(store.n_rows(), store.manifest.dim, store.manifest.codec, len(store.checkpoint_names()),
                          n_queries, k, device=device, host=host, recall=recall, memory_budget=memory_budget,
                          ivf_recall=ivf_recall, index=index, metric=metric, block_rows=block_rows,
                          generation=store.manifest.generation)


def _validate(n_rows: int, dim: int, n_checkpoints: int, n_queries: int, k: int, recall: float | None,
              memory_budget: float | None, ivf_recall: float | None, metric: str, block_rows: int) -> None:
    for name, v in (("n_rows", n_rows), ("dim", dim), ("n_checkpoints", n_checkpoints), ("n_queries", n_queries),
                    ("k", k), ("block_rows", block_rows)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise PlanError(f"plan_search: {name} must be a whole number >= 1, got {v!r}")
    if recall is not None and not 0 < recall <= 1:
        raise PlanError(f"plan_search: recall must be in (0, 1] (None = exact), got {recall!r}")
    if ivf_recall is not None and not 0 <= ivf_recall <= 1:
        raise PlanError(f"plan_search: ivf_recall must be a measured recall in [0, 1], got {ivf_recall!r}")
    if memory_budget is not None and not memory_budget > 0:
        raise PlanError(f"plan_search: memory_budget must be > 0 bytes (None = unbounded), got {memory_budget!r}")
    if metric not in ("cosine", "ip"):
        raise PlanError(f"plan_search: metric must be 'cosine' or 'ip', got {metric!r}")


def plan_for_shape(n_rows: int, dim: int, codec: str, n_checkpoints: int, n_queries: int, k: int, *,
                   device: Any = None, host: Any = "local", recall: float | None = None,
                   memory_budget: float | None = None, ivf_recall: float | None = None, index: Any = None,
                   metric: str = "cosine", block_rows: int = 65536, generation: int | None = None) -> SearchPlan:
    """`plan_search` for a store of this shape (what-if sizes without building the store)."""
    _validate(n_rows, dim, n_checkpoints, n_queries, k, recall, memory_budget, ivf_recall, metric, block_rows)
    get_codec(codec)
    h = _device(host, "host")
    n, d, C, nq = int(n_rows), int(dim), int(n_checkpoints), int(n_queries)
    exact_wanted = recall is None or recall >= 1.0
    notes = ["predicted by leanml.hw's roofline; shards assumed in the OS page cache",
             "recall is measured, never predicted: exact scans have 1.0, IVF only the ivf_recall given"]

    def fit_block(gpu: bool) -> int:
        b = min(block_rows, n)
        if memory_budget is None:
            return b
        while b >= 1 and max(exact_memory(b, d, C, nq, k, gpu)) > memory_budget:
            b //= 2
        return b

    cands = []
    gpus: list[tuple[str, bool]] = []
    present = _present_gpu()
    if device is not None:
        gpus.append((device, device == present))
    elif present is not None:
        gpus.append((present, True))
    runs = [("exact-cpu", h.id, False, True)] + [("exact-gpu", g, True, r) for g, r in gpus]
    for name, dev_id, gpu, runnable in runs:
        dev = h if not gpu else _device(dev_id, "device")
        if gpu and dev.host_link is None:
            raise PlanError(f"plan_search: device {dev.id!r} has no host link (it is not an attached GPU); "
                            "pass a GPU catalog id such as 'h200'")
        b = fit_block(gpu)
        params = {"block_rows": max(b, 1), "torch_device": "cuda" if gpu else "cpu"}
        if b < 1:
            cands.append(PlanCandidate(name, dev.id, math.inf, {}, math.nan, 1.0, "exact", params, False,
                                       f"even a 1-row block exceeds memory_budget={memory_budget:.4g} bytes"))
            continue
        t, parts = _exact(h, dev, n=n, d=d, C=C, codec=codec, nq=nq, k=k, metric=metric, block_rows=b, gpu=gpu)
        mem = exact_memory(b, d, C, nq, k, gpu)[1 if gpu else 0]
        why = "" if runnable else f"what-if: no {dev.id} on this machine (prediction only)"
        cands.append(PlanCandidate(name, dev.id, t, parts, mem, 1.0, "exact", params, runnable, why))

    nlist, nprobe = ivf_params(n)
    if index is not None:
        nlist = int(getattr(index.index, "nlist", nlist))
        nprobe = int(getattr(index.index, "nprobe", nprobe))
    t, parts, mem = _ivf(h, n=n, d=d, C=C, codec=codec, nq=nq, k=k, nlist=nlist, nprobe=nprobe, build=index is None)
    why = ""
    if metric != "cosine":
        why = "the FAISS index serves the combined cosine only"
    elif exact_wanted:
        why = "approximate: an exact answer was asked for (recall None or 1.0)"
    elif ivf_recall is None:
        why = (f"recall {recall} asked, but no measured IVF recall was given (measure_ivf_recall, or ivf_recall=)")
    elif ivf_recall < recall:
        why = f"measured IVF recall {ivf_recall:.3f} is below the target {recall}"
    elif memory_budget is not None and mem > memory_budget:
        why = f"index needs {mem:.4g} bytes > memory_budget {memory_budget:.4g}"
    cands.append(PlanCandidate("ivf", h.id, t, parts, mem, ivf_recall, "measured" if ivf_recall is not None else
                               "not measured", {"nlist": nlist, "nprobe": nprobe, "build": index is None},
                               not why, why))
    cands.sort(key=lambda c: c.time_s)
    ok = [c for c in cands if c.eligible]
    if not ok:
        raise PlanError("plan_search: no plan meets the request: "
                        + "; ".join(f"{c.name}: {c.why_not}" for c in cands))
    return SearchPlan(ok[0], cands, n, nq, int(k), metric, generation, notes, index)


def execute(store: GradientStore, plan: SearchPlan, queries: Any,
            k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run the plan's choice: (ids ``[nq, k]``, scores), as `search.topk` or `FaissIndex.search` return them."""
    from leanml.store.ann import FaissIndex
    from leanml.store.search import as_per_checkpoint, topk

    k = plan.k if k is None else k
    nq = as_per_checkpoint(store, queries)[0].shape[0]
    if nq != plan.n_queries or k != plan.k or store.n_rows() != plan.n_rows:
        raise PlanError(f"execute: the plan is for {plan.n_queries} queries, k={plan.k}, {plan.n_rows} rows; got "
                        f"{nq}, k={k}, {store.n_rows()} rows: make a new plan with plan_search")
    c = plan.choice
    if c.name == "ivf":
        idx = plan.index or FaissIndex(store, "ivf", nlist=c.params["nlist"], nprobe=c.params["nprobe"])
        return idx.search(queries, k)
    return topk(store, queries, k, metric=plan.metric, block_rows=c.params["block_rows"],
                device=c.params["torch_device"])


def planned_search(store: GradientStore, queries: Any, k: int, plan: Any, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
    """``GradientStore.search(..., plan=...)``: ``plan="auto"`` plans now (``kw`` = `plan_search` options),
    a `SearchPlan` runs as made."""
    from leanml.store.search import as_per_checkpoint

    if isinstance(plan, str):
        if plan != "auto":
            raise ValueError(f"search: plan must be None, 'auto' or a SearchPlan, got {plan!r}")
        plan = plan_search(store, as_per_checkpoint(store, queries)[0].shape[0], k, **kw)
    elif kw:
        raise ValueError(f"search: options {sorted(kw)} go to plan_search, not with a ready SearchPlan")
    return execute(store, plan, queries, k)


def measure_ivf_recall(store: GradientStore, queries: Any, k: int = 10, *, nprobe: int = IVF_NPROBE,
                       index: Any = None) -> tuple[float, Any]:
    """Measured recall@k of IVF against the exact scan for these queries; returns (recall, the index)."""
    from leanml.store.ann import FaissIndex, recall_at_k
    from leanml.store.search import topk

    idx = index or FaissIndex(store, "ivf", nprobe=nprobe)
    exact, _ = topk(store, queries, k)
    approx, _ = idx.search(queries, k)
    return recall_at_k(approx, exact), idx


# ---- public costing helpers (used by leanml.store.query's physical planner) -----------------------
def exact_scan_time(host: Any, *, n: int, d: int, C: int, codec: str, nq: int, k: int, metric: str = "cosine",
                    block_rows: int = 65536) -> tuple[float, dict[str, float]]:
    """Predicted seconds (and parts) of `search.topk` over ``n`` rows on the host: the exact-cpu candidate."""
    h = _device(host, "host")
    return _exact(h, h, n=int(n), d=d, C=C, codec=codec, nq=nq, k=k, metric=metric,
                  block_rows=max(1, min(block_rows, int(n))), gpu=False)


def ivf_build_time(host: Any, *, n: int, d: int, C: int, codec: str, nlist: int) -> float:
    """Predicted seconds to decode ``n`` rows and build an IVF-Flat index with ``nlist`` lists."""
    h = _device(host, "host")
    t, parts, _ = _ivf(h, n=n, d=d, C=C, codec=codec, nq=1, k=1, nlist=nlist, nprobe=1, build=True)
    return parts["build"]


def host_device(host: Any) -> Any:
    """The cost-model `Device` for ``host`` (an id, ``"local"`` or a Device), with plan_search's errors."""
    return _device(host, "host")
