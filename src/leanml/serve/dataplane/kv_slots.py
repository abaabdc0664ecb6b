"""The running batch's KV cache in preallocated row slots, so that joining and leaving copy one row, not the batch.

`SlotKV` holds, for every layer, K and V buffers of shape ``(max_rows, kv_heads, columns, head_dim)`` and a
``(max_rows, columns)`` attention mask. The running batch is rows ``[0, b)`` and the column window
``[start, end)``: every row is left-padded inside the window (mask 0 on its padding), and a decode step
writes its token at column ``end`` of every row in place. Compared with rebuilding a transformers
``DynamicCache`` (which re-concatenates the whole cache at every step and on every join or leave):

* **decode step**: one token per row is written (DynamicCache copies the whole cache: at 16 rows x
  ~100 tokens, 74 MB per step over SmolLM2's 30 layers);
* **join**: the new row's K/V are copied into slot ``b``, right-aligned at ``end``; if its prompt is longer
  than the window, the window grows to the left (the other rows' new columns are masked out);
* **leave**: the last row is moved into the leaving row's slot (swap-remove), and leading columns that
  are padding in every remaining row are dropped by moving ``start``: no copy of the other rows.

The buffers grow (doubling columns) or the window is moved to the left edge only when it reaches the
right edge. Padding columns hold finite values (buffers start at zero and only receive K/V the model
computed), so masked attention weights are exact zeros. `cache()` returns a transformers cache object
whose layers read and write these buffers; what the model computes per row is what it computes for the
row alone (the rows of a batched forward are independent; tested in test_generation_cb.py).
"""

from __future__ import annotations

from typing import Any

import torch


