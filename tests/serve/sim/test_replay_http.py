"""The open-loop replay sends exactly the trace's requests, in order, on the trace's clock."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from leanml.serve.sim.replay import Payload, replay_http
from leanml.serve.workload.traces import gamma_bursty

# Stated tolerance, on a shared 2-core machine (load average ~8 while these tests ran): every request
# is *sent* within 150 ms of its trace time (median within 50 ms). Receive times at the server are not
# asserted: on this machine the server process itself falls behind (median 0.1-0.26 s measured), which
# is the server's latency, not the replayer's timing.
SEND_TOL_S, SEND_MEDIAN_TOL_S = 0.150, 0.050


SERVER = """
import sys, time
import uvicorn
from fastapi import FastAPI, Request
app = FastAPI()
seen = []

@app.post("/v1/predict/echo")
async def echo(req: Request):
    body = await req.json()
    seen.append((body["inputs"][0], time.perf_counter()))
    return {"request_variant": "echo", "labels": [body["inputs"][0] % 2], "probs": [[0.5, 0.5]],
            "queue_ms": 0.0, "model_ms": 0.0, "batch_size": 1}

@app.get("/seen")
async def get_seen():
    return {"seen": seen}

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error", access_log=False)
"""


@contextlib.contextmanager
def tiny_server():
    """A tiny echo server in its own process (so its clock and the sender's do not share a GIL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(url + "/seen", timeout=1.0)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def seen_by(url: str) -> list:
    return [tuple(x) for x in httpx.get(url + "/seen", timeout=10.0).json()["seen"]]


@pytest.mark.no_cover  # the sender's timing is what it checks: coverage tracing would add its lag
def test_replay_sends_exactly_the_trace_in_order_and_on_time():
    tr = gamma_bursty(40.0, 2.5, n=60, seed=7)  # bursty: gaps from ~0 to hundreds of ms
    with tiny_server() as url:
        rows = replay_http(url, tr.arrival_s, lambda i: Payload("/v1/predict/echo", {"inputs": [i]}, label=i % 2),
                           max_requests=1000, max_duration_s=30.0)
        seen = seen_by(url)
    assert len(rows) == len(tr) == len(seen)  # count: every request once
    assert sorted(i for i, _ in seen) == list(range(len(tr)))  # none lost, none duplicated
    assert [r["id"] for r in rows] == list(range(len(tr)))
    sent = np.array([r["sent_s"] for r in rows])
    assert np.all(np.diff(sent) >= 0)  # sent in trace order
    assert all(r["status"] == 200 and r["correct"] == 1.0 and r["variant"] == "echo" for r in rows)
    # timing: when each request was sent, against the trace's relative times
    lateness = sent - (tr.arrival_s - tr.arrival_s[0])
    assert np.abs(lateness).max() < SEND_TOL_S, f"max send timing error {np.abs(lateness).max() * 1e3:.1f} ms"
    assert np.median(np.abs(lateness)) < SEND_MEDIAN_TOL_S


def test_replay_bounds_and_bad_arguments():
    arr = np.linspace(0.0, 10.0, 101)
    with tiny_server() as url:
        rows = replay_http(url, arr, lambda i: Payload("/v1/predict/echo", {"inputs": [i]}), max_requests=30)
        assert len(rows) == 30 and len(seen_by(url)) == 30
        rows = replay_http(url, arr, lambda i: Payload("/v1/predict/echo", {"inputs": [i]}), max_duration_s=0.5)
        assert len(rows) == 6 and len(seen_by(url)) == 36  # arrivals at 0.0 .. 0.5 s
        with pytest.raises(ValueError, match="non-decreasing"):
            replay_http(url, arr[::-1], lambda i: Payload("/x", {}))
    with pytest.raises(ValueError, match="loopback"):
        replay_http("http://example.org", arr, lambda i: Payload("/x", {}))
