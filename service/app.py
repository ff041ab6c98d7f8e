"""The HTTP API (FastAPI). Everything that is not HTTP lives in ingest, batcher and store."""

from __future__ import annotations

import asyncio
import gc
import hmac
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
import orjson
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError

from model.fallback import fallback_token
from model.manifest import Manifest
from model.runtime import TokenizerRuntime
from model.sequence import history_sequence
from model.sources import index_start
from service.batcher import EmbeddingBatcher, MicroBatcher, QueueFull, WindowJob
from service.embedded_redis import EmbeddedRedis
from service.ingest import EventTokenizer, RedisTimer, TooManyWindows, iso, validation_errors
from service.metrics import ServiceMetrics
from service.schemas import (
    BatchEmbeddingRequest,
    BatchHistoryRequest,
    BatchHistoryResponse,
    HistoryPath,
    HistoryQuery,
    HistoryResponse,
    TokenizeRequest,
    TokenizeResponse,
    UserId,
)
from service.settings import ServiceSettings
from service.store import TokenHistoryStore


class OrjsonResponse(JSONResponse):
    """JSON rendered by orjson: the handlers hand over plain data, serialized once (FastAPI's own ORJSONResponse
    is deprecated)."""

    def render(self, content) -> bytes:
        return orjson.dumps(content, default=str)


@dataclass
class ServiceState:
    settings: ServiceSettings
    manifest: Manifest
    runtime: TokenizerRuntime
    metrics: ServiceMetrics
    redis: aioredis.Redis
    store: TokenHistoryStore
    batcher: MicroBatcher
    tokenizer: EventTokenizer
    embedded: EmbeddedRedis | None
    embedder: EmbeddingBatcher | None
    warmed: bool = False

    @property
    def model_description(self) -> dict:
        m, v = self.manifest, self.tokenizer.vocabulary
        return {
            "model_version": m.model_version,
            "window": m.sources.window,
            "sources": [{"name": x.name, "kind": x.kind, "description": x.description} for x in m.sources.sources],
            "shared_levels": v.shared_levels,
            "specific_levels": v.specific_levels,
            "codebook_size": v.codebook_size,
            "vocabulary": m.vocabulary.model_dump(),
            "tokens": self.tokenizer.strings,
            "history_model": m.history.model_dump() if m.history else None,
        }


def warm_up(batcher: MicroBatcher, manifest: Manifest) -> list[WindowJob]:
    jobs = []
    for i, s in enumerate(manifest.sources.sources):
        if s.kind == "text":
            jobs.append(WindowJob(i, text="warm up"))
        else:
            jobs.append(WindowJob(i, features=np.zeros(len(manifest.tabular[s.name].feature_names), np.float32)))
    return jobs


class BodyLimit:
    """Refuses a body over `limit` bytes with 413, before it is parsed (also without Content-Length), and a body
    that takes longer than `timeout_s` to arrive with 408: a slow client must not hold a request open for ever."""

    def __init__(self, app, limit: int, timeout_s: float = 30.0):
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        seen, complete = 0, False
        deadline = asyncio.get_running_loop().time() + self.timeout_s

        async def limited():
            nonlocal seen, complete
            if complete:  # after the body only a disconnect can come: no deadline on waiting for it
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except TimeoutError:
                raise _SlowBody from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
                complete = not message.get("more_body", False)
            return message

        try:
            return await self.app(scope, limited, send)
        except _TooLarge:
            return await self._refuse(send)
        except _SlowBody:
            return await self._refuse(send, 408, f"request body did not arrive within {self.timeout_s:g} s")

    async def _refuse(self, send, status: int = 413, detail: str | None = None):
        body = orjson.dumps({"detail": detail or f"request body is larger than {self.limit} bytes"})
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class _SlowBody(Exception):
    pass


# one 429 for both places that refuse: the admission gate (before the body is read) and the batcher
QUEUE_FULL = {"detail": "tokenization queue is full; retry later"}
QUEUE_FULL_RETRY_AFTER = "1"


