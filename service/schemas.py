"""Request and response bodies of the HTTP API."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

from u2qt.model.sources import LAST_ISO_SECOND, WINDOW_ORIGIN

# Braces would break the `{user}` hash tag of the Redis key layout; the rest keeps keys printable.
UserId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:@+=\-]{1,128}$")]
# min_length 1: the empty field name of a window's event hash is the store's own (service/store.py)
EventId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
# Amounts and attributes are summed over a window's events: bounded so that no sum can overflow to inf/NaN.
MAX_MAGNITUDE = 1e15
Magnitude = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_MAGNITUDE, le=MAX_MAGNITUDE)]


def as_utc(value: datetime) -> datetime:
    """A date-time without an offset is UTC, as training reads it (training/events.py), whatever the server's
    time zone."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]


class EventIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "event_id": "tx-31198570044-1095275",
                    "user_id": "900",
                    "source": "purchases",
                    "ts": "2017-03-09T11:53:26Z",
                    "text": "soft drinks",
                    "amount": 2.5,
                },
                {
                    "event_id": "basket-31198570044",
                    "user_id": "900",
                    "source": "visits",
                    "ts": 1489060406,
                    "attributes": {"spend": 42.1, "lines": 12, "discount": 3.2, "hour": 11, "weekend": 0},
                },
            ]
        },
    )
    event_id: EventId
    user_id: UserId
    source: str = Field(min_length=1, max_length=64)
    ts: datetime | float = Field(
        description="event time: unix seconds or ISO-8601 (without an offset: UTC); from 1970-01-05T00:00:00Z up "
        "to U2QT_MAX_FUTURE_SKEW ahead of the server's clock"
    )
    text: str | None = Field(None, max_length=4000, description="text sources only")
    # finite and bounded, checked by pydantic-core (no Python call per event)
    amount: Magnitude | None = Field(None, description="text sources only")
    attributes: dict[str, Magnitude] | None = Field(None, description="tabular sources only")

    @field_validator("ts", mode="before")
    @classmethod
    def _not_bool(cls, v):
        if isinstance(v, bool):  # JSON true would otherwise be read as 1 second after the epoch
            raise ValueError("ts must be unix seconds or an ISO-8601 time, not a boolean")
        return v

    @field_validator("ts")
    @classmethod
    def _ts(cls, v):
        seconds = as_utc(v).timestamp() if isinstance(v, datetime) else float(v)
        if not math.isfinite(seconds) or not WINDOW_ORIGIN <= seconds <= LAST_ISO_SECOND:
            raise ValueError("ts must be a time from 1970-01-05T00:00:00Z (the first window) on")
        return seconds


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[EventIn] = Field(min_length=1)


class EventStatus(BaseModel):
    event_id: str
    status: Literal["accepted", "duplicate", "late", "refused"]
    reason: str | None = None


class WindowTokens(BaseModel):
    user_id: str | None = None
    source: str
    window_start: datetime
    event_count: int | None = None
    tokens: list[int] | None = None
    token_strings: list[str] | None = None


class TokenizeResponse(BaseModel):
    model_version: str
    accepted: int
    duplicates: int
    late: int
    refused: int = Field(description="events over U2QT_MAX_EVENTS_PER_WINDOW for their window")
    events: list[EventStatus]
    windows: list[WindowTokens]


class HistoryResponse(BaseModel):
    user_id: str
    model_version: str
    windows: list[WindowTokens]
    # only when another user's full token sequence (all sources) is identical: paper eq. 9's fallback,
    # 1, 2, ... in order of engagement (accepted events), then user id
    fallback: int | None = None
    fallback_token: str | None = None


class HistoryPath(BaseModel):
    """The path parameters of GET /users/{user_id}/tokens."""

    user_id: UserId


class HistoryQuery(BaseModel):
    """The query of GET /users/{user_id}/tokens (unknown parameters are ignored)."""

    sources: list[str] | None = Field(None, description="only these sources (repeat or comma-separate)")
    since: UtcDatetime | None = Field(None, description="windows starting at or after this time (no offset: UTC)")
    until: UtcDatetime | None = Field(None, description="windows starting at or before this time (no offset: UTC)")
    limit: int | None = Field(None, ge=1, description="only the most recent N windows")
    format: Literal["ids", "strings", "both"] = "ids"


class BatchHistoryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_ids: list[UserId] = Field(min_length=1)
    sources: list[str] | None = None
    since: UtcDatetime | None = None
    until: UtcDatetime | None = None
    limit: int | None = Field(None, ge=1)
    format: Literal["ids", "strings", "both"] = "ids"


class BatchEmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_ids: list[UserId] = Field(min_length=1, examples=[["1001", "1002"]])
    kind: Literal["history", "tokens"] = Field(
        "history", description="history: the history model; tokens: decoded tokens pooled per source"
    )


class BatchHistoryResponse(BaseModel):
    model_version: str
    users: dict[str, list[WindowTokens]]


# POST /tokenize's hot path: the body decoded by msgspec straight into EventRecord structs (C, no per-event
# pydantic model); the same constraints as EventIn. Whatever msgspec refuses is parsed again by pydantic
# (TokenizeRequest), whose errors are the API's 422s: a valid body costs the fast path only, and an invalid
# one gets exactly the error it always got.
class EventRecord(msgspec.Struct, forbid_unknown_fields=True):
    event_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    # \Z, not $: Python's $ also matches before a final newline, which the API's user ids (pydantic) refuse
    user_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:@+=\-]{1,128}\Z")]
    source: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    ts: datetime | float
    text: Annotated[str, msgspec.Meta(max_length=4000)] | None = None
    amount: Annotated[float, msgspec.Meta(ge=-MAX_MAGNITUDE, le=MAX_MAGNITUDE)] | None = None
    attributes: dict[str, Annotated[float, msgspec.Meta(ge=-MAX_MAGNITUDE, le=MAX_MAGNITUDE)]] | None = None


class TokenizeBody(msgspec.Struct, forbid_unknown_fields=True):
    events: Annotated[list[EventRecord], msgspec.Meta(min_length=1)]


_tokenize_body = msgspec.json.Decoder(TokenizeBody)


def tokenize_events(body: bytes) -> list[EventRecord] | list[EventIn]:
    """The events of a POST /tokenize body, `ts` in unix seconds; raises pydantic's ValidationError if invalid."""
    try:
        events = _tokenize_body.decode(body).events
    except (msgspec.DecodeError, msgspec.ValidationError):
        return TokenizeRequest.model_validate_json(body).events
    for e in events:
        ts = e.ts
        if isinstance(ts, datetime):
            ts = e.ts = as_utc(ts).timestamp()
        if not WINDOW_ORIGIN <= ts <= LAST_ISO_SECOND:  # a NaN fails too
            return TokenizeRequest.model_validate_json(body).events
    return events
