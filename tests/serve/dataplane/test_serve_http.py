"""End-to-end over loopback HTTP (uvicorn on a free 127.0.0.1 port): the issue's "done when" list."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import TOKEN, digits_config, gate_variant, wait_until

from leanml.serve.builder import build_runtime
from leanml.serve.config import Batching
from leanml.serve.dataplane.http import BackgroundServer, build_app
from leanml.serve.dataplane.runtime import Runtime
from leanml.serve.types import SLO

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def digits_server(digits_builder):
    cfg = digits_config(batching={"max_batch": 16, "max_wait_ms": 2.0})
    rt = build_runtime(cfg, {"session": digits_builder.measured}, measure_missing=False)
    app = build_app(rt, admin_token=TOKEN, max_body_bytes=cfg.server.max_body_bytes)
    with BackgroundServer(app) as url:
        yield url, rt


@pytest.fixture()
def gate_server():
    rt = Runtime(threads=2)
    v = gate_variant("g", acc=0.9, ms=1.0)
    rt.add_deployment("gate", {"g": v}, "infaas", batching=Batching(max_batch=4, max_queue=3))
    with BackgroundServer(build_app(rt, admin_token=TOKEN)) as url:
        yield url, rt, v.model
        v.model.gate.set()


def _metrics(url: str) -> dict[str, list]:
    text = httpx.get(f"{url}/metrics").text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _ok_count(url: str) -> float:
    return sum(s.value for s in _metrics(url)["leanml_serve_requests"]
               if s.name.endswith("_total") and s.labels["outcome"] == "ok")


def test_predictions_equal_calling_the_variant_directly(digits_server, digits_X):
    from leanml.serve.dataplane.routing import StaticPolicy

    url, rt = digits_server
    dep = rt.deployments["digits"]
    variants, original = dep.variants, dep.policy
    try:
        with httpx.Client(base_url=url) as c:
            for i, name in enumerate(variants):  # every variant, pinned in turn through the policy hook
                rt.set_policy("digits", StaticPolicy(list(variants), variant=name))
                x = digits_X[i * 5 : i * 5 + 5]
                r = c.post("/v1/predict/digits", json={"inputs": x.tolist(), "slo": {"latency_ms": 5000}})
                assert r.status_code == 200, r.text
                got = r.json()
                assert got["request_variant"] == name
                direct = variants[name](x.tolist())
                assert got["labels"] == direct["labels"]
                assert np.allclose(got["probs"], direct["probs"], atol=1e-5)
            # one example (not a list of examples) is accepted too
            r = c.post("/v1/predict/digits", json={"inputs": digits_X[0].tolist()})
            assert r.status_code == 200 and len(r.json()["labels"]) == 1
    finally:
        rt.set_policy("digits", original)


def test_dynamic_batching_batches_under_concurrent_load(digits_server, digits_X):
    url, _ = digits_server

    async def fire(n):
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            rs = await asyncio.gather(*(c.post("/v1/predict/digits", json={"inputs": [digits_X[i].tolist()]})
                                        for i in range(n)))
        return [r.status_code for r in rs]

    assert asyncio.run(fire(96)) == [200] * 96
    sizes = {s.labels["variant"]: s.value for s in _metrics(url)["leanml_serve_batch_size"] if s.name.endswith("_sum")}
    counts = {s.labels["variant"]: s.value for s in _metrics(url)["leanml_serve_batch_size"]
              if s.name.endswith("_count")}
    assert any(sizes[v] / counts[v] > 1.0 for v in counts), (sizes, counts)  # mean batch above 1


def test_impossible_slo_is_refused_at_once_even_while_the_model_is_busy(gate_server):
    url, rt, model = gate_server
    model.gate.clear()  # the model is stuck: anything queued waits
    with httpx.Client(base_url=url, timeout=30) as c:
        pending = httpx.AsyncClient(base_url=url, timeout=30)

        async def queued():
            async with pending:
                return await pending.post("/v1/predict/gate", json={"inputs": [[1, 2, 3, 4]]})

        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            fut = ex.submit(asyncio.run, queued())
            wait_until(lambda: model.calls == [] and rt.deployments["gate"].workers["g"].in_flight_batches == 1)
            t0 = time.perf_counter()
            r = c.post("/v1/predict/gate", json={"inputs": [[1, 2, 3, 4]], "slo": {"min_accuracy": 0.99}})
            refused_ms = (time.perf_counter() - t0) * 1000
            assert r.status_code == 503, r.text
            assert "accuracy" in r.json()["reason"]
            assert not fut.done()  # answered while the model was still blocked: never queued
            r2 = c.post("/v1/predict/gate", json={"inputs": [[1, 2, 3, 4]], "slo": {"latency_ms": 0.5}})
            assert r2.status_code == 503 and "even when idle" in r2.json()["reason"]
            model.gate.set()
            assert fut.result(30).status_code == 200
    print(f"impossible SLO refused in {refused_ms:.2f} ms over loopback")


def test_overload_answers_429_and_every_request_once(gate_server):
    url, rt, model = gate_server
    model.gate.clear()

    async def burst():
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            tasks = [asyncio.create_task(c.post("/v1/predict/gate", json={"inputs": [[0, 0, 0, 1]]}))
                     for _ in range(12)]
            await asyncio.sleep(0.5)
            model.gate.set()
            return await asyncio.gather(*tasks)

    codes = sorted(r.status_code for r in asyncio.run(burst()))
    assert len(codes) == 12 and set(codes) <= {200, 429} and 429 in codes and 200 in codes
    r = [r for r in [httpx.post(f"{url}/v1/predict/gate", json={"inputs": [[0, 0, 0, 1]]})]][0]
    assert r.status_code == 200  # still serving after the overload
    assert sum(model.calls) == codes.count(200) + 1  # every accepted request ran exactly once


def test_reconfiguring_under_load_loses_no_request(digits_server, digits_X):
    url, rt = digits_server
    before = _ok_count(url)
    patches = [
        {"deployments": {"digits": {"variants": ["mlp", "mlp_int8"], "policy": "static",
                                    "policy_params": {"variant": "mlp_int8"}, "batching": {"max_batch": 4}}}},
        {"deployments": {"digits": {"variants": ["mlp_student", "mlp_bf16"], "policy": "infaas",
                                    "policy_params": {}, "batching": {"max_batch": 16, "max_wait_ms": 1.0}}}},
        {"deployments": {"digits": {"variants": ["mlp", "mlp_prune50", "mlp_student"],
                                    "slo": {"latency_ms": 5000}}}},
    ]
    sent = 0
    generations = []
    admin_done = asyncio.Event()

    async def client(c, k):
        nonlocal sent
        codes = []
        i = 0
        while (i < 10 or not admin_done.is_set()) and i < 400:  # keep load on until the last PUT returns
            i += 1
            sent += 1
            r = await c.post("/v1/predict/digits", json={"inputs": [digits_X[(k * 31 + i) % 400].tolist()]})
            codes.append((r.status_code, r.json().get("request_variant")))
        return codes

    async def admin(c):
        for i in range(6):
            await asyncio.sleep(0.05)
            r = await c.put("/v1/config", json=patches[i % len(patches)], headers=AUTH)
            assert r.status_code == 200, r.text
            generations.append(r.json()["generation"])
        admin_done.set()

    async def main():
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            res = await asyncio.gather(*(client(c, k) for k in range(4)), admin(c))
        return [x for r in res[:4] for x in r]

    results = asyncio.run(main())
    assert len(results) == sent >= 40
    assert all(code == 200 for code, _ in results), [r for r in results if r[0] != 200][:5]
    assert len({v for _, v in results}) >= 2  # traffic really moved between variant sets
    assert generations == sorted(generations) and len(set(generations)) == 6
    wait_until(lambda: _ok_count(url) - before == sent)  # the server answered each exactly once
    assert set(rt.deployments["digits"].variants) == {"mlp", "mlp_prune50", "mlp_student"}  # last patch won


def test_bad_requests_get_4xx(digits_server, digits_X):
    url, _ = digits_server
    ok = {"inputs": [digits_X[0].tolist()]}
    with httpx.Client(base_url=url) as c:
        def post(path="/v1/predict/digits", **kw):
            return c.post(path, **kw)

        cases = {
            "malformed json": post(content=b'{"inputs": [[1, 2', headers={"content-type": "application/json"}),
            "not an object": post(json=[1, 2, 3]),
            "wrong shape": post(json={"inputs": [[1.0, 2.0]]}),
            "ragged": post(json={"inputs": [[1.0] * 64, [1.0] * 63]}),
            "strings": post(json={"inputs": [["a"] * 64]}),
            "empty": post(json={"inputs": []}),
            "unknown field": post(json={**ok, "colour": "red"}),
            "bad slo": post(json={**ok, "slo": {"min_accuracy": 3}}),
            "too many examples": post(json={"inputs": [digits_X[0].tolist()] * 40}),
            "unknown deployment": post("/v1/predict/nope", json=ok),
            "wrong endpoint kind": post("/v1/generate/digits", json={"prompt": "hi"}),
            "oversized": post(content=b"[" + b"1," * 150_000 + b"1]", headers={"content-type": "application/json"}),
            # labels for online profiling: one per input, each one of the model's 10 classes
            "label count": post(json={"inputs": [digits_X[0].tolist()] * 2, "label": [1]}),
            "label class": post(json={**ok, "label": [10]}),
            "negative label": post(json={**ok, "label": [-1]}),
        }
        for name, r in cases.items():
            assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
            assert r.json()["detail"], name
        assert cases["unknown deployment"].status_code == 404
        assert cases["oversized"].status_code == 413
        assert cases["wrong shape"].status_code == 422 and "shape" in cases["wrong shape"].json()["detail"]
        for name in ("label count", "label class", "negative label"):
            assert cases[name].status_code == 422 and "label" in cases[name].json()["detail"], name
        assert post(json={**ok, "label": [3]}).status_code == 200  # a valid label is taken

        # a streamed (chunked, no Content-Length) oversized body is refused too
        def chunks():
            for _ in range(30):
                yield b"x" * 10_000

        assert c.post("/v1/predict/digits", content=chunks()).status_code == 413
        assert c.get("/healthz").json()["status"] == "ok"  # and the server is fine


def test_metrics_parse_as_prometheus_text(digits_server, digits_X):
    url, _ = digits_server
    httpx.post(f"{url}/v1/predict/digits", json={"inputs": [digits_X[1].tolist()]})
    m = _metrics(url)
    for name in ("leanml_serve_requests", "leanml_serve_request_latency_seconds", "leanml_serve_batch_size",
                 "leanml_serve_queue_depth", "leanml_serve_slo_misses", "leanml_serve_energy_joules",
                 "leanml_serve_batch_latency_seconds"):
        assert name in m, sorted(m)
    assert any(s.labels.get("variant") for s in m["leanml_serve_request_latency_seconds"])


def test_admin_endpoints_refuse_missing_or_wrong_token(digits_server):
    url, rt = digits_server
    with httpx.Client(base_url=url) as c:
        assert c.get("/v1/config").status_code == 401
        assert c.get("/v1/config", headers={"Authorization": "Bearer wrong-token-xyz"}).status_code == 403
        assert c.put("/v1/config", json={}).status_code == 401
        assert c.put("/v1/config", json={}, headers={"Authorization": "Basic abc"}).status_code == 401
        assert c.put("/v1/config", json={}, headers={"Authorization": "Bearer nope"}).status_code == 403
        r = c.get("/v1/config", headers=AUTH)
        assert r.status_code == 200 and r.json()["server"]["admin_token"] == "(set)"  # never echoed
        gen = r.json()["generation"]
        bad = c.put("/v1/config", json={"deployments": {"digits": {"variants": ["no_such"]}}}, headers=AUTH)
        assert bad.status_code == 400 and "no_such" in bad.json()["detail"]
        assert c.get("/v1/config", headers=AUTH).json()["generation"] == gen  # nothing changed


def test_admin_api_is_off_without_a_token():
    rt = Runtime(threads=1)
    rt.add_deployment("gate", {"g": gate_variant()}, "static")
    with BackgroundServer(build_app(rt, admin_token=None)) as url:
        r = httpx.get(f"{url}/v1/config", headers={"Authorization": "Bearer anything-at-all"})
        assert r.status_code == 403 and "disabled" in r.json()["detail"]


def test_openapi_schema_and_deployments_listing(digits_server):
    url, _ = digits_server
    spec = httpx.get(f"{url}/openapi.json").json()
    for path in ("/v1/predict/{deployment}", "/v1/generate/{deployment}", "/v1/deployments", "/v1/config",
                 "/metrics", "/healthz"):
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    for s in ("PredictRequest", "PredictResponse", "GenerateRequest", "SLOModel", "ErrorResponse", "ConfigPatch"):
        assert s in schemas
    assert set(schemas["SLOModel"]["properties"]) == {"latency_ms", "min_accuracy", "max_energy_j"}
    deps = httpx.get(f"{url}/v1/deployments").json()
    v = next(iter(deps["digits"]["variants"].values()))
    assert v["profile"]["accuracy"] > 0.8 and v["profile"]["latency"]["p50_ms"]
    json.dumps(deps)


def test_runtime_in_process_matches_http_defaults(digits_builder, digits_X):
    """The in-process API returns the same outputs as HTTP (used by the benchmark as the baseline)."""
    rt = build_runtime(digits_config(policy="static", policy_params={"variant": "mlp"}),
                             {"s": digits_builder.measured}, measure_missing=False)

    async def go():
        await rt.start()
        out = await rt.submit("digits", digits_X[:3].tolist(), slo=SLO(latency_ms=1000))
        await rt.stop()
        return out

    out = asyncio.run(go())
    assert out.status == 200 and out.variant == "mlp"
    assert out.output["labels"] == rt.deployments["digits"].variants["mlp"](digits_X[:3].tolist())["labels"]
