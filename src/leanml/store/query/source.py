"""Where a query's rows come from: a gradient store, or in-memory features, seen through a row subset.

`RowView` is the ONE adapter between the query layer and the scoring code in `leanml.store.search`:
it offers the read side of `GradientStore` (``checkpoint_names``, ``weights``, ``manifest.dim``,
``n_rows``, ``iter_blocks``, ``features``) restricted to a set of row positions, so ``topk``,
``score_all``, ``less_scores`` and ``FaissIndex`` run unchanged on just the filtered rows (filter
pushdown below the score matmul) and decode only those rows.

Hand-offs, and where copies happen:
* unfiltered fp32 store: a shard's memmapped codes are handed to torch as they are
  (``codec.decode`` is ``np.asarray``, ``torch.from_numpy`` shares memory): no copy;
* filtered rows: a gather (``codes[positions]``) reads only those rows from the memmap, and is a
  copy by necessity (the rows are not contiguous); other codecs decode into a fresh float32 block;
* cosine scores need normalized rows: a fresh block (torch ``normalize``), unavoidable;
* FAISS keeps its own copy of the vectors inside the index (its inverted lists own their storage);
* DuckDB results come back as Arrow (``to_arrow_table``) and the id column goes to numpy without a
  copy (``to_numpy(zero_copy_only=True)``).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from leanml.store.codecs import decode_blocks, scan_block_rows
from leanml.store.query.errors import QueryError
from leanml.store.view import StoreView


@dataclass
class _Manifest:
    """The part of `Manifest` the scoring code reads."""

    dim: int
    codec: str
    generation: int | None


class QuerySource:
    """Rows by position: ``ids`` (int64, one per row), ``read(checkpoint, positions)`` float32 rows."""

    root: Any
    manifest: _Manifest

    def checkpoint_names(self) -> list[str]:
        raise NotImplementedError

    def weights(self) -> np.ndarray:
        raise NotImplementedError

    def ids(self) -> np.ndarray:
        raise NotImplementedError

    def read(self, checkpoint: str, positions: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """float32 rows at sorted ``positions``; ``out``: a buffer of at least that many rows to decode into."""
        raise NotImplementedError

    def iter_all(self, checkpoint: str, block_rows: int,
                 reuse: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, float32 rows) of every row in blocks; ``reuse``: one decode buffer for all blocks."""
        raise NotImplementedError

    def has_metadata(self) -> bool:
        raise NotImplementedError

    def bytes_per_row(self) -> int:
        raise NotImplementedError

    def one_minus_p(self, checkpoint: str) -> np.ndarray | None:
        """Each row's stored ``1 - p`` (TRAK's Q weights) at ``checkpoint``, by position; None when not stored."""
        return None

    _con: Any = None

    @contextmanager
    def duckdb(self) -> Iterator[Any]:
        """This source's DuckDB connection with a ``metadata`` view (Parquet for a store, the Arrow table
        otherwise), made once (connecting costs ~50 ms); tables a step registers are dropped after it."""
        import duckdb

        if self._con is None:
            self._con = duckdb.connect()
            self._register_metadata(self._con)
        try:
            yield self._con
        finally:
            for name in ("rel", "other_t"):
                with suppress(duckdb.Error):
                    self._con.unregister(name)

    def _register_metadata(self, con: Any) -> None:
        raise NotImplementedError

    # position <-> id, computed once
    def positions_of(self, ids: np.ndarray) -> np.ndarray:
        """Sorted row positions of the given ids; ids the source does not hold are dropped."""
        if not hasattr(self, "_order"):
            all_ids = self.ids()
            self._order = np.argsort(all_ids, kind="stable")
            self._sorted = all_ids[self._order]
        ids = np.asarray(ids, dtype=np.int64)
        j = np.searchsorted(self._sorted, ids)
        j = np.minimum(j, max(len(self._sorted) - 1, 0))
        hit = (self._sorted[j] == ids) if len(self._sorted) else np.zeros(len(ids), bool)
        return np.unique(self._order[j[hit]])


