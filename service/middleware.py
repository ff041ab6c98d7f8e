"""ASGI middleware around every route: body limits and timeouts, admission before a body is read, request
metrics. Plain ASGI: Starlette's BaseHTTPMiddleware costs more than the whole read path."""

from __future__ import annotations

import asyncio
import time

import orjson
from starlette.routing import Match

from u2qt.service.http import QUEUE_FULL, QUEUE_FULL_RETRY_AFTER


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
            try:  # asyncio.timeout_at, not wait_for: no task per receive on the hot path
                async with asyncio.timeout_at(deadline):
                    message = await receive()
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


class AdmissionGate:
    """Sheds POST /tokenize with 429 before its body is read or parsed when the queue has no room: under
    overload, refusing must cost far less than accepting, or the refusals themselves starve the accepted
    requests."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):  # in the write chain only: every request is a POST /tokenize
        state = getattr(scope["app"].state, "u2qt", None)
        if state is not None and not state.batcher.has_room(1):
            state.metrics.rejected.labels("queue_full").inc()
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
        root_path = scope.get("root_path", "")  # as it came: a mount that served the request has extended it

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
                path = route.path if route is not None else scope.get("u2qt_route") or route_template(scope, root_path)
                count, latency = state.metrics.request_series(path, scope["method"], status)
                count.inc()
                latency.observe(time.perf_counter() - t)


def route_template(scope, root_path: str) -> str:
    """The metrics label of a request that reached no FastAPI route: the template of the route (or mount, as the
    docs' static files) its path and method match, when a middleware refused it first (a 413 or a 408 from the
    body limit), or "unmatched" (a 404). A template, never the raw path: labels must stay few."""
    return _matching_template(scope["app"].router.routes, {**scope, "root_path": root_path}) or "unmatched"


def _matching_template(routes, scope) -> str | None:
    for route in routes:
        if route.matches(scope)[0] is Match.FULL:
            included = getattr(route, "original_router", None)  # FastAPI keeps an included router as one entry
            return _matching_template(included.routes, scope) if included is not None else route.path
    return None
