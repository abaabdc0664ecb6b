"""A row filter's state for `nearest`'s IVF plans, built once per filter and reused (Lucene's query cache).

The IVF plans need, per filter: its matches per IVF list (the walk skips lists holding none) and FAISS's
``IDSelectorBitmap`` of its rows (the bitmap scan; the post-filter tests its over-fetch against the same
bits). Building them is O(m) and O(n) work: at 10^5 rows and a 10% filter, building them in the call
took one planned query from 793 to 934 µs, cold, where FAISS's unfiltered search took 225 µs
(`benchmarks/query_micro.py`, ``planned_steps_10pct``, run of 2026-12-07 17:04). Lucene caches a
filter's matching documents as a bitset for the same reason.

The cache is keyed by the filter's position array itself, and only a **read-only** array is cached: it
cannot change while the entry holds it, so no stale entry can answer for other rows. `Query.where`
yields read-only arrays, cached per SQL text on the source (`ops.where_positions`), so one filter reused
across calls meets its state again. A writable array gets a state built for the call (the same answer, no
reuse). Entries are few (``MAX_ENTRIES``, least recently used dropped) and each holds n/8 bytes of bits.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import cached_property
from typing import Any

import numpy as np

MAX_ENTRIES = 8


def id_selector(n: int, positions: np.ndarray | None) -> tuple[Any, np.ndarray]:
    """FAISS's ``IDSelectorBitmap`` of ``positions`` among ``n`` rows (None: all), and the bit array it reads:
    keep the array alive while the selector is in use (FAISS holds only a pointer to it)."""
    import faiss

    mask = np.zeros(n, bool)
    mask[positions if positions is not None else slice(None)] = True
    bits = np.packbits(mask, bitorder="little")
    return faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits)), bits


class FilterState:
    """The IVF-side state of one filter: ``positions`` (sorted row positions; None = every row)."""

    def __init__(self, list_of: np.ndarray, nlist: int, positions: np.ndarray | None) -> None:
        self.positions, self._list_of, self._nlist = positions, list_of, int(nlist)
        self.n = len(list_of)

    @cached_property
    def mask_lists(self) -> np.ndarray:
        """Matches per IVF list ``[nlist]``."""
        lists = self._list_of if self.positions is None else self._list_of[self.positions]
        return np.bincount(lists, minlength=self._nlist)

    @cached_property
    def holding(self) -> int:
        """How many lists hold at least one match."""
        return int(np.count_nonzero(self.mask_lists))

    @cached_property
    def _selector_and_bits(self) -> tuple[Any, np.ndarray]:
        return id_selector(self.n, self.positions)

    @property
    def selector(self) -> Any:
        """FAISS's ``IDSelectorBitmap`` of the matches (this state keeps its bits alive: FAISS holds a pointer)."""
        return self._selector_and_bits[0]

    @property
    def bits(self) -> np.ndarray:
        """The filter as a little-endian bit array over the n rows (what the selector reads)."""
        return self._selector_and_bits[1]

    @property
    def built(self) -> bool:
        """Whether the matches per list and the bitmap are both built (a later call reuses them)."""
        return "mask_lists" in self.__dict__ and "_selector_and_bits" in self.__dict__

    def build(self) -> FilterState:
        """Build both now (calibration times this; the planner otherwise builds each when first needed)."""
        _ = self.mask_lists, self.selector
        return self

    def contains(self, rows: np.ndarray) -> np.ndarray:
        """Whether each row position (any shape; -1 = none) is a match, read from `bits`."""
        r = np.maximum(rows, 0)
        return (rows >= 0) & ((self.bits[r >> 3] >> (r & 7)) & 1).astype(bool)


def frozen(a: np.ndarray) -> bool:
    """Whether ``a``'s values cannot change: it and every array it views are read-only, down to a read-only
    buffer (a read-only view of a writable array can still change through that array)."""
    while isinstance(a, np.ndarray):
        if a.flags.writeable:
            return False
        if a.base is None:
            return True
        a = a.base
    try:
        return memoryview(a).readonly
    except TypeError:
        return False


def filter_state(ivf: Any, positions: np.ndarray | None) -> FilterState:
    """``positions``' state on ``ivf`` (an `ivf.IVF`): the cached one for a read-only array or None, else a
    fresh one (module docstring)."""
    cache: OrderedDict[Any, FilterState] = ivf.__dict__.setdefault("_filters", OrderedDict())
    cacheable = positions is None or frozen(positions)
    key = None if positions is None else id(positions)
    if cacheable:
        hit = cache.get(key)
        if hit is not None and hit.positions is positions:  # the very array (held, so its id is not reused)
            cache.move_to_end(key)
            return hit
    state = FilterState(ivf.list_of, ivf.index.nlist, positions)
    if cacheable:
        cache[key] = state
        while len(cache) > MAX_ENTRIES:
            cache.popitem(last=False)
    return state


def forget(ivf: Any, positions: np.ndarray) -> None:
    """Drop ``positions``' cached state from ``ivf`` (calibration's throwaway filters: they would otherwise hold
    their positions and bits in the cache until newer filters pushed them out)."""
    cache = ivf.__dict__.get("_filters")
    if cache is not None and id(positions) in cache and cache[id(positions)].positions is positions:
        del cache[id(positions)]
