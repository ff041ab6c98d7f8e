"""The write route, POST /tokenize (the use case itself is service/ingest.py), served as plain ASGI ahead of
FastAPI's whole stack (service/app.py: ServiceApp): the hottest route skips what lies between the server and an
endpoint (FastAPI's telemetry check and exception wrappers, router matching, dependency solving) and goes through
its own chain of the service's middlewares. Its errors go through the app's own exception handlers, so every
status and body is what any route gives; document_routes puts it in the OpenAPI schema."""

from __future__ import annotations

import time

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.requests import Request

from u2qt.service.http import OrjsonResponse, at_most, fastapi_errors, key_check
from u2qt.service.ingest import validation_errors
from u2qt.service.schemas import tokenize_events
from u2qt.service.state import ServiceState

writer_check = key_check("writer_keys")


async def tokenize(request: Request) -> OrjsonResponse:
    """Tokenize events: each (user, source, window) they touch is re-rendered from all of its events,
    tokenized, and stored in the user's history. Replays are no-ops; late events are refused per event."""
    await writer_check(request)
    s: ServiceState = request.app.state.u2qt
    # the body is decoded straight from its bytes by msgspec (schemas.tokenize_events), not json.loads + pydantic
    try:
        events = tokenize_events(await request.body())
    except ValidationError as e:
        raise RequestValidationError(fastapi_errors(e, "body")) from None
    at_most(len(events), s.settings.max_events_per_request, "events", "events per request")
    latest = time.time() + s.settings.max_future_skew
    errors = validation_errors(events, s.manifest, latest)
    if errors:
        raise RequestValidationError(errors)
    return OrjsonResponse(await s.tokenizer.tokenize(events))


class TokenizeRoute:
    """POST /tokenize -> tokenize(), as an ASGI app: the end of the write chain (ServiceApp.write_chain)."""

    async def __call__(self, scope, receive, send):
        request = Request(scope, receive)
        try:
            response = await tokenize(request)
        except Exception as exc:
            handler = exception_handler(scope["app"], exc)
            if handler is None:
                raise  # the server's 500
            response = await handler(request, exc)
        await response(scope, receive, send)


def exception_handler(app, exc: Exception):
    """The app's handler for `exc` (by its class's MRO, as Starlette picks one), or None."""
    for cls in type(exc).__mro__:
        if cls in app.exception_handlers:
            return app.exception_handlers[cls]
    return None
