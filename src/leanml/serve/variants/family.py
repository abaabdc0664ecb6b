"""A prototype's built variants (`Family`) and the serve cache their trained weights live in.

Kept apart from `leanml.serve.variants.prototypes` (the registry that assembles the families) so the
family builders it imports (`leanml.serve.variants.llm`) can use these without importing it back.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from leanml.io import atomic_write_bytes
from leanml.serve.variants.base import Variant


@dataclass
class Family:
    """The variants of one prototype and how to judge them."""

    prototype: str
    variants: dict[str, Variant]
    evaluate: Callable[[Variant, int | None], float]  # (variant, max examples) -> accuracy
    sample_inputs: Callable[[int, int], list[Any]]  # (n requests, seed) -> request inputs (one example each)
    info: dict[str, Any] = field(default_factory=dict)


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached(name: str, params: dict[str, Any], make: Callable[[], Any]) -> Any:
    """Return a pickled object from the serve cache, or make it and cache it (atomic write)."""
    from leanml.data import cache_dir

    path = cache_dir("serve") / f"{name}-{_key(name, params)}.pkl"
    if path.exists():
        try:
            return pickle.loads(path.read_bytes())
        except Exception:
            path.unlink(missing_ok=True)  # a stale or corrupt cache entry is rebuilt, never trusted
    obj = make()
    atomic_write_bytes(path, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    return obj


def cached_module(name: str, params: dict[str, Any], build: Callable[[], Any], train: Callable[[Any], None]):
    """A torch module built by ``build`` whose trained state dict is cached under the serve cache."""
    import torch

    from leanml.data import cache_dir

    path = cache_dir("serve") / f"{name}-{_key(name, params)}.pt"
    module = build()
    if path.exists():
        try:
            module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return module.eval()
        except Exception:
            path.unlink(missing_ok=True)
            module = build()
    train(module)
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    atomic_write_bytes(path, buf.getvalue())
    return module.eval()
