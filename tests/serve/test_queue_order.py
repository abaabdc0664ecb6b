"""The shared deadline-ordered insert (serve.queue_order)."""

from __future__ import annotations

from collections import deque

from leanml.serve.queue_order import insert_by_deadline


def test_insert_by_deadline_keeps_deadline_order_with_ties_in_arrival_order():
    q: deque[tuple[str, float]] = deque()
    for item in [("a", 5.0), ("b", 2.0), ("c", 5.0), ("d", float("inf")), ("e", 2.0), ("f", 9.0)]:
        insert_by_deadline(q, item, lambda x: x[1])
    assert [x[0] for x in q] == ["b", "e", "a", "c", "f", "d"]
