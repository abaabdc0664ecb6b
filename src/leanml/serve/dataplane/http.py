"""The HTTP API (FastAPI): predict, generate, deployments, config (admin), metrics, health.

Errors are answered, never raised through: unknown deployment 404, malformed JSON / wrong shapes
422, wrong endpoint kind 400, oversized body 413, SLO that no variant can meet 503, overload 429,
admin call without / with a wrong token 401 / 403.
"""

from __future__ import annotations

import asyncio
import hmac
import socket
import threading
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Body, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from leanml.serve.config import ConfigError, config_to_dict
from leanml.serve.dataplane.runtime import Runtime, UnknownDeployment, WrongKind
from leanml.serve.types import SLO
from leanml.serve.variants.base import InputError


# ---- request / response models (they make the OpenAPI schema complete) -------------------------------
class SLOModel(BaseModel):
    """What one request needs; omitted fields take the deployment's defaults."""

    model_config = ConfigDict(extra="forbid")
    latency_ms: float | None = Field(None, gt=0, description="end-to-end latency bound (ms)")
    min_accuracy: float | None = Field(None, ge=0, le=1, description="least profiled accuracy of the variant")
    max_energy_j: float | None = Field(None, ge=0, description="most profiled energy per request (J)")

    def to_slo(self) -> SLO:
        return SLO(self.latency_ms, self.min_accuracy, self.max_energy_j)


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[Any] = Field(..., min_length=1, description="a list of examples (each of the model's input "
                              "shape), or one example")
    slo: SLOModel | None = None
    label: list[int] | None = Field(None, description="ground-truth labels, if known (for online profiling)")
    request_class: str = Field("default", max_length=64)


class PredictResponse(BaseModel):
    request_variant: str = Field(..., description="the variant that answered")
    labels: list[int]
    probs: list[list[float]]
    queue_ms: float
    model_ms: float
    batch_size: int = Field(..., description="examples in the model call that included this request")


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str | list[str] = Field(..., description="one prompt or a list of prompts")
    max_new_tokens: int | None = Field(None, ge=1, le=2048)
    kv_cache_cap: int | None = Field(None, ge=2, le=32768, description="most tokens held in the KV cache "
                                     "(prompt is cut from the left to fit)")
    min_new_tokens: int | None = Field(None, ge=1, le=2048, description="end-of-sequence is not allowed before "
                                       "this many new tokens (at most max_new_tokens)")
    slo: SLOModel | None = None
    request_class: str = Field("default", max_length=64)


class GenerateResponse(BaseModel):
    request_variant: str
    texts: list[str]
    new_tokens: list[int] | None = Field(None, description="tokens generated per prompt (continuous batching)")
    ttft_ms: float | None = Field(None, description="time to first token, arrival to the first token of every "
                                  "prompt (continuous batching)")
    tpot_ms: float | None = Field(None, description="mean time per output token after the first (continuous "
                                  "batching)")
    queue_ms: float
    model_ms: float
    batch_size: int


class ErrorResponse(BaseModel):
    detail: str
    reason: str | None = None


class ConfigPatch(BaseModel):
    """``{"deployments": {name: {changed keys}}, "remove": [names]}`` (see leanml.serve.config.apply_patch)."""

    model_config = ConfigDict(extra="forbid")
    deployments: dict[str, dict[str, Any]] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)


ERRORS = {400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
          422: {"model": ErrorResponse}, 429: {"model": ErrorResponse}, 500: {"model": ErrorResponse},
          503: {"model": ErrorResponse}}
ADMIN_ERRORS = {400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}}