class AdmissionGate:
    """Sheds POST /tokenize with 429 before its body is read or parsed when the queue has no room: under
    overload, refusing must cost far less than accepting, or the refusals themselves starve the accepted
    requests."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/tokenize":
            state = getattr(scope["app"].state, "u2qt", None)
            if state is not None and not state.batcher.has_room(1):
                state.metrics.rejected.labels("queue_full").inc()
                scope["u2qt_route"] = "/tokenize"
                body = orjson.dumps(QUEUE_FULL)
                await send(
                    {
                        "type": "http.response.start",
                        "status": 429,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"retry-after", QUEUE_FULL_RETRY_AFTER.encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class RequestMetrics:
    """Counts and times every request by route template and status. Plain ASGI: Starlette's
    BaseHTTPMiddleware costs more than the whole read path."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t, status = time.perf_counter(), 500

        async def observed_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            state = getattr(scope["app"].state, "u2qt", None)
            if state is not None:
                route = scope.get("route")
                path = route.path if route is not None else scope.get("u2qt_route") or plain_route(scope["path"])
                state.metrics.requests.labels(path, scope["method"], str(status)).inc()
                state.metrics.latency.labels(path, scope["method"], str(status)).observe(time.perf_counter() - t)


DOCS_ASSETS = "/static-offline-docs"


