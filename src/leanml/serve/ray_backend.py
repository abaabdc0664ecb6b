"""Ray Serve backend: each leanml deployment runs as a Ray Serve application on a local Ray instance.

A replica holds a leanml `Runtime` for its one deployment, so routing policy, admission control,
per-variant queues and dynamic batching are the same code as the embedded server; Ray Serve adds
its HTTP proxy, replica placement and scaling (``num_replicas``) for users who outgrow one machine.
Routes: ``POST /v1/predict/<deployment>`` or ``POST /v1/generate/<deployment>`` (by the deployment's
kind), same JSON bodies and answers as the embedded server.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from leanml.serve.config import DeployConfig
from leanml.serve.types import VariantProfile

log = logging.getLogger("leanml.serve")


class LeanmlReplica:
    """The body of a Ray Serve deployment: one leanml Runtime answering one deployment's requests."""

    def __init__(self, cfg: DeployConfig, name: str, profiles: dict[str, dict[str, VariantProfile]],
                 threads: int = 1) -> None:
        from leanml.serve.builder import build_runtime

        one = replace(cfg, deployments={name: cfg.deployments[name]})
        self.name = name
        self.runtime = build_runtime(one, profiles, threads=threads)
        self.kind = self.runtime.deployments[name].kind

    async def handle(self, body: Any) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) for one request body, exactly as the embedded server answers it."""
        from pydantic import ValidationError

        from leanml.serve.dataplane.http import GenerateRequest, PredictRequest
        from leanml.serve.dataplane.runtime import WrongKind
        from leanml.serve.variants.base import InputError

        rt = self.runtime
        if not rt.started:
            await rt.start()
        try:
            if self.kind == "generate":
                req = GenerateRequest.model_validate(body)
                inputs, knobs, label = req.prompt, {"max_new_tokens": req.max_new_tokens,
                                                    "kv_cache_cap": req.kv_cache_cap,
                                                    "min_new_tokens": req.min_new_tokens}, None
            else:
                req = PredictRequest.model_validate(body)
                inputs, knobs, label = req.inputs, None, req.label
        except ValidationError as e:
            return 422, {"detail": "invalid request: " + "; ".join(
                f"{'.'.join(map(str, x['loc'])) or 'body'}: {x['msg']}" for x in e.errors()[:5])}
        try:
            out = await rt.submit(self.name, inputs, slo=req.slo.to_slo() if req.slo else None, kind=self.kind,
                                  knobs=knobs, label=label, request_class=req.request_class)
        except InputError as e:
            return 422, {"detail": f"invalid inputs: {e}"}
        except WrongKind as e:
            return 400, {"detail": str(e)}
        if out.status != 200:
            return out.status, {"detail": out.outcome, "reason": out.reason}
        return 200, {"request_variant": out.variant, **out.output, "queue_ms": round(out.queue_ms, 4),
                     "model_ms": round(out.model_ms, 4), "batch_size": out.batch_size}


def _deployment_class():
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class LeanmlServeDeployment:
        def __init__(self, cfg: DeployConfig, name: str, profiles: dict, threads: int) -> None:
            self.replica = LeanmlReplica(cfg, name, profiles, threads)

        async def __call__(self, request: Request) -> JSONResponse:
            try:
                body = await request.json()
            except Exception:
                return JSONResponse({"detail": "invalid request: body is not valid JSON"}, status_code=422)
            status, payload = await self.replica.handle(body)
            return JSONResponse(payload, status_code=status)

    return LeanmlServeDeployment


def deploy(cfg: DeployConfig, profiles: dict[str, dict[str, VariantProfile]] | None = None, *,
           host: str = "127.0.0.1", port: int = 8000, num_cpus: int | None = None,
           threads: int = 1) -> dict[str, str]:
    """Start local Ray + Serve (if not running) and deploy every deployment; returns {name: route}."""
    import ray
    from ray import serve

    from leanml.serve.variants.prototypes import get_prototype

    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": host, "port": port})
    cls = _deployment_class()
    routes = {}
    for name, dc in cfg.deployments.items():
        verb = "generate" if get_prototype(dc.prototype).kind == "generate" else "predict"
        route = f"/v1/{verb}/{name}"
        app = cls.options(name=f"leanml-{name}").bind(cfg, name, profiles or {}, threads)
        serve.run(app, name=name, route_prefix=route, blocking=False)
        routes[name] = route
    return routes


def shutdown() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def run_ray(cfg: DeployConfig, profiles: dict | None, *, host: str, port: int) -> None:
    """`leanml serve start --backend ray`: deploy and block until interrupted."""
    import time

    routes = deploy(cfg, profiles, host=host, port=port)
    for name, r in routes.items():
        log.warning("Ray Serve: %s at http://%s:%d%s", name, host, port, r)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        shutdown()