# ---- body size limit (pure ASGI: no per-request task overhead) -----------------------------------------
class BodyLimit:
    """Answer 413 to a request body over ``limit`` bytes, by Content-Length or by counting a streamed body."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    return await _send_json(send, 400, {"detail": "invalid Content-Length header"})
                if n > self.limit:
                    return await _send_json(send, 413, {"detail": f"request body of {n} bytes exceeds the "
                                                        f"limit of {self.limit} bytes (server.max_body_bytes)"})
                return await self.app(scope, receive, send)
        # no Content-Length (chunked): read up to the limit, then replay
        chunks, total, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                return await self.app(scope, _replay([msg]), send)
            total += len(msg.get("body", b""))
            if total > self.limit:
                return await _send_json(send, 413, {"detail": f"request body exceeds the limit of {self.limit} "
                                                    f"bytes (server.max_body_bytes)"})
            chunks.append(msg)
            more = msg.get("more_body", False)
        return await self.app(scope, _replay(chunks, receive), send)


def _replay(msgs, then=None):
    it = iter(msgs)

    async def receive():
        try:
            return next(it)
        except StopIteration:
            if then is not None:
                return await then()
            return {"type": "http.disconnect"}

    return receive


async def _send_json(send, status: int, body: dict) -> None:
    import json

    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


# ---- the app ---------------------------------------------------------------------------------------------
def build_app(runtime: Runtime, *, admin_token: str | None = None, max_body_bytes: int = 1 << 20,
              manage_runtime: bool = True) -> FastAPI:
    """The FastAPI app serving ``runtime``; ``manage_runtime`` starts/stops it with the app's lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if manage_runtime:
            await runtime.start()
        yield
        if manage_runtime:
            await runtime.stop()

    app = FastAPI(title="leanml serve", version="1", lifespan=lifespan,
                  description="Adaptive serving of model variants with per-request SLOs.")

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors()[:5]:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            parts.append(f"{loc}: {e.get('msg')}")
        return JSONResponse({"detail": "invalid request: " + "; ".join(parts)}, status_code=422)

    def require_admin(authorization: str | None = Header(None, description="Bearer <admin token>")) -> None:
        if admin_token is None:
            raise _Http(403, "the admin API is disabled: set server.admin_token or LEANML_SERVE_ADMIN_TOKEN")
        if not authorization or not authorization.startswith("Bearer "):
            raise _Http(401, "admin endpoint: send 'Authorization: Bearer <admin token>'")
        if not hmac.compare_digest(authorization[7:].encode(), admin_token.encode()):
            raise _Http(403, "admin endpoint: wrong admin token")

    @app.exception_handler(_Http)
    async def _http_error(request: Request, exc: _Http):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    async def _answer(deployment: str, inputs: Any, slo: SLOModel | None, kind: str, knobs=None, label=None,
                      request_class: str = "default") -> Response:
        if not runtime.started:
            await runtime.start()
        try:
            out = await runtime.submit(deployment, inputs, slo=slo.to_slo() if slo else None, kind=kind,
                                       knobs=knobs, label=label, request_class=request_class)
        except UnknownDeployment as e:
            return JSONResponse({"detail": str(e)}, status_code=404)
        except WrongKind as e:
            return JSONResponse({"detail": str(e)}, status_code=400)
        except InputError as e:
            runtime.metrics.requests.labels(deployment, "", "bad_input").inc()
            return JSONResponse({"detail": f"invalid inputs: {e}"}, status_code=422)
        if out.status != 200:
            headers = {"Retry-After": "1"} if out.status == 429 else None
            return JSONResponse({"detail": out.outcome, "reason": out.reason}, status_code=out.status, headers=headers)
        return JSONResponse({"request_variant": out.variant, **out.output, "queue_ms": round(out.queue_ms, 4),
                             "model_ms": round(out.model_ms, 4), "batch_size": out.batch_size})

    @app.post("/v1/predict/{deployment}", response_model=PredictResponse, responses=ERRORS,
              summary="Classify examples with the variant the routing policy picks for this request's SLO")
    async def predict(deployment: str, req: PredictRequest) -> Response:
        return await _answer(deployment, req.inputs, req.slo, "predict", label=req.label,
                             request_class=req.request_class)

    @app.post("/v1/generate/{deployment}", response_model=GenerateResponse, responses=ERRORS,
              summary="Generate text (LLM deployments), with per-request max_new_tokens and KV-cache cap")
    async def generate(deployment: str, req: GenerateRequest) -> Response:
        if req.kv_cache_cap is not None and req.max_new_tokens is not None and req.kv_cache_cap <= req.max_new_tokens:
            return JSONResponse({"detail": f"kv_cache_cap ({req.kv_cache_cap}) must exceed max_new_tokens "
                                           f"({req.max_new_tokens}) to leave room for the prompt"}, status_code=422)
        if req.min_new_tokens is not None and req.min_new_tokens > (req.max_new_tokens or req.min_new_tokens):
            return JSONResponse({"detail": f"min_new_tokens ({req.min_new_tokens}) exceeds max_new_tokens "
                                           f"({req.max_new_tokens})"}, status_code=422)
        knobs = {"max_new_tokens": req.max_new_tokens, "kv_cache_cap": req.kv_cache_cap}
        if req.min_new_tokens is not None:
            knobs["min_new_tokens"] = req.min_new_tokens
        return await _answer(deployment, req.prompt, req.slo, "generate", knobs=knobs,
                             request_class=req.request_class)

    @app.get("/v1/deployments", summary="Deployments, their variants and measured profiles")
    async def deployments() -> dict[str, Any]:
        return runtime.describe()

    @app.get("/v1/config", responses=ADMIN_ERRORS, dependencies=[Depends(require_admin)],
             summary="The running configuration (admin)")
    async def get_config() -> dict[str, Any]:
        return _config_view(runtime)

    @app.put("/v1/config", responses=ADMIN_ERRORS, dependencies=[Depends(require_admin)],
             summary="Change routing, variant sets, batching or SLO defaults at run time (admin); "
                     "in-flight requests are answered")
    async def put_config(patch: ConfigPatch = Body(...)) -> Response:
        try:
            await runtime.apply_patch(patch.model_dump())
        except ConfigError as e:
            return JSONResponse({"detail": str(e)}, status_code=400)
        except ValueError as e:
            return JSONResponse({"detail": f"config update: {e}"}, status_code=400)
        return JSONResponse(_config_view(runtime))

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        for dep in runtime.deployments.values():
            for w in dep.workers.values():
                runtime.metrics.queue_depth.labels(dep.name, w.name).set(len(w.queue))
        return Response(runtime.metrics.render(), media_type=runtime.metrics.content_type)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "deployments": sorted(runtime.deployments), "generation": runtime.generation}

    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.state.runtime = runtime
    return app


class _Http(Exception):
    def __init__(self, status: int, detail: str) -> None:
        self.status, self.detail = status, detail


def _config_view(runtime: Runtime) -> dict[str, Any]:
    if runtime.config is None:
        return {"generation": runtime.generation, "deployments": {n: {"policy": d.policy.name}
                                                                  for n, d in runtime.deployments.items()}}
    return {"generation": runtime.generation, **config_to_dict(runtime.config)}


# ---- running it ----------------------------------------------------------------------------------------
def serve(app, host: str = "127.0.0.1", port: int = 8321, log_level: str = "warning") -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on")


class BackgroundServer:
    """uvicorn in a thread on a free loopback port (tests, benchmarks): ``with BackgroundServer(app) as url:``."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                                                    timeout_graceful_shutdown=30))
        self.thread = threading.Thread(target=self._run, daemon=True, name="leanml-uvicorn")
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve(sockets=[self.sock]))
        except BaseException as e:  # surfaced by __enter__
            self.error = e

    def __enter__(self) -> str:
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if self.error is not None or not self.thread.is_alive():
                raise RuntimeError(f"server failed to start: {self.error!r}")
            if time.time() - t0 > 60:
                raise RuntimeError("server did not start within 60 s")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.sock.close()