def plain_route(path: str) -> str:
    """The metrics label of a request no FastAPI route took: the docs' static files, or "unmatched" (a 404)."""
    return DOCS_ASSETS if path.startswith(DOCS_ASSETS + "/") else "unmatched"


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        manifest = Manifest.load(settings.artifacts)
        runtime = TokenizerRuntime(
            settings.artifacts,
            manifest,
            settings.providers,
            settings.ort_threads or None,
            run_width=settings.encoder_batch,
            max_padding=settings.encoder_max_padding,
        )
        metrics = ServiceMetrics()
        metrics.initialize([x.name for x in manifest.sources.sources], runtime.vocabulary.levels)
        metrics.queue_capacity.set(settings.max_queue_windows)
        metrics.model_info.labels(manifest.model_version, ",".join(runtime.providers)).set(1)
        embedded = None
        url = settings.redis_url
        if not url:
            embedded = EmbeddedRedis(settings.embedded_redis_dir)
            url = embedded.start()
        # A blocking pool: a request waits for a free connection (a burst of reads is load, not an outage)
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=settings.redis_max_connections,
            timeout=settings.redis_pool_timeout_s,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            health_check_interval=10,
        )
        client = aioredis.Redis(connection_pool=pool)
        store = TokenHistoryStore(
            client,
            settings.key_prefix,
            manifest.model_version,
            runtime.vocabulary.levels,
            runtime.vocabulary.codebook_size,
            manifest.sources.period_s,
            settings.history_days,
            settings.ttl_days,
            settings.late_windows,
            settings.max_events_per_window,
        )
        # both batchers gather and admit alike: batch size, wait, queue size, queue delay
        s = settings
        batching = s.max_batch_size, s.max_wait_ms, s.max_queue_windows, s.max_queue_delay_ms
        batcher = MicroBatcher(runtime, metrics, *batching)
        await batcher.start()
        embedder = None
        if runtime.history is not None:
            embedder = EmbeddingBatcher(runtime, metrics, *batching)
            await embedder.start()
        state = ServiceState(
            settings,
            manifest,
            runtime,
            metrics,
            client,
            store,
            batcher,
            EventTokenizer(manifest, store, batcher, metrics),
            embedded,
            embedder,
        )
        for job in warm_up(batcher, manifest):  # one at a time: the queue may hold a single window
            await batcher.submit([job])
        state.warmed = True
        # Long-lived objects (model, sessions, modules) move out of the collector's view: full collections
        # then scan only request garbage, which trims the read path's latency tail.
        gc.collect()
        gc.freeze()
        app.state.u2qt = state
        try:
            yield
        finally:
            await batcher.stop()  # drain: every window already submitted is finished and committed
            if embedder:
                await embedder.stop()
            await client.aclose()
            if embedded:
                embedded.stop()

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
    app.add_middleware(AdmissionGate)
    app.add_middleware(RequestMetrics)

    # async dependencies: FastAPI runs a sync one in a thread pool, a hop that costs more than the check
    async def state(request: Request) -> ServiceState:
        return request.app.state.u2qt

    def key_check(keys_attr: str):
        async def check(request: Request):
            keys = getattr(settings, keys_attr)
            if not keys:
                return
            given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
            # compare against every key, so timing tells nothing about which (if any) matched
            ok = False
            for k in keys:
                ok |= hmac.compare_digest(given.encode(), k.get_secret_value().encode())
            if not ok:
                raise _Unauthorized

        return check

    writer, reader = Depends(key_check("writer_keys")), Depends(key_check("reader_keys"))

    @app.exception_handler(_Unauthorized)
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
        return OrjsonResponse(
            {"detail": f"token store unavailable: {type(exc).__name__}"}, 503, headers={"Retry-After": "2"}
        )

    @app.get("/healthz", tags=["ops"])
    async def healthz():
        return {"status": "alive"}

    @app.get("/readyz", tags=["ops"])
    async def readyz(s: ServiceState = Depends(state)):
        try:
            await asyncio.wait_for(s.redis.ping(), 2.0)
        except (RedisError, OSError, TimeoutError) as e:
            return OrjsonResponse({"status": "not ready", "redis": type(e).__name__}, 503)
        if not s.warmed:
            return OrjsonResponse({"status": "not ready", "model": "warming up"}, 503)
        return {"status": "ready", "model_version": s.manifest.model_version, "providers": s.runtime.providers}

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def metrics(s: ServiceState = Depends(state)):
        return PlainTextResponse(generate_latest(s.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # The body is validated straight from its bytes by pydantic-core (FastAPI would json.loads it into Python
    # objects first, then validate those); the schema still documents it (openapi_extra, document_routes).
    @app.post(
        "/tokenize",
        response_model=TokenizeResponse,
        tags=["tokens"],
        dependencies=[writer],
        openapi_extra={"requestBody": json_body(TokenizeRequest)},
    )
    async def tokenize(request: Request, s: ServiceState = Depends(state)):
        """Tokenize events: each (user, source, window) they touch is re-rendered from all of its events,
        tokenized, and stored in the user's history. Replays are no-ops; late events are refused per event."""
        body = parse_json(TokenizeRequest, await request.body())
        at_most(len(body.events), settings.max_events_per_request, "events", "events per request")
        latest = time.time() + settings.max_future_skew
        errors = validation_errors(body.events, s.manifest, latest)
        if errors:
            raise RequestValidationError(errors)
        return OrjsonResponse(await s.tokenizer.tokenize(body.events))

    def parse_sources(s: ServiceState, sources: list[str] | None) -> list[str]:
        known = [x.name for x in s.manifest.sources.sources]
        if not sources:
            return known
        sources = list(dict.fromkeys(sources))  # a source named twice is read once
        unknown = [x for x in sources if x not in known]
        if unknown:
            raise RequestValidationError(
                [
                    {
                        "loc": ["query", "sources"],
                        "type": "value_error",
                        "msg": f"unknown source(s) {unknown}; this model has {known}",
                    }
                ]
            )
        return sources

    async def histories(s: ServiceState, users: list[str], sources: list[str], since, until, limit, fmt):
        with RedisTimer(s.metrics, "read"):
            raw, fallback = await s.store.read(users, sources)
        order = s.tokenizer.source_index
        period, vocab, strings = s.manifest.sources.period_s, s.tokenizer.vocabulary, s.tokenizer.strings
        lo = None if since is None else since.timestamp()
        hi = None if until is None else until.timestamp()
        out = {}
        for user in users:
            rows = []
            for source in sources:
                entries = raw[user][source]
                if not len(entries):
                    continue
                starts = entries["window"].astype(np.int64) * period + index_start(0, period)
                keep = np.ones(len(entries), bool)
                if lo is not None:
                    keep &= starts >= lo
                if hi is not None:
                    keep &= starts <= hi
                ids = vocab.ids(np.full(int(keep.sum()), s.tokenizer.source_index[source]), entries["codes"][keep])
                rows += [(int(st), order[source], source, t) for st, t in zip(starts[keep], ids, strict=True)]
            rows.sort(key=lambda r: (r[0], r[1]))
            if limit is not None:
                rows = rows[-limit:]
            # plain dicts, serialized once by orjson: the read path is the hot one
            out[user] = [
                {
                    "source": src,
                    "window_start": iso(st),
                    **({"tokens": t.tolist()} if fmt != "strings" else {}),
                    **({"token_strings": [strings[i] for i in t]} if fmt != "ids" else {}),
                }
                for st, _, src, t in rows
            ]
        return out, {u: n for u, n in fallback.items() if n}

    # The hottest route (rankers read per user per request) is a plain Starlette route: with FastAPI's parameter
    # and dependency machinery its p99 was higher (benchmarks/read_bench.py side by side, README). Path and query
    # are validated by pydantic models, errors have FastAPI's shape, and document_routes puts it in the OpenAPI
    # schema.
    reader_check = key_check("reader_keys")

    async def user_tokens(request: Request) -> OrjsonResponse:
        """A user's token history in time order, from the model version this service serves."""
        request.scope["u2qt_route"] = "/users/{user_id}/tokens"
        await reader_check(request)
        s: ServiceState = request.app.state.u2qt
        user_id = parse_params(HistoryPath, request.path_params, "path").user_id
        qp = request.query_params
        fields = {k: qp[k] for k in ("since", "until", "limit", "format") if k in qp}
        q = parse_params(HistoryQuery, {**fields, "sources": qp.getlist("sources") or None}, "query")
        srcs = parse_sources(s, [x for v in q.sources or [] for x in v.split(",") if x])
        h, fb = await histories(s, [user_id], srcs, q.since, q.until, q.limit, q.format)
        body = {"user_id": user_id, "model_version": s.manifest.model_version, "windows": h[user_id]}
        if user_id in fb:  # another user's full token sequence is identical: the fallback token tells them apart
            body |= {"fallback": fb[user_id], "fallback_token": fallback_token(fb[user_id])}
        return OrjsonResponse(body)

    app.add_route("/users/{user_id}/tokens", user_tokens, methods=["GET"], include_in_schema=False)

    # The batch routes read their bodies themselves, after the key check (dependencies=[reader]): a caller without
    # a key learns nothing about the body's schema
    @app.post(
        "/users/tokens",
        response_model=BatchHistoryResponse,
        response_model_exclude_none=True,
        tags=["tokens"],
        dependencies=[reader],
        openapi_extra={"requestBody": json_body(BatchHistoryRequest)},
    )
    async def many_user_tokens(request: Request, s: ServiceState = Depends(state)):
        """Histories of many users in one call (one Redis round trip), for rankers scoring many users."""
        body = parse_json(BatchHistoryRequest, await request.body())
        at_most(len(body.user_ids), settings.max_users_per_read, "user_ids", "users per call")
        srcs = parse_sources(s, body.sources)
        users = list(dict.fromkeys(body.user_ids))
        h, fb = await histories(s, users, srcs, body.since, body.until, body.limit, body.format)
        out = {"model_version": s.manifest.model_version, "users": h}
        if fb:
            out["fallback"] = {u: {"fallback": n, "fallback_token": fallback_token(n)} for u, n in fb.items()}
        return OrjsonResponse(out)

    async def user_embeddings(s: ServiceState, users: list[str]) -> dict[str, dict | None]:
        if s.embedder is None:
            raise _NoHistoryModel
        h = s.manifest.history
        with RedisTimer(s.metrics, "read"):
            raw, _ = await s.store.read(users, s.tokenizer.source_names)
        seqs, found = [], []
        for user in users:
            items = [
                (e["window"].astype(np.int64), np.full(len(e), s.tokenizer.source_index[src]), e["codes"])
                for src, e in raw[user].items()
                if len(e)
            ]
            if not items:
                continue
            windows = np.concatenate([x[0] for x in items])
            src_idx = np.concatenate([x[1] for x in items])
            ids = s.tokenizer.vocabulary.ids(src_idx, np.concatenate([x[2] for x in items]))
            seqs.append(history_sequence(windows, src_idx, ids, h.max_tokens, h.max_age))
            found.append((user, len(windows)))
        vectors = await s.embedder.embed(seqs) if seqs else []
        out: dict[str, dict | None] = dict.fromkeys(users)
        for (user, n), v in zip(found, vectors, strict=True):
            out[user] = {"windows": n, "embedding": v.tolist()}
        return out

    @app.get("/users/{user_id}/embedding", tags=["embeddings"], dependencies=[reader])
    async def user_embedding(user_id: UserId, s: ServiceState = Depends(state)):
        """The user's dense embedding, computed from their stored token history by the history model. A user
        without history is no error, as for the token routes: `windows` 0 and `embedding` null."""
        e = (await user_embeddings(s, [user_id]))[user_id] or {"windows": 0, "embedding": None}
        return OrjsonResponse({"user_id": user_id, "model_version": s.manifest.model_version, **e})

    @app.get("/model", tags=["model"])
    async def model_description(s: ServiceState = Depends(state)):
        """What a ranker needs to consume the tokens: the served model's version, sources and window period, the
        levels and codebook size, the vocabulary's layout, and every token's string (index = token id)."""
        return OrjsonResponse(s.model_description)

    @app.post(
        "/users/embeddings",
        tags=["embeddings"],
        dependencies=[reader],
        openapi_extra={"requestBody": json_body(BatchEmbeddingRequest)},
    )
    async def many_user_embeddings(request: Request, s: ServiceState = Depends(state)):
        """Embeddings of many users in one call (null for a user with no history)."""
        body = parse_json(BatchEmbeddingRequest, await request.body())
        at_most(len(body.user_ids), settings.max_users_per_read, "user_ids", "users per call")
        users = list(dict.fromkeys(body.user_ids))
        return OrjsonResponse({"model_version": s.manifest.model_version, "users": await user_embeddings(s, users)})

    @app.exception_handler(_NoHistoryModel)
    async def no_history_model(request, exc):
        return OrjsonResponse({"detail": "this model has no history model (trained without the alignment stage)"}, 501)

    document_routes(app, TokenizeRequest, BatchHistoryRequest, BatchEmbeddingRequest)
    return app


def json_body(model: type[BaseModel]) -> dict:
    """An OpenAPI request body of `model`, for a route that reads its body itself."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"required": True, "content": {"application/json": {"schema": ref}}}


def document_routes(app: FastAPI, *bodies: type[BaseModel]) -> None:
    """Completes the OpenAPI schema with what FastAPI cannot see: the schemas of bodies that routes parse
    themselves (json_body) and the plain route GET /users/{user_id}/tokens."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = build()
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for model, mode in [*((b, "validation") for b in bodies), (HistoryResponse, "serialization")]:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            params = [
                {
                    "name": name,
                    "in": where,
                    "required": where == "path",
                    "description": schema.pop("description", ""),
                    "schema": schema,
                }
                for model, where in ((HistoryPath, "path"), (HistoryQuery, "query"))
                for name, schema in model.model_json_schema(ref_template="#/components/schemas/{model}")[
                    "properties"
                ].items()
            ]
            json_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/HistoryResponse"}}}
            errors = {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}
            spec["paths"].setdefault("/users/{user_id}/tokens", {})["get"] = {
                "tags": ["tokens"],
                "summary": "User Tokens",
                "description": "A user's token history in time order, from the model version this service serves.",
                "operationId": "user_tokens",
                "parameters": params,
                "responses": {
                    "200": {"description": "Successful Response", "content": json_ref},
                    "422": {"description": "Validation Error", "content": errors},
                },
            }
        return app.openapi_schema

    app.openapi = openapi


def parse_json(model: type[BaseModel], body: bytes):
    """`body` validated as `model`; 422 with FastAPI's error shape (loc starting at "body") if it is not."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise RequestValidationError(fastapi_errors(e, "body")) from None


def parse_params(model: type[BaseModel], params: dict, where: str):
    """Path or query parameters validated as `model`; 422 with FastAPI's error shape (loc starting at `where`)."""
    try:
        return model.model_validate(params)
    except ValidationError as e:
        raise RequestValidationError(fastapi_errors(e, where)) from None


def fastapi_errors(e: ValidationError, where: str) -> list[dict]:
    errors = e.errors(include_url=False)
    for err in errors:
        err["loc"] = (where, *err["loc"])
        if err["type"] == "json_invalid":
            err.pop("input", None)  # the whole body: a client needs the position, not its own bytes back
    return errors


def json_safe(value):
    """`value` with every non-finite float written as a string and every object JSON cannot hold as its text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def at_most(n: int, limit: int, field: str, what: str) -> None:
    """A body list over its configured size: 422 naming the field, as the schema's own checks do."""
    if n > limit:
        raise RequestValidationError([{"loc": ["body", field], "type": "too_long", "msg": f"at most {limit} {what}"}])


class _NoHistoryModel(Exception):
    pass


class _Unauthorized(Exception):
    pass
