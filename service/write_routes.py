"""The write route: POST /tokenize (the use case itself is service/ingest.py)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError

from u2qt.service.http import WRITER, OrjsonResponse, at_most, json_body, parse_json
from u2qt.service.ingest import validation_errors
from u2qt.service.schemas import TokenizeRequest, TokenizeResponse
from u2qt.service.state import ServiceState, current

router = APIRouter()


# The body is validated straight from its bytes by pydantic-core (FastAPI would json.loads it into Python
# objects first, then validate those); the schema still documents it (openapi_extra, document_routes).
@router.post(
    "/tokenize",
    response_model=TokenizeResponse,
    tags=["tokens"],
    dependencies=[WRITER],
    openapi_extra={"requestBody": json_body(TokenizeRequest)},
)
async def tokenize(request: Request, s: ServiceState = Depends(current)):
    """Tokenize events: each (user, source, window) they touch is re-rendered from all of its events,
    tokenized, and stored in the user's history. Replays are no-ops; late events are refused per event."""
    body = parse_json(TokenizeRequest, await request.body())
    at_most(len(body.events), s.settings.max_events_per_request, "events", "events per request")
    latest = time.time() + s.settings.max_future_skew
    errors = validation_errors(body.events, s.manifest, latest)
    if errors:
        raise RequestValidationError(errors)
    return OrjsonResponse(await s.tokenizer.tokenize(body.events))
