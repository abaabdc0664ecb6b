"""Fill a store from a `GradientComputer`: resumable ingest, and sharded extraction over processes or Ray tasks.

Each worker writes its own part (``parts/w###.json`` + its shards); ``merge_parts`` then lists every
part's shards in ``manifest.json``: no feature is copied. Workers get contiguous runs of whole batches
of the split's canonical order, so features are the same as a single-process run's.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leanml.grads.computer import GradientComputer
from leanml.grads.losses import ClassificationLoss
from leanml.grads.recipes import ExtractSpec
from leanml.store.metadata import add_metadata
from leanml.store.store import GradientStore

Progress = Callable[[int], None]  # called with the number of examples just handled


def ingest(store: GradientStore, computer: GradientComputer, batches: Iterable[tuple[np.ndarray, dict]],
           checkpoint: str | None = None, progress: Progress | None = None) -> int:
    """Compute and append features batch by batch; ids already committed are skipped (resume). Returns rows written."""
    checkpoint = checkpoint or store.checkpoint_names()[0]
    store.check_compatible(dim=computer.dim, spec=computer.spec(), model=computer.model_fingerprint(),
                           grad_type=computer.grad_type)
    store.set_fingerprint(checkpoint, computer.checkpoint_fingerprint())
    written = 0
    for ids, batch in batches:
        ids = np.asarray(ids, dtype=np.int64)
        keep = ~np.isin(ids, store.committed_ids(checkpoint))
        if keep.any():
            if not keep.all():
                idx = torch.as_tensor(np.flatnonzero(keep))
                batch = {k: v[idx] for k, v in batch.items()}
                ids = ids[keep]
            feats = computer.features(batch).detach().cpu().numpy()
            q = one_minus_p(computer, batch) if store.has_one_minus_p() else None
            written += store.append(ids, feats, checkpoint, one_minus_p=q)
        if progress is not None:
            progress(len(keep))
    return written


def one_minus_p(computer: GradientComputer, batch: dict) -> np.ndarray:
    """``1 - p(label)`` per example under the computer's model (TRAK's Q), whichever classifier output
    (loss or margin) its features differentiate."""
    from leanml.grads.losses import to_device

    assert isinstance(computer.loss_fn, ClassificationLoss)
    computer.model.eval()
    with torch.no_grad():
        return computer.loss_fn.one_minus_p(computer.model, to_device(batch, computer.device)).cpu().numpy()


def _metadata(spec: ExtractSpec) -> dict[str, list]:
    s = spec.load_split()
    n = spec.limit or len(s.ids)
    cols: dict[str, list] = {"id": [int(i) for i in s.ids[:n]], "dataset": [spec.dataset] * n,
                             "split": [spec.split] * n}
    if s.y is not None:
        cols["label"] = [int(v) for v in np.asarray(s.y[:n])]
    for k, v in s.meta.items():
        cols[k] = [x.item() if hasattr(x, "item") else x for x in list(v[:n])]
    if s.records:
        for k in s.records[0]:
            if k not in cols and k != "label":
                cols[k] = [r.get(k) if isinstance(r.get(k), (str, int, float)) else str(r.get(k))
                           for r in s.records[:n]]
    return cols


def create_for(spec: ExtractSpec, path: str | Path, codec: str = "fp32",
               built: tuple[Any, Any] | None = None) -> GradientStore:
    """Create (or reopen, checking it matches) the store a spec writes to."""
    model, _ = built or spec.build_model()
    _, _, gc = next(spec.computers(model))
    ckpts = [(f"c{i}", w) for i, w in enumerate(spec.weights or [1.0] * max(1, len(spec.checkpoints)))]
    # Classifiers: keep each row's 1 - p(label) for TRAK's Q weights (a causal LM's loss has no single label).
    q = isinstance(gc.loss_fn, ClassificationLoss)
    return GradientStore.create(path, dim=gc.dim, codec=codec, spec=gc.spec(), model=gc.model_fingerprint(),
                                grad_type=spec.grad_type, checkpoints=ckpts, extra={"extract_spec": spec.to_json()},
                                one_minus_p=q)


def run_part(spec_json: str, path: str, part: str, ids: list[int], threads: int | None = None,
             progress: Progress | None = None, built: tuple[Any, Any] | None = None) -> int:
    """One worker: rebuild the model from the spec and write features of ``ids`` into ``part`` for every checkpoint."""
    if threads:
        torch.set_num_threads(threads)
    import json

    spec = ExtractSpec(**json.loads(spec_json))
    store = GradientStore.open(path, part=part)
    store.remove_uncommitted()
    model, tok = built or spec.build_model()
    n = 0
    for name, _, gc in spec.computers(model):
        n += ingest(store, gc, spec.batches(ids, tok), name, progress)
    return n


def extract(spec: ExtractSpec, path: str | Path, *, codec: str = "fp32", workers: int = 1,
            backend: str = "process", progress: Progress | None = None) -> GradientStore:
    """Extract features for the whole spec into the store at ``path`` (resumable; parallel over ``workers``)."""
    if workers < 1:
        raise ValueError(f"extract: workers must be >= 1, got {workers}")
    if backend not in ("process", "ray"):
        raise ValueError(f"extract: backend must be 'process' or 'ray', got {backend!r}")
    built = spec.build_model() if workers == 1 else None
    store = create_for(spec, path, codec, built)
    add_metadata(store, _metadata(spec))
    ids = spec.ids()
    if workers == 1:
        store.remove_uncommitted()
        run_part(spec.to_json(), str(path), "main", ids.tolist(), progress=progress, built=built)
        return store.refresh()
    # Whole batches per worker, contiguous, so each batch is the one a single process would form.
    n_batches = -(-len(ids) // spec.batch_size)
    cuts = np.linspace(0, n_batches, workers + 1).round().astype(int) * spec.batch_size
    chunks = [ids[cuts[i] : cuts[i + 1]].tolist() for i in range(workers)]
    threads = max(1, (os.cpu_count() or 1) // workers)
    args = [(spec.to_json(), str(path), f"w{i:03d}", c, threads) for i, c in enumerate(chunks) if c]
    if backend == "ray":
        _run_ray(args)
    else:
        ctx = mp.get_context("spawn")
        with ctx.Pool(len(args)) as pool:
            pool.starmap(run_part, args)
    store.merge_parts()
    return store.refresh()


def _run_ray(args: list[tuple[Any, ...]]) -> None:
    """Ray tasks, one per part (a cluster: ``ray.init(address=...)`` before calling; else a local one starts)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=len(args), include_dashboard=False, log_to_driver=False)
    task = ray.remote(run_part)
    ray.get([task.remote(*a) for a in args])
