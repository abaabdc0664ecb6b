"""Row codecs for stored features: fp32, fp16, bf16, int8 and int4 (per-row absmax scale), int2 (per-block
absmax scale) and 1-bit sign (per-row norm).

Every codec turns ``[n, d]`` float32 rows into fixed-size ``codes`` (a 2-D numpy array, memmap-able)
plus an optional float32 ``aux`` (``[n]`` per-row scale, or ``[n, blocks]``), and back. Stated
round-trip errors, per element, returned by ``Codec.error_bound`` and checked by one contract test
over every registered codec: fp32 exact; fp16 relative <= 2**-11 (normal range); bf16 <= 2**-8; int8
absolute <= max|x|/254; int4 <= max|x|/14 (levels -7..7, QLESS's absmax); int2 <= max_block|x|/3
(4 levels +-0.5, +-1.5 times max/1.5, blocks of 64); sign keeps only the signs and the row's L2 norm, so
the decoded row is ``sign(x) * ||x|| / sqrt(d)``: its cosine with ``x`` equals ``||x||_1 / (sqrt(d) ||x||_2)``.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from leanml.store.manifest import Manifest

DECODE_BLOCK_BYTES = 4 << 20


class Codec(ABC):
    """Encode/decode rows; ``bytes_per_row(d)`` is the on-disk cost per example (codes + aux)."""

    name: str
    has_aux: bool = False
    decodes_in_place: bool = False  # True: decode returns a view of the codes (no new float32 block)

    def block_rows(self, block_rows: int, d: int) -> int:
        """Rows per decoded block for a scan asking for ``block_rows``: at most 4 MiB of float32, so a block
        is still in cache when the score matmul and the row norms read it back. Larger blocks went out to
        memory and back: a scan's work per block over 10^5 int8 rows at d = 256 (decode, 8 score columns, row
        norms) took 20.9 ms in 16 MiB blocks and 17.1 ms in 4 MiB ones; above 32 MiB glibc also maps every
        block fresh, so each page-faults anew (`benchmarks/query_micro.py`, ``decode``)."""
        if self.decodes_in_place:
            return block_rows
        return max(1, min(block_rows, DECODE_BLOCK_BYTES // (4 * max(d, 1))))

    @abstractmethod
    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``[n, d]`` float32 -> (codes ``[n, c]``, aux ``[n]`` float32 or None)."""

    @abstractmethod
    def decode(self, codes: np.ndarray, aux: np.ndarray | None, d: int) -> np.ndarray:
        """Back to ``[n, d]`` float32."""

    def decode_into(self, codes: np.ndarray, aux: np.ndarray | None, d: int, out: np.ndarray) -> np.ndarray:
        """`decode` into ``out[:n]`` (a reused float32 buffer of at least n rows); returns that view. A scan
        that drops each block before the next reuses one buffer: no fresh pages per block."""
        n = len(codes)
        out[:n] = self.decode(codes, aux, d)
        return out[:n]

    @abstractmethod
    def bytes_per_row(self, d: int) -> int: ...

    @abstractmethod
    def error_bound(self, x: np.ndarray) -> np.ndarray:
        """Stated bound on ``|decode(encode(x)) - x|`` per element of ``x`` ``[n, d]``."""


class FP32(Codec):
    name = "fp32"
    decodes_in_place = True

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, None]:
        return np.ascontiguousarray(x, dtype=np.float32), None

    def decode(self, codes: np.ndarray, aux: np.ndarray | None, d: int) -> np.ndarray:
        return np.asarray(codes, dtype=np.float32)

    def bytes_per_row(self, d: int) -> int:
        return 4 * d

    def error_bound(self, x: np.ndarray) -> np.ndarray:
        return np.zeros_like(x, dtype=np.float32)


class FP16(Codec):
    name = "fp16"

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, None]:
        return np.asarray(x, dtype=np.float32).astype(np.float16), None

    def decode(self, codes: np.ndarray, aux: np.ndarray | None, d: int) -> np.ndarray:
        return np.asarray(codes).astype(np.float32)

    def bytes_per_row(self, d: int) -> int:
        return 2 * d

    def error_bound(self, x: np.ndarray) -> np.ndarray:
        return 2.0**-11 * np.abs(x) + 2.0**-25  # relative in the normal range; subnormal steps below 6.1e-5


