"""Ray Serve backend: a deployment served through Ray Serve answers the same as the embedded server."""

from __future__ import annotations

import socket
import time

import httpx
import numpy as np
import pytest
from serve_helpers import digits_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_serve_answers_like_the_embedded_server(digits_builder, digits_X, tmp_path, monkeypatch):
    pytest.importorskip("ray.serve")
    from leanml.serve import ray_backend
    from leanml.serve.builder import build_runtime
    from leanml.serve.dataplane.http import BackgroundServer, build_app

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    cfg = digits_config(policy="static", policy_params={"variant": "mlp"}, variants=["mlp", "mlp_int8"])
    profiles = {"s": digits_builder.measured}
    bodies = [{"inputs": digits_X[i : i + 3].tolist()} for i in range(0, 12, 3)]
    bodies.append({"inputs": digits_X[:2].tolist(), "slo": {"min_accuracy": 0.9999}})  # refused: 503
    bodies.append({"inputs": [[1.0, 2.0]]})  # wrong shape: 422

    rt = build_runtime(cfg, profiles, measure_missing=False)
    with BackgroundServer(build_app(rt)) as url:
        embedded = [httpx.post(f"{url}/v1/predict/digits", json=b) for b in bodies]

    port = _free_port()
    try:
        routes = ray_backend.deploy(cfg, profiles, port=port, num_cpus=1)
        assert routes == {"digits": "/v1/predict/digits"}
        t0 = time.time()
        while True:  # the HTTP proxy comes up a moment after the application
            try:
                via_ray = [httpx.post(f"http://127.0.0.1:{port}/v1/predict/digits", json=b, timeout=60)
                           for b in bodies]
                break
            except httpx.TransportError:
                if time.time() - t0 > 60:
                    raise
                time.sleep(0.5)
    finally:
        ray_backend.shutdown()

    for e, r in zip(embedded, via_ray, strict=True):
        assert e.status_code == r.status_code, (e.text, r.text)
        if e.status_code == 200:
            a, b = e.json(), r.json()
            assert a["request_variant"] == b["request_variant"] == "mlp"
            assert a["labels"] == b["labels"]
            assert np.allclose(a["probs"], b["probs"], atol=1e-5)