class SlotKV:
    """K/V and mask of a running batch of at most ``max_rows`` rows, in place (see the module docstring)."""

    def __init__(self, layers: int, max_rows: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 columns: int = 256) -> None:
        self.shape = (max_rows, kv_heads, columns, head_dim)
        self.k = [torch.zeros(self.shape, dtype=dtype) for _ in range(layers)]
        self.v = [torch.zeros(self.shape, dtype=dtype) for _ in range(layers)]
        self.mask_buf = torch.zeros(max_rows, columns, dtype=torch.long)
        self.b = self.start = self.end = 0
        self._cache = None

    @property
    def columns(self) -> int:
        return self.k[0].shape[-2]

    @property
    def mask(self) -> torch.Tensor:
        """The (rows, window) attention mask of the running batch (a view)."""
        return self.mask_buf[: self.b, self.start : self.end]

    @property
    def tokens_held(self) -> int:
        return int(self.mask.sum())

    def _relayout(self, columns: int, offset: int) -> None:
        """Move the window to start at column ``offset`` of buffers with ``columns`` columns."""
        w = self.end - self.start
        for bufs in (self.k, self.v):
            for i, x in enumerate(bufs):
                y = x.new_zeros((*x.shape[:2], columns, x.shape[-1]))
                y[: self.b, :, offset : offset + w] = x[: self.b, :, self.start : self.end]
                bufs[i] = y
        m = self.mask_buf.new_zeros((self.mask_buf.shape[0], columns))
        m[: self.b, offset : offset + w] = self.mask_buf[: self.b, self.start : self.end]
        self.mask_buf, self.start, self.end = m, offset, offset + w

    def _room(self, left: int, right: int) -> None:
        """Make sure ``left`` columns exist before ``start`` and ``right`` after ``end``."""
        w = self.end - self.start
        if self.start >= left and self.end + right <= self.columns:
            return
        need = left + w + right
        cols = self.columns if need + 32 <= self.columns else max(2 * self.columns, need + 64)
        self._relayout(cols, left)

    def ensure_rows(self, rows: int) -> None:
        """Room for ``rows`` rows (a raised ``max_batch``): the buffers are reallocated, the rows kept."""
        if rows <= self.shape[0]:
            return
        for bufs in (self.k, self.v):
            for i, x in enumerate(bufs):
                y = x.new_zeros((rows, *x.shape[1:]))
                y[: self.b] = x[: self.b]
                bufs[i] = y
        m = self.mask_buf.new_zeros((rows, self.mask_buf.shape[1]))
        m[: self.b] = self.mask_buf[: self.b]
        self.mask_buf = m
        self.shape = (rows, *self.shape[1:])

    # ---- batch surgery ----------------------------------------------------------------------------
    def join(self, layers: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> int:
        """Add one row whose per-layer K/V are ``(1, heads, length, dim)``; returns its row index."""
        if self.b == self.shape[0]:
            raise RuntimeError(f"SlotKV: all {self.shape[0]} rows are in use")
        if self.b == 0:
            self.start = self.end = 0
        w = self.end - self.start
        if length > w:
            self._room(length - w, 1)
            new_start = self.end - length
            self.mask_buf[: self.b, new_start : self.start] = 0
            self.start = new_start
        r = self.b
        a = self.end - length
        for li, (k, v) in enumerate(layers):
            self.k[li][r, :, a : self.end] = k[0]
            self.v[li][r, :, a : self.end] = v[0]
        self.mask_buf[r, self.start : a] = 0
        self.mask_buf[r, a : self.end] = 1
        self.b += 1
        return r

    def leave(self, rows: list[int]) -> list[int]:
        """Remove ``rows``; returns the new order as old row indices (row i of the batch is old row order[i])."""
        order = list(range(self.b))
        for r in sorted(rows, reverse=True):
            last = self.b - 1
            if r != last:
                for bufs in (self.k, self.v):
                    for x in bufs:
                        x[r, :, self.start : self.end] = x[last, :, self.start : self.end]
                self.mask_buf[r, self.start : self.end] = self.mask_buf[last, self.start : self.end]
                order[r] = order[last]
            order.pop()
            self.b -= 1
        if self.b == 0:
            self.start = self.end = 0
        else:
            live = (self.mask.sum(0) > 0).nonzero()
            self.start += int(live[0])
        return order

    # ---- one decode step ----------------------------------------------------------------------------
    def step_mask(self, tokens: int = 1) -> torch.Tensor:
        """Reserve ``tokens`` columns after the window for this step's tokens; the mask covering them."""
        self._room(0, tokens)
        self.mask_buf[: self.b, self.end : self.end + tokens] = 1
        return self.mask_buf[: self.b, self.start : self.end + tokens]

    def advance(self, tokens: int = 1) -> None:
        """The step's forward has written its tokens: the window now ends after them."""
        self.end += tokens
        for layer in self._cache.layers:
            layer.refresh()

    def cache(self):
        """The transformers cache object over these buffers (one per SlotKV; layers write at ``end``)."""
        if self._cache is None:
            from transformers import DynamicCache

            self._cache = DynamicCache()
            self._cache.layers = [_slot_layer_class()(self, i) for i in range(len(self.k))]
        for layer in self._cache.layers:
            layer.refresh()
        return self._cache


_SLOT_LAYER: Any = None


def _slot_layer_class():
    """The transformers cache layer over one `SlotKV` layer (defined on first use: transformers loads lazily)."""
    global _SLOT_LAYER
    if _SLOT_LAYER is None:
        from transformers.cache_utils import DynamicLayer

        class _SlotLayer(DynamicLayer):
            def __init__(self, kv: SlotKV, index: int) -> None:
                super().__init__()
                self.kv, self.index, self.is_initialized = kv, index, True
                self.device = kv.k[index].device

            def refresh(self) -> None:
                kv, i = self.kv, self.index
                self.keys = kv.k[i][: kv.b, :, kv.start : kv.end]
                self.values = kv.v[i][: kv.b, :, kv.start : kv.end]

            def update(self, key_states, value_states, *args, **kwargs):
                kv, i, m = self.kv, self.index, key_states.shape[-2]
                kv.k[i][: kv.b, :, kv.end : kv.end + m] = key_states
                kv.v[i][: kv.b, :, kv.end : kv.end + m] = value_states
                self.keys = kv.k[i][: kv.b, :, kv.start : kv.end + m]
                self.values = kv.v[i][: kv.b, :, kv.start : kv.end + m]
                return self.keys, self.values

        _SLOT_LAYER = _SlotLayer
    return _SLOT_LAYER
