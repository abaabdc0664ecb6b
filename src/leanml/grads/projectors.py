"""Random projections of per-example gradients: one `Projector` base, a dense JL implementation.

The dense matrix is never held whole: it is generated block by block (``block_rows`` gradient
coordinates at a time) from ``(seed, block index)`` with a CPU ``torch.Generator``, so the same seed
gives the same matrix, bit for bit, on CPU and on GPU (blocks are generated on the CPU and moved).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import Any

import torch

PROJECTION_KINDS = ("gaussian", "rademacher")


class Projector(ABC):
    """Maps per-example gradients ``[B, D]`` to features ``[B, k]``; ``spec()`` identifies it exactly."""

    dim: int  # output dimension k

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """A JSON-able description that, with the seed, reproduces the projection (stored in the manifest)."""


def _block_seed(seed: int, block: int) -> int:
    """A 63-bit seed for one block, derived from the user seed so blocks are independent streams."""
    h = hashlib.blake2b(f"{seed}:{block}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def random_block(kind: str, rows: int, k: int, seed: int, block: int) -> torch.Tensor:
    """Rows ``[rows, k]`` of a JL matrix with entries of variance 1/k, identical on every device."""
    g = torch.Generator(device="cpu").manual_seed(_block_seed(seed, block))
    if kind == "gaussian":
        m = torch.randn(rows, k, generator=g, dtype=torch.float32)
    elif kind == "rademacher":
        m = torch.randint(0, 2, (rows, k), generator=g, dtype=torch.int8).to(torch.float32).mul_(2).sub_(1)
    else:
        raise ValueError(f"projection kind must be one of {PROJECTION_KINDS}, got {kind!r}")
    return m.mul_(1.0 / k**0.5)


class DenseProjector(Projector):
    """Dense Johnson-Lindenstrauss projection ``x -> x @ P``, ``P`` of shape [D, k], entries N(0, 1/k) or ±1/sqrt(k).

    Cost per batch of ``B`` examples: generating ``D*k`` random numbers (once per call, shared by
    the whole batch, unless cached) plus ``2*B*D*k`` FLOPs of matmul. Memory: ``block_rows*k*4``
    bytes for one block of ``P`` plus the ``B*D`` input (the caller's per-example gradients) and
    ``B*k`` output. With ``cache_bytes >= D*k*4`` the blocks are kept on the device after the first
    call, removing the generation cost (what makes it viable on a large GPU).

    Args:
        grad_dim: D, the number of gradient coordinates.
        dim: k, the output dimension.
        kind: "gaussian" or "rademacher".
        seed: the projection seed (stored in the store's manifest).
        block_rows: gradient coordinates per generated block (memory/speed trade-off).
        cache_bytes: keep generated blocks on the device while their total stays under this.
    """

    def __init__(self, grad_dim: int, dim: int, kind: str = "rademacher", seed: int = 0,
                 block_rows: int = 8192, cache_bytes: int = 0) -> None:
        if grad_dim < 1 or dim < 1:
            raise ValueError(f"DenseProjector: grad_dim and dim must be >= 1, got {grad_dim}, {dim}")
        if kind not in PROJECTION_KINDS:
            raise ValueError(f"DenseProjector: kind must be one of {PROJECTION_KINDS}, got {kind!r}")
        if block_rows < 1:
            raise ValueError(f"DenseProjector: block_rows must be >= 1, got {block_rows}")
        self.grad_dim, self.dim, self.kind, self.seed = int(grad_dim), int(dim), kind, int(seed)
        self.block_rows, self.cache_bytes = int(block_rows), int(cache_bytes)
        self._cache: dict[tuple[int, str], torch.Tensor] = {}

    def spec(self) -> dict[str, Any]:
        return {"type": "dense", "kind": self.kind, "grad_dim": self.grad_dim, "dim": self.dim,
                "seed": self.seed, "block_rows": self.block_rows}

    def block(self, b: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Block ``b`` of ``P`` (rows ``b*block_rows`` onward) on ``device``."""
        key = (b, str(device))
        if key in self._cache:
            return self._cache[key]
        rows = min(self.block_rows, self.grad_dim - b * self.block_rows)
        m = random_block(self.kind, rows, self.dim, self.seed, b).to(device)
        if (len(self._cache) + 1) * self.block_rows * self.dim * 4 <= self.cache_bytes:
            self._cache[key] = m
        return m

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        """Project ``grads`` ``[B, D]`` (any float dtype, any device) to ``[B, k]`` float32."""
        if grads.ndim != 2 or grads.shape[1] != self.grad_dim:
            raise ValueError(f"DenseProjector.project: expected [B, {self.grad_dim}], got {tuple(grads.shape)}")
        out = torch.zeros(grads.shape[0], self.dim, dtype=torch.float32, device=grads.device)
        for b, start in enumerate(range(0, self.grad_dim, self.block_rows)):
            blk = self.block(b, grads.device)
            out.addmm_(grads[:, start : start + blk.shape[0]].float(), blk)
        return out

    def project_segments(self, segments: list[torch.Tensor]) -> torch.Tensor:
        """Project the concatenation of ``segments`` (each ``[B, D_i]``) without concatenating them."""
        total = sum(s.shape[1] for s in segments)
        if total != self.grad_dim:
            raise ValueError(f"DenseProjector: segments have {total} coordinates, projector expects {self.grad_dim}")
        B, dev = segments[0].shape[0], segments[0].device
        out = torch.zeros(B, self.dim, dtype=torch.float32, device=dev)
        seg_i, seg_off = 0, 0
        for b, start in enumerate(range(0, self.grad_dim, self.block_rows)):
            blk = self.block(b, dev)
            r = 0
            while r < blk.shape[0]:
                seg = segments[seg_i]
                take = min(blk.shape[0] - r, seg.shape[1] - seg_off)
                out.addmm_(seg[:, seg_off : seg_off + take].float(), blk[r : r + take])
                r += take
                seg_off += take
                if seg_off == seg.shape[1]:
                    seg_i, seg_off = seg_i + 1, 0
            del start
        return out


class SparseProjector(Projector):
    """Sparse JL projection (Kane & Nelson, 2014, block construction): each input coordinate goes to
    ``s`` output buckets, one in each of ``s`` blocks of ``k/s`` columns, with a random sign and weight
    ``1/sqrt(s)``. ``s = 1`` is CountSketch.

    Unbiased for inner products, ``E[<Sx, Sy>] = <x, y>``, with variance at most a dense Gaussian
    map's, ``(||x||^2 ||y||^2 + <x, y>^2) / k`` (the cross terms of coordinates sharing a bucket;
    coordinates never collide with themselves). Cost per example: ``2*s*D`` FLOPs (scatter-adds),
    against ``2*D*k`` for a dense map; memory: ``s*D`` bucket indices and signs, generated once
    from the seed on the CPU (identical on every device), against ``D*k`` numbers.

    Args:
        grad_dim: D. dim: k (a multiple of ``s`` is not needed: block sizes differ by at most one).
        seed: projection seed. nnz: s, nonzeros per input coordinate (``1 <= s <= k``).
    """

    def __init__(self, grad_dim: int, dim: int, seed: int = 0, nnz: int = 4) -> None:
        if grad_dim < 1 or dim < 1:
            raise ValueError(f"SparseProjector: grad_dim and dim must be >= 1, got {grad_dim}, {dim}")
        if not 1 <= nnz <= dim:
            raise ValueError(f"SparseProjector: nnz must be in [1, dim={dim}], got {nnz}")
        self.grad_dim, self.dim, self.seed, self.nnz = int(grad_dim), int(dim), int(seed), int(nnz)
        g = torch.Generator(device="cpu").manual_seed(_block_seed(self.seed, -1))
        edges = torch.linspace(0, self.dim, self.nnz + 1).round().long()
        widths = (edges[1:] - edges[:-1]).tolist()
        self._buckets = torch.stack([int(edges[j]) + torch.randint(0, widths[j], (self.grad_dim,), generator=g)
                                     for j in range(self.nnz)])
        self._signs = (torch.randint(0, 2, (self.nnz, self.grad_dim), generator=g, dtype=torch.int8)
                       .float().mul_(2).sub_(1).mul_(self.nnz ** -0.5))
        self._on: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def spec(self) -> dict[str, Any]:
        return {"type": "sparse", "grad_dim": self.grad_dim, "dim": self.dim, "seed": self.seed, "nnz": self.nnz}

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._on:
            self._on[key] = (self._buckets.to(device), self._signs.to(device))
        return self._on[key]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``x`` ``[B, D]`` to ``[B, k]`` float32."""
        if x.ndim != 2 or x.shape[1] != self.grad_dim:
            raise ValueError(f"SparseProjector.project: expected [B, {self.grad_dim}], got {tuple(x.shape)}")
        buckets, signs = self._tables(x.device)
        x = x.float()
        out = torch.zeros(x.shape[0], self.dim, dtype=torch.float32, device=x.device)
        for j in range(self.nnz):
            out.index_add_(1, buckets[j], x * signs[j])
        return out

    def project_segments(self, segments: list[torch.Tensor]) -> torch.Tensor:
        """Project the concatenation of ``segments`` (each ``[B, D_i]``)."""
        return self.project(torch.cat([s.float() for s in segments], 1))