class StoreSource(QuerySource):
    """A `GradientStore`: positions run over each checkpoint's shards in manifest order."""

    def __init__(self, store: Any) -> None:
        self.store, self.root = store, store.root
        m = store.manifest
        self.manifest = _Manifest(m.dim, m.codec, m.generation)
        self._ids = store.ids()
        # names and weights snapshot with the ids (a new generation gets a new source: `as_source`): a plan reads
        # them per call, and the store builds both from its manifest each time
        self._names = store.checkpoint_names()
        self._w = store.weights()
        self._w.setflags(write=False)
        self._offsets = {c: np.cumsum([0] + [s.rows for s in m.shards_of(c)]) for c in self._names}
        self._open: dict[str, list] = {}
        self._q: dict[str, np.ndarray | None] = {}

    def checkpoint_names(self) -> list[str]:
        return list(self._names)

    def weights(self) -> np.ndarray:
        return self._w

    def ids(self) -> np.ndarray:
        return self._ids

    def bytes_per_row(self) -> int:
        return self.store.codec.bytes_per_row(self.manifest.dim)

    def one_minus_p(self, checkpoint: str) -> np.ndarray | None:
        if checkpoint not in self._q:
            self._q[checkpoint] = self.store.one_minus_p(checkpoint)  # manifest shard order = position order
        return self._q[checkpoint]

    def _shards(self, checkpoint: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """Every shard's memmapped (ids, codes, aux), opened once per source (file opens dominate small scans)."""
        if checkpoint not in self._open:
            self._open[checkpoint] = [self.store._load_shard(s) for s in self.store.manifest.shards_of(checkpoint)]
        return self._open[checkpoint]

    def read(self, checkpoint: str, positions: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        off, shards = self._offsets[checkpoint], self._shards(checkpoint)
        codec, d = self.store.codec, self.manifest.dim
        into = out is not None and not codec.decodes_in_place
        parts, at = [], 0
        for si in np.unique(np.searchsorted(off, positions, side="right") - 1):
            lo, hi = np.searchsorted(positions, [off[si], off[si + 1]])
            local = positions[lo:hi] - off[si]
            _, codes, aux = shards[si]
            sub = None if aux is None else aux[local]
            if into:
                parts.append(codec.decode_into(codes[local], sub, d, out[at:]))
            else:
                parts.append(codec.decode(codes[local], sub, d))
            at += len(local)
        if into:
            return out[:at]
        if len(parts) == 1:  # one shard: the decoded rows as they are (a concatenate would copy them)
            return parts[0]
        return np.concatenate(parts) if parts else np.zeros((0, d), np.float32)

    def iter_all(self, checkpoint: str, block_rows: int,
                 reuse: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Like `GradientStore.iter_blocks` (contiguous memmap slices: fp32 rows reach torch uncopied)."""
        block_rows = scan_block_rows(self.manifest, block_rows)
        yield from decode_blocks(self.store.codec, self._shards(checkpoint), self.manifest.dim, block_rows, reuse)

    def has_metadata(self) -> bool:
        return bool(self.store.manifest.metadata)

    def _register_metadata(self, con: Any) -> None:
        if self.has_metadata():
            path = str(Path(self.root) / self.store.manifest.metadata["file"]).replace("'", "''")
            con.execute(f"CREATE VIEW metadata AS SELECT * FROM read_parquet('{path}')")


class ArraySource(QuerySource):
    """In-memory features ``[C, n, d]`` (or ``[n, d]``) with ids, checkpoint weights and optional metadata."""

    def __init__(self, features: np.ndarray, ids: np.ndarray | None = None, *, weights: Any = None,
                 metadata: pa.Table | dict | None = None, name: str = "arrays",
                 one_minus_p: np.ndarray | None = None) -> None:
        x = np.asarray(features, dtype=np.float32)
        x = x[None] if x.ndim == 2 else x
        if x.ndim != 3 or x.shape[1] == 0:
            raise QueryError("source", f"features must be [n, d] or [C, n, d] with n >= 1, got {x.shape}")
        self.x = x
        self._ids = np.arange(x.shape[1], dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        if len(self._ids) != x.shape[1] or len(np.unique(self._ids)) != len(self._ids):
            raise QueryError("source", f"ids must be {x.shape[1]} unique integers, got {len(self._ids)}")
        self._w = np.ones(x.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
        if len(self._w) != x.shape[0]:
            raise QueryError("source", f"{x.shape[0]} checkpoints but {len(self._w)} weights")
        self.meta = pa.table(metadata) if isinstance(metadata, dict) else metadata
        self.root, self.manifest = name, _Manifest(x.shape[2], "fp32", None)
        self._q = None if one_minus_p is None else np.asarray(one_minus_p, dtype=np.float64).reshape(x.shape[0], -1)
        if self._q is not None and self._q.shape[1] != x.shape[1]:
            raise QueryError("source", f"one_minus_p must be [C, n] = [{x.shape[0]}, {x.shape[1]}], "
                                       f"got {np.shape(one_minus_p)}")

    def checkpoint_names(self) -> list[str]:
        return [f"c{i}" for i in range(self.x.shape[0])]

    def weights(self) -> np.ndarray:
        return self._w

    def ids(self) -> np.ndarray:
        return self._ids

    def bytes_per_row(self) -> int:
        return 4 * self.manifest.dim

    def one_minus_p(self, checkpoint: str) -> np.ndarray | None:
        return None if self._q is None else self._q[self.checkpoint_names().index(checkpoint)]

    def _c(self, checkpoint: str) -> np.ndarray:
        return self.x[self.checkpoint_names().index(checkpoint)]

    def read(self, checkpoint: str, positions: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            return self._c(checkpoint)[positions]
        return np.take(self._c(checkpoint), positions, axis=0, out=out[: len(positions)])

    def iter_all(self, checkpoint: str, block_rows: int,
                 reuse: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        x = self._c(checkpoint)  # float32 already: its blocks are views, nothing to reuse
        for a in range(0, len(x), block_rows):
            yield self._ids[a : a + block_rows], x[a : a + block_rows]

    def has_metadata(self) -> bool:
        return self.meta is not None

    def _register_metadata(self, con: Any) -> None:
        if self.meta is not None:
            con.register("metadata", self.meta)


class RowView:
    """The read side of a `GradientStore` over ``positions`` of ``source`` (None = every row)."""

    def __init__(self, source: QuerySource, positions: np.ndarray | None = None) -> None:
        self.source, self.root, self.manifest = source, source.root, source.manifest
        self.positions = None if positions is None else np.asarray(positions, dtype=np.int64)

    def checkpoint_names(self) -> list[str]:
        return self.source.checkpoint_names()

    def weights(self) -> np.ndarray:
        return self.source.weights()

    def n_rows(self, checkpoint: str | None = None) -> int:
        return len(self.source.ids()) if self.positions is None else len(self.positions)

    def ids(self, checkpoint: str | None = None) -> np.ndarray:
        all_ids = self.source.ids()
        return all_ids if self.positions is None else all_ids[self.positions]

    def has_one_minus_p(self) -> bool:
        return self.source.one_minus_p(self.checkpoint_names()[0]) is not None

    def one_minus_p(self, checkpoint: str | None = None) -> np.ndarray | None:
        """The source's ``1 - p`` over these positions, in `iter_blocks` order (None when not stored)."""
        q = self.source.one_minus_p(checkpoint or self.checkpoint_names()[0])
        return q if q is None or self.positions is None else q[self.positions]

    def iter_blocks(self, checkpoint: str | None = None, block_rows: int = 65536, *,
                    reuse: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, float32 rows) in blocks of at most ``block_rows`` rows: memory stays bounded. ``reuse``: one
        decode buffer for every block (a block is valid until the next is asked for; `GradientStore.iter_blocks`)."""
        checkpoint = checkpoint or self.checkpoint_names()[0]
        if self.positions is None:
            yield from self.source.iter_all(checkpoint, block_rows, reuse)
            return
        all_ids = self.source.ids()
        block_rows = scan_block_rows(self.manifest, block_rows)  # gathered blocks decode within the same cap
        buf = None
        for a in range(0, len(self.positions), block_rows):
            p = self.positions[a : a + block_rows]
            if reuse and buf is None:
                buf = np.empty((min(block_rows, len(self.positions)), self.manifest.dim), np.float32)
            yield all_ids[p], self.source.read(checkpoint, p, buf)

    def features(self, checkpoint: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        blocks = list(self.iter_blocks(checkpoint))
        if not blocks:
            return np.zeros(0, np.int64), np.zeros((0, self.manifest.dim), np.float32)
        return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])


_SOURCES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def as_source(obj: Any) -> QuerySource:
    """A `QuerySource` for an open gradient store (a `StoreView`, such as `GradientStore`) or an existing `QuerySource`.

    A path is not opened here: this module sits below ``store.py`` (whose ``explain``/``nshot`` are queries
    on this layer), so callers open it with ``GradientStore.open(path)`` first."""
    if isinstance(obj, QuerySource):
        return obj
    try:  # a store seen before: answered before the `StoreView` check (a runtime Protocol check walks its members)
        src = _SOURCES.get(obj)
    except TypeError:  # unhashable or not weak-referenceable: not a store
        src = None
    if src is not None and src.manifest.generation == obj.manifest.generation:
        return src
    if isinstance(obj, str | Path):
        raise QueryError("source", f"got the path {str(obj)!r}: open it first with GradientStore.open(path)")
    if isinstance(obj, StoreView):
        src = _SOURCES.get(obj)
        if src is None or src.manifest.generation != obj.manifest.generation:
            src = _SOURCES[obj] = StoreSource(obj)  # reused: its memmaps and DuckDB connection stay open
        return src
    raise QueryError("source", f"expected a GradientStore, a store path or an ArraySource, got {type(obj).__name__}")
