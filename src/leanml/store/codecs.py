"""Row codecs for stored features: fp32, fp16, bf16, int8 (per-row scale) and 1-bit sign (per-row norm).

Every codec turns ``[n, d]`` float32 rows into fixed-size ``codes`` (a 2-D numpy array, memmap-able)
plus an optional per-row float32 ``aux`` column, and back. Stated round-trip errors (tested):
fp32 exact; fp16 relative error <= 2**-11 per element (normal range); bf16 <= 2**-8; int8 absolute
error <= scale/2 = max|x|/254 per element; sign keeps only the signs and the row's L2 norm, so the
decoded row is ``sign(x) * ||x|| / sqrt(d)``: its cosine with ``x`` equals ``||x||_1 / (sqrt(d) ||x||_2)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Codec(ABC):
    """Encode/decode rows; ``bytes_per_row(d)`` is the on-disk cost per example (codes + aux)."""

    name: str
    has_aux: bool = False

    @abstractmethod
    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``[n, d]`` float32 -> (codes ``[n, c]``, aux ``[n]`` float32 or None)."""

    @abstractmethod
    def decode(self, codes: np.ndarray, aux: np.ndarray | None, d: int) -> np.ndarray:
        """Back to ``[n, d]`` float32."""

    @abstractmethod
    def bytes_per_row(self, d: int) -> int: ...


class FP32(Codec):
    name = "fp32"

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, None]:
        return np.ascontiguousarray(x, dtype=np.float32), None

    def decode(self, codes: np.ndarray, aux: np.ndarray | None, d: int) -> np.ndarray:
        return np.asarray(codes, dtype=np.float32)

    def bytes_per_row(self, d: int) -> int:
        return 4 * d


class FP16(Codec):
    name = "fp16"

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, None]:
        return np.asarray(x, dtype=np.float32).astype(np.float16), None

    def decode(self, codes: np.ndarray, aux: np.ndarray | None, d: int) -> np.ndarray:
        return np.asarray(codes).astype(np.float32)

    def bytes_per_row(self, d: int) -> int:
        return 2 * d


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


class Int8(Codec):
    """Symmetric per-row int8: ``q = round(x / s)``, ``s = max|x| / 127``; aux is ``s``."""

    name = "int8"
    has_aux = True

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=np.float32)
        s = np.abs(x).max(axis=1) / 127.0
        s = np.where(s > 0, s, 1.0).astype(np.float32)
        return np.clip(np.rint(x / s[:, None]), -127, 127).astype(np.int8), s

    def decode(self, codes: np.ndarray, aux: np.ndarray | None, d: int) -> np.ndarray:
        assert aux is not None
        return np.asarray(codes).astype(np.float32) * np.asarray(aux, dtype=np.float32)[:, None]

    def bytes_per_row(self, d: int) -> int:
        return d + 4


class Sign1(Codec):
    """1-bit sign (QLESS-style): bits packed 8 per byte, aux is the row's L2 norm; zeros decode as +."""

    name = "sign1"
    has_aux = True

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=np.float32)
        return np.packbits(x >= 0, axis=1), np.linalg.norm(x, axis=1).astype(np.float32)

    def decode(self, codes: np.ndarray, aux: np.ndarray | None, d: int) -> np.ndarray:
        assert aux is not None
        bits = np.unpackbits(np.asarray(codes), axis=1, count=d).astype(np.float32)
        scale = np.asarray(aux, dtype=np.float32) / np.float32(np.sqrt(d))
        return ((2.0 * bits - 1.0) * scale[:, None]).astype(np.float32, copy=False)

    def bytes_per_row(self, d: int) -> int:
        return (d + 7) // 8 + 4


CODECS: dict[str, Codec] = {c.name: c for c in (FP32(), FP16(), BF16(), Int8(), Sign1())}


def get_codec(name: str) -> Codec:
    try:
        return CODECS[name]
    except KeyError:
        raise ValueError(f"codec must be one of {sorted(CODECS)}, got {name!r}") from None
