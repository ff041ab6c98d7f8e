"""The HTTP service: wiring only. State (service/state.py), middleware (service/middleware.py), the write and
read routes (service/write_routes.py, service/read_routes.py) and the OpenAPI additions (service/openapi.py)
each live in their own module; everything that is not HTTP lives in ingest, batcher and store."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from fastapi_offline import FastAPIOffline
from redis.exceptions import OutOfMemoryError, RedisError

from u2qt.service import read_routes, state
from u2qt.service.batcher import QueueFull
from u2qt.service.engine_client import EngineUnavailable
from u2qt.service.http import (
    QUEUE_FULL,
    QUEUE_FULL_RETRY_AFTER,
    NoHistoryModel,
    OrjsonResponse,
    Unauthorized,
    json_safe,
)
from u2qt.service.ingest import TooManyWindows
from u2qt.service.metrics import exposition
from u2qt.service.middleware import AdmissionGate, BodyLimit, RequestMetrics
from u2qt.service.openapi import document_routes
from u2qt.service.redis_client import evicting_masters, eviction_refusal
from u2qt.service.schemas import BatchEmbeddingRequest, BatchHistoryRequest, TokenizeRequest
from u2qt.service.settings import ServiceSettings
from u2qt.service.state import ServiceState, current
from u2qt.service.write_routes import TokenizeRoute, tokenize


def create_app(settings: ServiceSettings | None = None) -> ServiceApp:
    settings = settings or ServiceSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.u2qt = await state.start(settings)
        try:
            yield
        finally:
            await state.stop(app.state.u2qt)  # drain: every window already submitted is finished and committed

    # Swagger UI and ReDoc from files shipped in a package (fastapi-offline), not a CDN: /docs works offline
    app = FastAPIOffline(
        title="u2qt",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
        description="Turns users' multi-source events into discrete tokens per (user, source, window) and serves "
        "their token histories to rankers.",
    )
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(RequestMetrics)
    add_error_handlers(app)
    # outermost first: the request counted, admission before the body is read, the body limited as it is read.
    # What no exception handler takes reaches the server, which answers 500 (tests/test_integrity.py).
    write_chain = RequestMetrics(
        AdmissionGate(BodyLimit(TokenizeRoute(), limit=settings.max_body_bytes, timeout_s=settings.body_timeout_s))
    )
    add_ops_routes(app)
    app.include_router(read_routes.router)
    document_routes(app, tokenize, TokenizeRequest, BatchHistoryRequest, BatchEmbeddingRequest)
    return ServiceApp(app, write_chain)


class ServiceApp:
    """The ASGI app uvicorn serves: POST /tokenize goes to `write_chain`, the service's own middlewares around the
    write route, ahead of FastAPI's stack, so the route that carries the load pays for nothing else
    (docs/performance.md); every other request, and the lifespan, goes to `api`, the FastAPI app."""

    def __init__(self, api: FastAPI, write_chain):
        self.api, self.write_chain = api, write_chain

    @property
    def state(self):
        return self.api.state

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/tokenize" and scope["method"] == "POST":
            scope["app"] = self.api  # as Starlette sets it: the chain reads the state and exception handlers there
            scope["u2qt_route"] = "/tokenize"  # the metrics label, also of what the gate or the body limit refuses
            return await self.write_chain(scope, receive, send)
        await self.api(scope, receive, send)


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Unauthorized)
    async def unauthorized(request, exc):
        return OrjsonResponse({"detail": "missing or wrong API key (X-API-Key or Authorization: Bearer)"}, 401)

    @app.exception_handler(QueueFull)
    async def queue_full(request, exc):
        embedding = request.scope.get("route") is not None and "embedding" in request.scope["route"].path
        request.app.state.u2qt.metrics.rejected.labels("embedding_queue_full" if embedding else "queue_full").inc()
        return OrjsonResponse(QUEUE_FULL, 429, headers={"Retry-After": QUEUE_FULL_RETRY_AFTER})

    @app.exception_handler(TooManyWindows)
    async def too_many_windows(request, exc):
        return OrjsonResponse({"detail": str(exc)}, 413)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        # rendered by orjson from JSON-safe errors: a NaN, an infinity or an exception in an error's input or
        # context must still give a 422, never a 500
        return OrjsonResponse({"detail": json_safe(exc.errors())}, 422)

    @app.exception_handler(RedisError)
    async def redis_down(request, exc):
        request.app.state.u2qt.metrics.rejected.labels("redis_unavailable").inc()
        detail = f"token store unavailable: {type(exc).__name__}"
        if isinstance(exc, OutOfMemoryError):
            # a full Redis under noeviction: an operator's problem, named as such (events it stored before it
            # filled are re-tokenized when the request is retried)
            detail = f"token store full: Redis reached its maxmemory ({exc}); retry once it has room"
        return OrjsonResponse({"detail": detail}, 503, headers={"Retry-After": "2"})

    @app.exception_handler(EngineUnavailable)
    async def engine_down(request, exc):
        request.app.state.u2qt.metrics.rejected.labels("engine_unavailable").inc()
        return OrjsonResponse(
            {"detail": "inference engine unavailable (restarting); retry"}, 503, headers={"Retry-After": "1"}
        )

    @app.exception_handler(NoHistoryModel)
    async def no_history_model(request, exc):
        detail = str(exc) or "this model has no history model (trained without the alignment stage)"
        return OrjsonResponse({"detail": detail}, 501)


def add_ops_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["ops"])
    async def healthz():
        return {"status": "alive"}

    @app.get("/readyz", tags=["ops"])
    async def readyz(s: ServiceState = Depends(current)):
        try:
            await asyncio.wait_for(s.redis.ping(), 2.0)
            evicting = [] if s.settings.redis_allow_eviction else await asyncio.wait_for(evicting_masters(s.redis), 2.0)
        except (RedisError, OSError, TimeoutError) as e:
            return OrjsonResponse({"status": "not ready", "redis": type(e).__name__}, 503)
        if evicting:
            return OrjsonResponse({"status": "not ready", "redis": eviction_refusal(evicting)}, 503)
        if s.engine is not None and not s.engine.up:
            return OrjsonResponse({"status": "not ready", "engine": "unavailable"}, 503)
        if not s.warmed:
            return OrjsonResponse({"status": "not ready", "model": "warming up"}, 503)
        return {"status": "ready", "model_version": s.manifest.model_version, "providers": s.providers}

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def metrics(s: ServiceState = Depends(current)):
        body, content_type = exposition(s.metrics)
        return PlainTextResponse(body, media_type=content_type)