class BF16(Codec):
    """bfloat16 stored as uint16 (numpy has no bf16): the top half of the float32 bits, rounded to nearest even."""

    name = "bf16"

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, None]:
        u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
        rounded = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
        return (rounded >> np.uint32(16)).astype(np.uint16), None

    def decode(self, codes: np.ndarray, aux: np.ndarray | None, d: int) -> np.ndarray:
        return (np.asarray(codes).astype(np.uint32) << np.uint32(16)).view(np.float32)

    def bytes_per_row(self, d: int) -> int:
        return 2 * d

    def error_bound(self, x: np.ndarray) -> np.ndarray:
        return 2.0**-8 * np.abs(x)


def _absmax_scale(x: np.ndarray, levels: float) -> np.ndarray:
    """``max|x| / levels`` along the last axis, float32; 1 for all-zero rows (they decode to zeros)."""
    s = np.abs(x).max(axis=-1) / np.float32(levels)
    return np.where(s > 0, s, 1.0).astype(np.float32)


class Int8(Codec):
    """Symmetric per-row int8: ``q = round(x / s)``, ``s = max|x| / 127``; aux is ``s``."""

    name = "int8"
    has_aux = True

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=np.float32)
        s = _absmax_scale(x, 127.0)
        return np.clip(np.rint(x / s[:, None]), -127, 127).astype(np.int8), s

    def decode(self, codes: np.ndarray, aux: np.ndarray | None, d: int) -> np.ndarray:
        # one pass, one float32 block (int8 -> float32 is exact, then the per-row scale)
        return np.multiply(codes, np.asarray(aux, dtype=np.float32)[:, None], dtype=np.float32)

    def decode_into(self, codes: np.ndarray, aux: np.ndarray | None, d: int, out: np.ndarray) -> np.ndarray:
        # torch's vectorized int8 -> float32 copy, then the scale in place: 2.5 ms per 10^5 x 256 rows into a
        # reused buffer, against 7.0 ms for NumPy's casting multiply (`benchmarks/query_micro.py`, decode);
        # the same float32 products, so the same values as `decode`
        import torch

        n = len(codes)
        with warnings.catch_warnings():  # read-only memmapped codes are only read
            warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
            dst = torch.from_numpy(out[:n])
            dst.copy_(torch.from_numpy(np.asarray(codes)))
            dst.mul_(torch.from_numpy(np.asarray(aux, dtype=np.float32))[:, None])
        return out[:n]

    def bytes_per_row(self, d: int) -> int:
        return d + 4

    def error_bound(self, x: np.ndarray) -> np.ndarray:
        return np.broadcast_to(np.abs(x).max(1, keepdims=True) / 254.0 * (1 + 1e-6), x.shape)


class Int4(Codec):
    """QLESS's 4-bit absmax quantization, per row: ``q = round(x / s)`` in -7..7, ``s = max|x| / 7``;
    two codes per byte (``q + 8`` in each nibble); aux is ``s``."""

    name = "int4"
    has_aux = True

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=np.float32)
        s = _absmax_scale(x, 7.0)
        q = (np.clip(np.rint(x / s[:, None]), -7, 7) + 8).astype(np.uint8)
        if q.shape[1] % 2:
            q = np.concatenate([q, np.full((len(q), 1), 8, np.uint8)], 1)
        return (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8), s

    def decode(self, codes: np.ndarray, aux: np.ndarray | None, d: int) -> np.ndarray:
        c = np.asarray(codes)
        q = np.empty((len(c), 2 * c.shape[1]), np.float32)
        q[:, 0::2], q[:, 1::2] = c & 0x0F, c >> 4
        return (q[:, :d] - 8.0) * np.asarray(aux, dtype=np.float32)[:, None]

    def bytes_per_row(self, d: int) -> int:
        return (d + 1) // 2 + 4

    def error_bound(self, x: np.ndarray) -> np.ndarray:
        return np.broadcast_to(np.abs(x).max(1, keepdims=True) / 14.0 * (1 + 1e-6), x.shape)


