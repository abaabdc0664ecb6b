"""Open-loop trace replay against a live HTTP server on loopback.

`replay_http` sends one request per trace arrival at ``t0 + arrival`` (open loop: a slow server
never slows the sender), bounded by ``max_requests`` and ``max_duration_s``, and records per request
when it was due, when it was sent, the status, latency, variant, batch size and correctness (when the
payload carries a label). The live planner controller is `leanml.serve.control.controller`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Payload:
    """One request to send: the URL path, the JSON body, and its ground-truth label (or None)."""

    path: str
    body: dict[str, Any]
    label: Any = None


async def _replay_async(
    url: str,
    arrival_s: np.ndarray,
    make_payload: Callable[[int], Payload],
    *,
    max_requests: int,
    max_duration_s: float,
    timeout_s: float,
    on_start: Callable[[], None] | None = None,
    warmup_connections: int = 16,
) -> list[dict[str, Any]]:
    import httpx

    n = min(len(arrival_s), max_requests)
    rows: list[dict[str, Any] | None] = [None] * n
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        payloads = [make_payload(i) for i in range(n)]  # built before the clock starts

        async def one(i: int, p: Payload, due: float, t0: float) -> None:
            sent = time.perf_counter() - t0
            row = {"id": i, "due_s": due, "sent_s": sent, "label": p.label}
            try:
                r = await client.post(p.path, json=p.body)
                done = time.perf_counter() - t0
                row.update(status=r.status_code, latency_ms=(done - sent) * 1e3, finish_s=done)
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                row.update(variant=body.get("request_variant"), batch_size=body.get("batch_size"),
                           queue_ms=body.get("queue_ms"), model_ms=body.get("model_ms"),
                           reason=body.get("reason") or body.get("detail"),
                           ttft_ms=body.get("ttft_ms"), tpot_ms=body.get("tpot_ms"))  # generate answers only
                if r.status_code == 200 and p.label is not None and "labels" in body:
                    lab = p.label if isinstance(p.label, list) else [p.label]
                    row["correct"] = float(np.mean([a == b for a, b in zip(body["labels"], lab, strict=False)]))
            except httpx.HTTPError as e:
                row.update(status=-1, latency_ms=float("nan"), finish_s=time.perf_counter() - t0,
                           reason=f"{type(e).__name__}: {e}")
            rows[i] = row

        if warmup_connections > 0:  # open pooled connections before the clock starts (any status will do)
            async def poke() -> None:
                with contextlib.suppress(httpx.HTTPError):
                    await client.get("/healthz")

            await asyncio.gather(*(poke() for _ in range(min(warmup_connections, n))))
        if on_start is not None:
            on_start()
        t0 = time.perf_counter()
        tasks = []
        base = float(arrival_s[0]) if n else 0.0
        for i in range(n):
            due = float(arrival_s[i]) - base
            if due > max_duration_s:
                break
            wait = due - (time.perf_counter() - t0)
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(one(i, payloads[i], due, t0)))
        if tasks:
            await asyncio.gather(*tasks)
    return [r for r in rows if r is not None]


def replay_http(
    url: str,
    arrival_s: np.ndarray,
    make_payload: Callable[[int], Payload],
    *,
    max_requests: int = 10_000,
    max_duration_s: float = 120.0,
    timeout_s: float = 30.0,
    on_start: Callable[[], None] | None = None,
    warmup_connections: int = 16,
) -> list[dict[str, Any]]:
    """Replay arrivals (seconds, from any origin) open-loop against ``url``; one row per request sent."""
    if not url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]")):
        raise ValueError(f"replay only targets loopback servers, got {url!r}")
    if max_requests < 1 or max_duration_s <= 0 or timeout_s <= 0:
        raise ValueError("max_requests must be >= 1, max_duration_s and timeout_s > 0")
    arrival_s = np.asarray(arrival_s, dtype=np.float64)
    if len(arrival_s) and np.any(np.diff(arrival_s) < 0):
        raise ValueError("arrival times must be non-decreasing")
    return asyncio.run(_replay_async(url, arrival_s, make_payload, max_requests=max_requests,
                                     max_duration_s=max_duration_s, timeout_s=timeout_s, on_start=on_start,
                                     warmup_connections=warmup_connections))
