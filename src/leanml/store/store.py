"""`GradientStore`: an append-only, crash-safe directory of projected gradient features.

Layout::

    manifest.json                  the commit point (format version, dim, codec, spec, fingerprints, shards, tasks)
    shards/<ckpt>/<part>-<seq>.{codes,aux,ids,q}.npy immutable, memmap-able, sha256 in the manifest (q: 1 - p per row)
    parts/<part>.json              commits of a parallel writer, merged into manifest.json by merge_parts()
    tasks/<name>.npy               target-task features (float32 [C, n, d])
    metadata.parquet               one row per example id (DuckDB: store.sql("select ... from metadata"))

A shard is written to a temporary name, fsynced, renamed, and only then listed in an atomically
replaced manifest, so a reader (which reads the manifest once) never sees a partial shard, and a
writer killed at any point leaves at most unreferenced files that the next writer of that part deletes.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from leanml.io import atomic_write_bytes
from leanml.store.codecs import decode_blocks, get_codec, scan_block_rows
from leanml.store.hygiene import merged_shards, remove_temp_manifests, remove_unlisted_part_files
from leanml.store.manifest import (
    MANIFEST,
    Checkpoint,
    Manifest,
    Shard,
    StoreError,
    StoreMismatchError,
    locked,
    read_manifest,
    spec_hash,
    write_manifest,
)
from leanml.store.metadata import add_metadata as _add_metadata
from leanml.store.metadata import sql as _sql
from leanml.store.plan import planned_search as _planned_search
from leanml.store.search import topk as _topk
from leanml.store.tasks import add_task as _add_task
from leanml.store.tasks import select as _select
from leanml.store.view import check_name as _check_name

MAIN_PART = "main"


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


class GradientStore:
    """Open with ``GradientStore.create(path, ...)`` or ``GradientStore.open(path)``; see module docstring."""

    def __init__(self, root: Path, manifest: Manifest, part: str = MAIN_PART) -> None:
        self.root, self.manifest, self.part = root, manifest, part
        self.codec = get_codec(manifest.codec)
        self._committed: dict[str, np.ndarray] = {}

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, dim: int, codec: str = "fp32", spec: dict[str, Any],
               model: str, grad_type: str = "sgd", checkpoints: Sequence[tuple[str, float]] = (("c0", 1.0),),
               exist_ok: bool = True, extra: dict[str, Any] | None = None,
               one_minus_p: bool = False) -> GradientStore:
        """Create a store, or open an existing one after checking it matches (dim, codec, spec, model).

        ``one_minus_p=True``: every ``append`` must also give each row's ``1 - p`` (probability of its label
        under the checkpoint's model), which TRAK uses as its Q weights (`leanml.store.scoring.trak`)."""
        root = Path(path)
        get_codec(codec)
        if dim < 1:
            raise ValueError(f"GradientStore.create: dim must be >= 1, got {dim}")
        ckpts = [Checkpoint(_check_name("checkpoint", n), float(w)) for n, w in checkpoints]
        if not ckpts or len({c.name for c in ckpts}) != len(ckpts):
            raise ValueError(f"GradientStore.create: checkpoints must be non-empty and unique, got {checkpoints}")
        root.mkdir(parents=True, exist_ok=True)
        with locked(root):
            if (root / MANIFEST).exists():
                if not exist_ok:
                    raise StoreError(f"{root}: a store already exists here")
                store = cls.open(root)
                store.check_compatible(dim=dim, spec=spec, model=model, codec=codec, grad_type=grad_type)
                have = {c.name: c.weight for c in store.manifest.checkpoints}
                want = {c.name: c.weight for c in ckpts}
                if have != want:
                    raise StoreMismatchError(f"{root}: store has checkpoints {have}, asked for {want}")
                if store.manifest.one_minus_p != bool(one_minus_p):
                    raise StoreMismatchError(f"{root}: store has one_minus_p={store.manifest.one_minus_p}, "
                                             f"asked for {bool(one_minus_p)}")
            else:
                m = Manifest(dim=int(dim), codec=codec, spec=spec, model=model, grad_type=grad_type,
                             checkpoints=ckpts, extra=dict(extra or {}), one_minus_p=bool(one_minus_p))
                write_manifest(root / MANIFEST, m)
                return cls(root, m)
        store.remove_uncommitted()  # opened for writing: clear what a killed writer left (takes the lock)
        return store

    @classmethod
    def open(cls, path: str | Path, *, part: str = MAIN_PART) -> GradientStore:
        """Open for reading and for appending to ``part`` (one writer per part; ``remove_uncommitted`` cleans up)."""
        root = Path(path)
        if not root.is_dir():
            raise StoreError(f"{root}: no such store directory")
        store = cls(root, read_manifest(root / MANIFEST), _check_name("part", part))
        if part != MAIN_PART:
            store._load_part()
        return store

    def refresh(self) -> GradientStore:
        """Re-read the committed manifest (a reader picks up what writers committed since)."""
        self.manifest = read_manifest(self.root / MANIFEST)
        if self.part != MAIN_PART:
            self._load_part()
        self._committed.clear()
        return self

    def check_compatible(self, *, dim: int | None = None, spec: dict[str, Any] | None = None,
                         model: str | None = None, codec: str | None = None, grad_type: str | None = None) -> None:
        """Raise `StoreMismatchError` naming what differs from the manifest."""
        m = self.manifest
        if dim is not None and dim != m.dim:
            raise StoreMismatchError(f"{self.root}: features have dim {dim}, the store holds dim {m.dim}")
        if model is not None and model != m.model:
            raise StoreMismatchError(f"{self.root}: model fingerprint {model} differs from the store's {m.model} "
                                     "(a different architecture or parameter subset); use a new store")
        if spec is not None and spec_hash(spec) != spec_hash(m.spec):
            raise StoreMismatchError(f"{self.root}: projection/feature spec differs from the store's "
                                     f"(given {spec.get('projection', spec)}, "
                                     f"store {m.spec.get('projection', m.spec)}); "
                                     "use the same projection type, dim and seed, or a new store")
        if codec is not None and codec != m.codec:
            raise StoreMismatchError(f"{self.root}: codec {codec!r} differs from the store's {m.codec!r}")
        if grad_type is not None and grad_type != m.grad_type:
            raise StoreMismatchError(f"{self.root}: gradient type {grad_type!r} differs from the store's "
                                     f"{m.grad_type!r}")

    # ---- parts ---------------------------------------------------------------------------------
    def _part_path(self) -> Path:
        return self.root / "parts" / f"{self.part}.json"

    def _load_part(self) -> None:
        p = self._part_path()
        if p.exists():
            pm = Manifest.from_json(p.read_text(), str(p))
            self.manifest.shards = self.manifest.shards + [s for s in pm.shards if s.part == self.part
                                                          and s not in self.manifest.shards]

    def merge_parts(self) -> int:
        """Fold every committed part into manifest.json (no feature is copied); returns shards merged."""
        n = 0
        with locked(self.root):
            m = read_manifest(self.root / MANIFEST)
            parts = sorted((self.root / "parts").glob("*.json")) if (self.root / "parts").exists() else []
            have = {(s.checkpoint, s.part, s.seq) for s in m.shards}
            for p in parts:
                pm = Manifest.from_json(p.read_text(), str(p))
                for s in pm.shards:
                    if (s.checkpoint, s.part, s.seq) not in have:
                        m.shards.append(s)
                        n += 1
                for c in pm.checkpoints:
                    if c.fingerprint and m.checkpoint(c.name).fingerprint is None:
                        m.checkpoint(c.name).fingerprint = c.fingerprint
            self._check_no_duplicates(m)
            m.generation += 1
            write_manifest(self.root / MANIFEST, m)
            for p in parts:
                p.unlink()
        self.manifest = m
        self._committed.clear()
        return n

    def _check_no_duplicates(self, m: Manifest) -> None:
        for c in m.checkpoints:
            ids = [np.load(self.root / s.files["ids"], mmap_mode="r") for s in m.shards_of(c.name)]
            if ids:
                allid = np.concatenate(ids)
                if len(np.unique(allid)) != len(allid):
                    raise StoreError(f"{self.root}: parts overlap (duplicate example ids in checkpoint {c.name}); "
                                     "give each worker a disjoint set of ids")

    # ---- writing -------------------------------------------------------------------------------
    def committed_ids(self, checkpoint: str) -> np.ndarray:
        """Ids already stored for ``checkpoint`` (committed in the manifest or in this writer's part)."""
        if checkpoint not in self._committed:
            arrs = [np.load(self.root / s.files["ids"]) for s in self.manifest.shards_of(checkpoint)]
            self._committed[checkpoint] = np.concatenate(arrs) if arrs else np.zeros(0, np.int64)
        return self._committed[checkpoint]

    def set_fingerprint(self, checkpoint: str, fingerprint: str) -> None:
        """Bind a checkpoint to the weights its features come from; a different one later is refused."""
        c = self.manifest.checkpoint(checkpoint)
        if c.fingerprint is not None and c.fingerprint != fingerprint:
            raise StoreMismatchError(f"{self.root}: checkpoint {checkpoint!r} was computed with weights "
                                     f"{c.fingerprint}, these are {fingerprint}; use the same checkpoint")
        c.fingerprint = fingerprint

    def append(self, ids: np.ndarray, features: np.ndarray, checkpoint: str | None = None,
               one_minus_p: np.ndarray | None = None) -> int:
        """Append rows; ids already committed for the checkpoint are skipped. Returns rows written.

        ``one_minus_p`` (``[n]`` in [0, 1]) is required by, and only accepted by, stores created with
        ``one_minus_p=True``."""
        checkpoint = checkpoint or self.manifest.checkpoints[0].name
        self.manifest.checkpoint(checkpoint)
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] != len(ids):
            raise ValueError(f"append: features must be [n, d] with n = len(ids) = {len(ids)}, got {x.shape}")
        self.check_compatible(dim=x.shape[1])
        if len(np.unique(ids)) != len(ids):
            raise ValueError("append: ids within one call must be unique")
        if not np.isfinite(x).all():
            raise ValueError("append: features contain NaN or inf (check the loss and the checkpoint)")
        q = self._check_q(one_minus_p, len(ids))
        keep = ~np.isin(ids, self.committed_ids(checkpoint))
        ids, x = ids[keep], x[keep]
        q = None if q is None else q[keep]
        if len(ids) == 0:
            return 0
        codes, aux = self.codec.encode(x)
        seq = 1 + max((s.seq for s in self.manifest.shards if s.checkpoint == checkpoint and s.part == self.part),
                      default=-1)
        base = f"shards/{checkpoint}/{self.part}-{seq:06d}"
        blobs = {"codes": _npy_bytes(codes), "ids": _npy_bytes(ids)}
        if aux is not None:
            blobs["aux"] = _npy_bytes(aux)
        if q is not None:
            blobs["q"] = _npy_bytes(q)
        files, sums = {}, {}
        for role, data in blobs.items():
            rel = f"{base}.{role}.npy"
            atomic_write_bytes(self.root / rel, data)  # temp file, fsync, rename, fsync dir
            files[role], sums[role] = rel, hashlib.sha256(data).hexdigest()
        self._commit(Shard(checkpoint, self.part, seq, len(ids), files, sums))
        self._committed[checkpoint] = np.concatenate([self.committed_ids(checkpoint), ids])
        return len(ids)

    def _check_q(self, q: np.ndarray | None, n: int) -> np.ndarray | None:
        if not self.manifest.one_minus_p:
            if q is not None:
                raise ValueError("append: one_minus_p given, but this store was created without it "
                                 "(GradientStore.create(..., one_minus_p=True) keeps it)")
            return None
        if q is None:
            raise ValueError("append: this store keeps each row's 1 - p (TRAK's Q); pass one_minus_p=[n] values")
        q = np.asarray(q, dtype=np.float32).reshape(-1)
        if len(q) != n or not np.all((q >= 0) & (q <= 1)):
            raise ValueError(f"append: one_minus_p must be {n} values in [0, 1]")
        return q

    def _commit(self, shard: Shard) -> None:
        if self.part == MAIN_PART:
            with locked(self.root):
                m = read_manifest(self.root / MANIFEST)
                if any((s.checkpoint, s.part, s.seq) == (shard.checkpoint, shard.part, shard.seq) for s in m.shards):
                    raise StoreError(f"{self.root}: another writer committed shard {shard.files['ids']}; "
                                     "use one writer per part (GradientStore.open(path, part=...))")
                m.shards.append(shard)
                for c in self.manifest.checkpoints:
                    if c.fingerprint:
                        m.checkpoint(c.name).fingerprint = c.fingerprint
                m.generation += 1
                write_manifest(self.root / MANIFEST, m)
                self.manifest = m
        else:
            self.manifest.shards.append(shard)
            pm = replace(self.manifest, shards=[s for s in self.manifest.shards if s.part == self.part])
            write_manifest(self._part_path(), pm)

    def remove_uncommitted(self) -> list[Path]:
        """Delete what a killed writer of this part left (`leanml.store.hygiene`); called on resume and by
        ``create``. Temporary manifests go under the manifest lock, which every manifest write holds."""
        with locked(self.root):
            removed = remove_temp_manifests(self.root)
            self.manifest.shards = merged_shards(self.manifest, read_manifest(self.root / MANIFEST))
        listed = {self.root / f for s in self.manifest.shards for f in s.files.values()}
        return removed + remove_unlisted_part_files(self.root, self.part, listed)

    # ---- reading -------------------------------------------------------------------------------
    def checkpoint_names(self) -> list[str]:
        return [c.name for c in self.manifest.checkpoints]

    def weights(self) -> np.ndarray:
        return np.array([c.weight for c in self.manifest.checkpoints], dtype=np.float64)

    def n_rows(self, checkpoint: str | None = None) -> int:
        checkpoint = checkpoint or self.checkpoint_names()[0]
        return sum(s.rows for s in self.manifest.shards_of(checkpoint))

    def _load_shard(self, s: Shard) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        try:
            codes = np.load(self.root / s.files["codes"], mmap_mode="r")
            ids = np.load(self.root / s.files["ids"], mmap_mode="r")
            aux = np.load(self.root / s.files["aux"], mmap_mode="r") if "aux" in s.files else None
        except (FileNotFoundError, ValueError, OSError) as e:
            raise StoreError(f"{self.root}: shard {s.files['codes']} is missing or unreadable ({e}); "
                             "run `leanml store verify`") from None
        if len(codes) != s.rows or len(ids) != s.rows:
            raise StoreError(f"{self.root}: shard {s.files['codes']} has {len(codes)} rows, manifest says {s.rows}")
        return ids, codes, aux

    def iter_blocks(self, checkpoint: str | None = None, block_rows: int = 65536, *,
                    reuse: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, decoded float32 rows) in blocks of at most ``block_rows``: memory stays bounded.
        ``reuse``: decode every block into one buffer, so a block is valid only until the next is asked for
        (for consumers that drop each block first, such as `search.scan`)."""
        checkpoint = checkpoint or self.checkpoint_names()[0]
        block_rows = scan_block_rows(self.manifest, block_rows)  # decoded blocks stay <= 4 MiB
        shards = (self._load_shard(s) for s in self.manifest.shards_of(checkpoint))
        yield from decode_blocks(self.codec, shards, self.manifest.dim, block_rows, reuse)

    def has_one_minus_p(self) -> bool:
        return self.manifest.one_minus_p

    def one_minus_p(self, checkpoint: str | None = None) -> np.ndarray | None:
        """Each row's stored ``1 - p`` at a checkpoint, in `iter_blocks` order; None for stores without it."""
        if not self.manifest.one_minus_p:
            return None
        checkpoint = checkpoint or self.checkpoint_names()[0]
        arrs = []
        for s in self.manifest.shards_of(checkpoint):
            try:
                q = np.load(self.root / s.files["q"])
            except (FileNotFoundError, ValueError, OSError) as e:
                raise StoreError(f"{self.root}: shard {s.files['q']} is missing or unreadable ({e}); "
                                 "run `leanml store verify`") from None
            if len(q) != s.rows:
                raise StoreError(f"{self.root}: shard {s.files['q']} has {len(q)} rows, manifest says {s.rows}")
            arrs.append(q.astype(np.float64))
        return np.concatenate(arrs) if arrs else np.zeros(0)

    def ids(self, checkpoint: str | None = None) -> np.ndarray:
        checkpoint = checkpoint or self.checkpoint_names()[0]
        arrs = [self._load_shard(s)[0] for s in self.manifest.shards_of(checkpoint)]
        return np.concatenate(arrs).astype(np.int64) if arrs else np.zeros(0, np.int64)

    def features(self, checkpoint: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All (ids, rows) of a checkpoint in memory (small stores; use iter_blocks for large ones)."""
        blocks = list(self.iter_blocks(checkpoint))
        if not blocks:
            return np.zeros(0, np.int64), np.zeros((0, self.manifest.dim), np.float32)
        return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])

    def bytes_per_example(self) -> int:
        return self.codec.bytes_per_row(self.manifest.dim) + 8  # + the int64 id

    def disk_bytes(self) -> int:
        return sum((self.root / f).stat().st_size for s in self.manifest.shards for f in s.files.values())

    # ---- integrity -----------------------------------------------------------------------------
    def verify(self) -> list[str]:
        """Recompute every shard's and task's sha256; returns a list of problems (empty when sound)."""
        problems = []
        entries = [(f, s.sha256[r]) for s in self.manifest.shards for r, f in s.files.items()]
        entries += [(t["file"], t["sha256"]) for t in self.manifest.tasks.values()]
        if self.manifest.metadata:
            entries.append((self.manifest.metadata["file"], self.manifest.metadata["sha256"]))
        for rel, want in entries:
            p = self.root / rel
            if not p.exists():
                problems.append(f"{rel}: missing")
                continue
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            if h.hexdigest() != want:
                problems.append(f"{rel}: checksum mismatch (expected {want[:12]}..., got {h.hexdigest()[:12]}...)")
        for c in self.manifest.checkpoints:
            ids = self.ids(c.name) if not problems else np.zeros(0)
            if len(np.unique(ids)) != len(ids):
                problems.append(f"checkpoint {c.name}: duplicate example ids")
        return problems

    def info(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "path": str(self.root), "format_version": m.version, "dim": m.dim, "codec": m.codec,
            "grad_type": m.grad_type, "model": m.model, "one_minus_p": m.one_minus_p,
            "projection": m.spec.get("projection", m.spec),
            "checkpoints": [{"name": c.name, "weight": c.weight, "rows": self.n_rows(c.name),
                             "fingerprint": c.fingerprint} for c in m.checkpoints],
            "shards": len(m.shards), "tasks": {k: v.get("rows") for k, v in m.tasks.items()},
            "bytes_per_example": self.bytes_per_example(), "disk_bytes": self.disk_bytes(),
            "metadata": m.metadata["file"] if m.metadata else None, "generation": m.generation,
            "pending_parts": sorted(p.stem for p in (self.root / "parts").glob("*.json"))
            if (self.root / "parts").exists() else [],
        }

    def _commit_manifest_change(self, change) -> None:  # noqa: ANN001
        with locked(self.root):
            m = read_manifest(self.root / MANIFEST)
            change(m)
            m.generation += 1
            write_manifest(self.root / MANIFEST, m)
            self.manifest = m if self.part == MAIN_PART else self.manifest
            if self.part != MAIN_PART:
                change(self.manifest)

    # ---- queries (thin façade over leanml.store.search / tasks / metadata) ---------------------
    def search(self, queries: Any, k: int = 10, *, plan: Any = None, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ids and scores per query: exact (``search.topk``, ``kw`` its options) or, with ``plan="auto"``
        (``kw``: ``plan.plan_search`` options) or a ``SearchPlan``, the planned way (exact CPU/GPU or IVF)."""
        return _topk(self, queries, k, **kw) if plan is None else _planned_search(self, queries, k, plan, **kw)

    def explain(self, example: Any, k: int = 10, **kw: Any) -> list[dict[str, Any]]:
        from leanml.store.query.lookups import explain  # the query layer sits above this façade

        return explain(self, example, k, **kw)

    def nshot(self, query: Any, k: int = 4, **kw: Any) -> list[dict[str, Any]]:
        from leanml.store.query.lookups import nshot

        return nshot(self, query, k, **kw)

    def add_task(self, name: str, features: Any, **kw: Any) -> dict[str, Any]:
        return _add_task(self, name, features, **kw)

    def select(self, task: str, budget: int | float, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
        return _select(self, task, budget, **kw)

    def add_metadata(self, columns: Any) -> int:
        return _add_metadata(self, columns)

    def sql(self, query: str) -> Any:
        return _sql(self, query)


def pid_part() -> str:
    """A part name unique to this process (for ad-hoc parallel writers)."""
    return f"p{os.getpid()}"
