"""The read routes: token histories (one user, many users), embeddings from the history model, and the model's
description for rankers."""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError

from u2qt.model.decoded import codeword_sums, pool_user
from u2qt.model.fallback import fallback_token
from u2qt.model.sequence import history_sequence
from u2qt.model.sources import index_start, window_index
from u2qt.service.http import (
    READER,
    NoHistoryModel,
    OrjsonResponse,
    at_most,
    json_body,
    key_check,
    parse_json,
    parse_params,
)
from u2qt.service.ingest import RedisTimer, iso
from u2qt.service.schemas import (
    BatchEmbeddingRequest,
    BatchHistoryRequest,
    BatchHistoryResponse,
    HistoryPath,
    HistoryQuery,
    UserId,
)
from u2qt.service.state import ServiceState, current

router = APIRouter()


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
            counts = entries["count"][keep].tolist()
            rows += [(int(st), order[source], source, t, n) for st, t, n in zip(starts[keep], ids, counts, strict=True)]
        rows.sort(key=lambda r: (r[0], r[1]))
        if limit is not None:
            rows = rows[-limit:]
        # plain dicts, serialized once by orjson: the read path is the hot one
        out[user] = [
            {
                "source": src,
                "window_start": iso(st),
                "event_count": n,
                **({"tokens": t.tolist()} if fmt != "strings" else {}),
                **({"token_strings": [strings[i] for i in t]} if fmt != "ids" else {}),
            }
            for st, _, src, t, n in rows
        ]
    return out, {u: n for u, n in fallback.items() if n}


# The hottest route (rankers read per user per request) is a plain Starlette route: with FastAPI's parameter
# and dependency machinery its p99 was higher (benchmarks/read_bench.py side by side, README). Path and query
# are validated by pydantic models, errors have FastAPI's shape, and document_routes puts it in the OpenAPI
# schema.
reader_check = key_check("reader_keys")


async def user_tokens(request: Request) -> OrjsonResponse:
    """A user's token history in time order, from the model version this service serves."""
    # the metrics label: a plain Starlette route sets no scope["route"], and RequestMetrics' walk of the route
    # table (route_template) is for refused requests, not for every read of the hottest route
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


router.add_route("/users/{user_id}/tokens", user_tokens, methods=["GET"], include_in_schema=False)


# The batch routes read their bodies themselves, after the key check (dependencies=[READER]): a caller without
# a key learns nothing about the body's schema
async def batch_body(request: Request, model, s: ServiceState):
    """A batch read's body, its user list at most U2QT_MAX_USERS_PER_READ long (422) -> (body, distinct users)."""
    body = parse_json(model, await request.body())
    at_most(len(body.user_ids), s.settings.max_users_per_read, "user_ids", "users per call")
    return body, list(dict.fromkeys(body.user_ids))


@router.post(
    "/users/tokens",
    response_model=BatchHistoryResponse,
    response_model_exclude_none=True,
    tags=["tokens"],
    dependencies=[READER],
    openapi_extra={"requestBody": json_body(BatchHistoryRequest)},
)
async def many_user_tokens(request: Request, s: ServiceState = Depends(current)):
    """Histories of many users in one call (one Redis round trip), for rankers scoring many users."""
    body, users = await batch_body(request, BatchHistoryRequest, s)
    srcs = parse_sources(s, body.sources)
    h, fb = await histories(s, users, srcs, body.since, body.until, body.limit, body.format)
    out = {"model_version": s.manifest.model_version, "users": h}
    if fb:
        out["fallback"] = {u: {"fallback": n, "fallback_token": fallback_token(n)} for u, n in fb.items()}
    return OrjsonResponse(out)


EmbeddingKind = Literal["history", "tokens"]


async def user_embeddings(s: ServiceState, users: list[str], kind: EmbeddingKind = "history") -> dict[str, dict | None]:
    """history: the history model over the user's token sequence; tokens: the decoded tokens pooled per source
    (model/decoded.py), what `u2qt eval` reports as "decoded tokens"."""
    if kind == "tokens":
        return await decoded_embeddings(s, users)
    if s.embedder is None:
        raise NoHistoryModel
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


async def decoded_embeddings(s: ServiceState, users: list[str]) -> dict[str, dict | None]:
    if s.codebooks is None:
        raise NoHistoryModel(s.codebooks_missing)
    q, n_sources = s.manifest.quantizer, len(s.tokenizer.source_names)
    with RedisTimer(s.metrics, "read"):
        raw, _ = await s.store.read(users, s.tokenizer.source_names)
    out: dict[str, dict | None] = dict.fromkeys(users)
    now = window_index(time.time(), s.manifest.sources.period_s)  # recency is read against the server's clock
    for user in users:
        found = [(s.tokenizer.source_index[src], e) for src, e in raw[user].items() if len(e)]
        if not found:
            continue
        e = np.concatenate([x[1] for x in found])
        src_idx = np.concatenate([np.full(len(x[1]), x[0]) for x in found])
        z = codeword_sums(s.codebooks, q.shared_levels, q.codebook_size, e["codes"], src_idx)
        texts = s.texts(s.tokenizer.vocabulary.ids(src_idx, e["codes"]), src_idx) if s.texts else None
        v = pool_user(z, src_idx, e["count"], e["window"], n_sources, now, s.store.max_entries, s.soft_counts, texts)
        out[user] = {"windows": len(src_idx), "embedding": v.tolist()}
    return out


@router.get("/users/{user_id}/embedding", tags=["embeddings"], dependencies=[READER])
async def user_embedding(user_id: UserId, kind: EmbeddingKind = "history", s: ServiceState = Depends(current)):
    """The user's dense embedding from their stored token history: `kind=history` (default) by the history model
    (a 64-d vector); `kind=tokens` the tokens decoded to their codewords' sums, per source their mean weighted by
    the windows' event counts followed by the source's activity and, where the model has them, its soft counts, the
    sources side by side, then log1p of the user's count of each event text decoded from the tokens (the
    manifest's decoded.texts, in order) (decoded.dim floats in all; what docs/eval recommends for rankers). A user
    without history is no error, as for the token routes: `windows` 0 and `embedding` null."""
    e = (await user_embeddings(s, [user_id], kind))[user_id] or {"windows": 0, "embedding": None}
    return OrjsonResponse({"user_id": user_id, "model_version": s.manifest.model_version, "kind": kind, **e})


@router.get("/model", tags=["model"])
async def model_description(s: ServiceState = Depends(current)):
    """What a ranker needs to consume the tokens: the served model's version, sources and window period, the
    levels and codebook size, the vocabulary's layout, and every token's string (index = token id)."""
    return OrjsonResponse(s.model_description)


@router.post(
    "/users/embeddings",
    tags=["embeddings"],
    dependencies=[READER],
    openapi_extra={"requestBody": json_body(BatchEmbeddingRequest)},
)
async def many_user_embeddings(request: Request, s: ServiceState = Depends(current)):
    """Embeddings of many users in one call (null for a user with no history)."""
    body, users = await batch_body(request, BatchEmbeddingRequest, s)
    vectors = await user_embeddings(s, users, body.kind)
    return OrjsonResponse({"model_version": s.manifest.model_version, "kind": body.kind, "users": vectors})