class Int2(Codec):
    """2-bit absmax quantization with one scale per block of ``BLOCK`` = 64 elements (QLESS's 2-bit store
    with finer scales): four levels ``(q - 1.5) * s``, q in 0..3, ``s = max_block|x| / 1.5``; four codes
    per byte; aux is the ``[n, ceil(d / 64)]`` scales."""

    name = "int2"
    has_aux = True
    BLOCK = 64

    def _blocks(self, x: np.ndarray) -> np.ndarray:
        n, d = x.shape
        nb = -(-d // self.BLOCK)
        xb = np.zeros((n, nb * self.BLOCK), np.float32)
        xb[:, :d] = x
        return xb.reshape(n, nb, self.BLOCK)

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=np.float32)
        xb = self._blocks(x)
        s = (np.abs(xb).max(axis=2) / np.float32(1.5)).astype(np.float32)  # [n, nb]; 0 for all-zero blocks
        q = np.clip(np.floor(xb / np.where(s > 0, s, 1.0)[..., None]) + 2, 0, 3).astype(np.uint8).reshape(len(x), -1)
        return (q[:, 0::4] | (q[:, 1::4] << 2) | (q[:, 2::4] << 4) | (q[:, 3::4] << 6)).astype(np.uint8), s

    def decode(self, codes: np.ndarray, aux: np.ndarray | None, d: int) -> np.ndarray:
        c = np.asarray(codes)
        q = np.empty((len(c), 4 * c.shape[1]), np.float32)
        for j in range(4):
            q[:, j::4] = (c >> (2 * j)) & 3
        s = np.repeat(np.asarray(aux, dtype=np.float32), self.BLOCK, axis=1)
        return ((q - 1.5) * s)[:, :d]

    def bytes_per_row(self, d: int) -> int:
        nb = -(-d // self.BLOCK)
        return nb * self.BLOCK // 4 + 4 * nb

    def error_bound(self, x: np.ndarray) -> np.ndarray:
        m = np.abs(self._blocks(np.asarray(x, dtype=np.float32))).max(2) / 3.0 * (1 + 1e-6)
        return np.repeat(m, self.BLOCK, axis=1)[:, : x.shape[1]]


class Sign1(Codec):
    """1-bit sign (QLESS-style): bits packed 8 per byte, aux is the row's L2 norm; zeros decode as +."""

    name = "sign1"
    has_aux = True

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=np.float32)
        return np.packbits(x >= 0, axis=1), np.linalg.norm(x, axis=1).astype(np.float32)

    def decode(self, codes: np.ndarray, aux: np.ndarray | None, d: int) -> np.ndarray:
        bits = np.unpackbits(np.asarray(codes), axis=1, count=d).astype(np.float32)
        scale = np.asarray(aux, dtype=np.float32) / np.float32(np.sqrt(d))
        return ((2.0 * bits - 1.0) * scale[:, None]).astype(np.float32, copy=False)

    def bytes_per_row(self, d: int) -> int:
        return (d + 7) // 8 + 4

    def error_bound(self, x: np.ndarray) -> np.ndarray:
        """Only the signs and the norm survive: ``|x| + ||x|| / sqrt(d)`` (the cosine is stated above)."""
        return np.abs(x) + np.linalg.norm(x, axis=1, keepdims=True) / np.sqrt(x.shape[1]) * (1 + 1e-5)


CODECS: dict[str, Codec] = {c.name: c for c in (FP32(), FP16(), BF16(), Int8(), Int4(), Int2(), Sign1())}


def get_codec(name: str) -> Codec:
    try:
        return CODECS[name]
    except KeyError:
        raise ValueError(f"codec must be one of {sorted(CODECS)}, got {name!r}") from None


def scan_block_rows(manifest: Manifest, block_rows: int) -> int:
    """`Codec.block_rows` for a store's manifest: the rows per block its scans read and align on."""
    return get_codec(manifest.codec).block_rows(block_rows, manifest.dim)


def decode_blocks(codec: Codec, shards: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray | None]], d: int,
                  block_rows: int, reuse: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, float32 rows) of every ``(ids, codes, aux)`` shard, ``block_rows`` at a time (already capped by
    `scan_block_rows`); ``reuse``: decode each block into one buffer, valid until the next block is asked for."""
    buf = None
    for ids, codes, aux in shards:
        for a in range(0, len(ids), block_rows):
            b = min(len(ids), a + block_rows)
            sub = None if aux is None else aux[a:b]
            if reuse and not codec.decodes_in_place:
                buf = np.empty((block_rows, d), np.float32) if buf is None else buf
                yield np.asarray(ids[a:b]), codec.decode_into(codes[a:b], sub, d, buf)
            else:
                yield np.asarray(ids[a:b]), codec.decode(codes[a:b], sub, d)
