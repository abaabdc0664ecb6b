"""An engine's queue order, shared by the live continuous batcher, its worker and the LLM simulator:
earliest TTFT deadline first (``"edf"``) or arrival order (``"fifo"``)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

QUEUE_ORDERS = ("edf", "fifo")

T = TypeVar("T")


def insert_by_deadline(q: deque[T], item: T, due: Callable[[T], Any]) -> None:
    """Insert ``item`` behind every queued item due no later than it (``due``: an item's deadline), so a queue
    built this way stays in deadline order with equal deadlines in arrival order. New items are usually due
    last (deadlines grow with arrival), so that case is one comparison."""
    d = due(item)
    if not q or due(q[-1]) <= d:
        q.append(item)
        return
    q.insert(next(i for i, o in enumerate(q) if due(o) > d), item)
