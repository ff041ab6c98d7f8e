"""What every route shares: the JSON response, request parsing with FastAPI's error shape, API keys, and the
errors routes raise (their handlers are registered in service/app.py)."""

from __future__ import annotations

import hmac
import math

import orjson
from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

# one 429 for both places that refuse: the admission gate (before the body is read) and the batchers
QUEUE_FULL = {"detail": "tokenization queue is full; retry later"}
QUEUE_FULL_RETRY_AFTER = "1"


class OrjsonResponse(JSONResponse):
    """JSON rendered by orjson: the handlers hand over plain data, serialized once (FastAPI's own ORJSONResponse
    is deprecated)."""

    def render(self, content) -> bytes:
        return orjson.dumps(content, default=str)


class Unauthorized(Exception):
    pass


class NoHistoryModel(Exception):
    pass


def key_check(keys_attr: str):
    """A dependency that raises Unauthorized unless the request carries one of the settings' `keys_attr` keys
    (none configured: no key needed). Async: FastAPI runs a sync dependency in a thread pool, a hop that costs
    more than the check."""

    async def check(request: Request):
        keys = getattr(request.app.state.u2qt.settings, keys_attr)
        if not keys:
            return
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        # compare against every key, so timing tells nothing about which (if any) matched
        ok = False
        for k in keys:
            ok |= hmac.compare_digest(given.encode(), k.get_secret_value().encode())
        if not ok:
            raise Unauthorized

    return check


READER = Depends(key_check("reader_keys"))


def json_body(model: type[BaseModel]) -> dict:
    """An OpenAPI request body of `model`, for a route that reads its body itself."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"required": True, "content": {"application/json": {"schema": ref}}}


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
    """`value` with every non-finite float, every integer beyond 64 bits and every object JSON cannot hold written
    as its text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return str(value)  # JSON allows it, orjson writes 64-bit integers only
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def at_most(n: int, limit: int, field: str, what: str) -> None:
    """A body list over its configured size: 422 naming the field, as the schema's own checks do."""
    if n > limit:
        raise RequestValidationError([{"loc": ["body", field], "type": "too_long", "msg": f"at most {limit} {what}"}])
