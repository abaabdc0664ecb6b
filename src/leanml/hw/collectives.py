"""Communication primitives of a system and their alpha-beta cost formulas.

``alpha`` is the per-message latency (s), ``B`` the per-direction link bandwidth (bytes/s), ``p`` the
number of participants and ``n`` the message size in bytes (the full vector for all-reduce, the
gathered result for all-gather). Formulas follow Thakur, Rabenseifner & Gropp, "Optimization of
Collective Communication Operations in MPICH" (IJHPCA 2005), which NCCL's ring algorithms match.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from leanml.hw.errors import HwError
from leanml.hw.schema import System


def point_to_point(n: float, bandwidth: float, latency: float) -> float:
    """alpha + n / B."""
    return latency + n / bandwidth


def ring_all_reduce(n: float, p: int, bandwidth: float, latency: float) -> float:
    """2 (p-1) alpha + 2 (p-1)/p * n / B (reduce-scatter then all-gather around the ring)."""
    if p <= 1:
        return 0.0
    return 2 * (p - 1) * latency + 2 * (p - 1) / p * n / bandwidth


def tree_all_reduce(n: float, p: int, bandwidth: float, latency: float) -> float:
    """2 ceil(log2 p) (alpha + n / B): binary-tree reduce then broadcast, unpipelined."""
    if p <= 1:
        return 0.0
    return 2 * math.ceil(math.log2(p)) * (latency + n / bandwidth)


def ring_all_gather(n: float, p: int, bandwidth: float, latency: float) -> float:
    """(p-1) alpha + (p-1)/p * n / B; ``n`` is the size of the gathered result."""
    if p <= 1:
        return 0.0
    return (p - 1) * latency + (p - 1) / p * n / bandwidth


def ring_reduce_scatter(n: float, p: int, bandwidth: float, latency: float) -> float:
    """(p-1) alpha + (p-1)/p * n / B; ``n`` is the size of the full input vector."""
    return ring_all_gather(n, p, bandwidth, latency)


def tree_broadcast(n: float, p: int, bandwidth: float, latency: float) -> float:
    """ceil(log2 p) (alpha + n / B)."""
    if p <= 1:
        return 0.0
    return math.ceil(math.log2(p)) * (latency + n / bandwidth)


def ring_broadcast(n: float, p: int, bandwidth: float, latency: float) -> float:
    """(p-1) alpha + n / B: pipelined along the ring in small chunks."""
    if p <= 1:
        return 0.0
    return (p - 1) * latency + n / bandwidth


_FORMULAS = {
    ("all_reduce", "ring"): ring_all_reduce,
    ("all_reduce", "tree"): tree_all_reduce,
    ("all_gather", "ring"): ring_all_gather,
    ("reduce_scatter", "ring"): ring_reduce_scatter,
    ("broadcast", "tree"): tree_broadcast,
    ("broadcast", "ring"): ring_broadcast,
}


def collective_time(system: System, primitive: str, n_bytes: float,
                    participants: Sequence[str] | None = None) -> float:
    """Time of ``primitive`` over ``participants`` (default: every instance) of ``system``.

    The ring runs over the participants in the given order; its bandwidth is that of the slowest
    link on it and its latency that of the slowest hop.
    """
    if n_bytes < 0:
        raise HwError(f"collective_time: n_bytes must be >= 0, got {n_bytes}")
    parts = list(participants) if participants is not None else list(system.instances)
    unknown = [q for q in parts if q not in system.instances]
    if unknown:
        raise HwError(f"collective_time: participants {unknown} are not instances of {system.id} "
                      f"({sorted(system.instances)})")
    if primitive == "point_to_point":
        if len(parts) != 2:
            raise HwError("collective_time: point_to_point needs exactly two participants")
        ln = system.link(parts[0], parts[1])
        return point_to_point(n_bytes, ln.bandwidth, ln.latency)
    if primitive not in system.collectives:
        raise HwError(f"collective_time: unknown primitive {primitive!r}; expected {sorted(system.collectives)}")
    p = len(parts)
    if p <= 1:
        return 0.0
    hops = [system.link(parts[i], parts[(i + 1) % p]) for i in range(p)] if p > 2 else [system.link(*parts)]
    bw, lat = min(h.bandwidth for h in hops), max(h.latency for h in hops)
    return _FORMULAS[(primitive, system.collectives[primitive])](n_bytes, p, bw, lat)
