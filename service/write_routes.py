"""The write route: POST /tokenize (the use case itself is service/ingest.py)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from u2qt.service.http import WRITER, OrjsonResponse, at_most, fastapi_errors, json_body
from u2qt.service.ingest import validation_errors
from u2qt.service.schemas import TokenizeRequest, TokenizeResponse, tokenize_events
from u2qt.service.state import ServiceState, current

router = APIRouter()


# The body is decoded straight from its bytes by msgspec (schemas.tokenize_events; FastAPI would json.loads it into
# Python objects first, then validate those with pydantic); the schema still documents it (openapi_extra,
# document_routes).
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
