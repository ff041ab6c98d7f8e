"""The wire format between HTTP frontends and the inference engine (service/engine.py), over ZeroMQ.

A frontend's DEALER sends `[kind, request id, body]`; the engine's ROUTER answers `[request id, status, body]`.
Bodies are msgpack (msgspec) structs whose arrays travel as raw bytes (numpy buffers, one copy each way), never as
Python lists: a batch of 64 windows is a handful of buffers.

    kind  P  ping                      -> EngineInfo
          W  WindowBatch (subword ids)  -> Codes
          H  HistoryBatch               -> Embeddings
    status  ok | full (the engine's queue cannot take them: 429) | error (message: the request fails, 503)

Every answer carries the engine's queue (`pending` windows admitted and not answered, `rate` windows/s it
sustains), so each frontend refuses with 429 before it stores anything when the engine is behind.
"""

from __future__ import annotations

import msgspec
import numpy as np

from u2qt.model.runtime import Chunks

PING, WINDOWS, HISTORIES = b"P", b"W", b"H"
OK, FULL, ERROR = b"ok", b"full", b"error"


class Load(msgspec.Struct, array_like=True):
    pending: int = 0
    rate: float = 0.0  # 0: not measured yet


class EngineInfo(msgspec.Struct, array_like=True):
    pid: int
    model_version: str
    providers: list[str]
    load: Load


class WindowBatch(msgspec.Struct, array_like=True):
    """Windows of one request: per window its source, its number of subword chunks (0: tabular) and features
    width (0: text); then every chunk's length, every subword id, every feature, in window order."""

    source_index: bytes  # int64 [n]
    chunks: bytes  # int32 [n]
    widths: bytes  # int32 [n]
    chunk_lengths: bytes  # int32 [chunks]
    token_ids: bytes  # int32 [tokens]
    features: bytes  # float32 [sum of widths]


class Codes(msgspec.Struct, array_like=True):
    codes: bytes  # int64 [n, levels]
    levels: int
    load: Load


class HistoryBatch(msgspec.Struct, array_like=True):
    token_ids: bytes  # int64 [b, t]
    level: bytes  # int64 [b, t]
    age: bytes  # int64 [b, t]
    shape: tuple[int, int]


class Embeddings(msgspec.Struct, array_like=True):
    vectors: bytes  # float32 [b, dim]
    dim: int
    load: Load


class Failure(msgspec.Struct, array_like=True):
    message: str
    load: Load


encoder = msgspec.msgpack.Encoder()
_window_batch = msgspec.msgpack.Decoder(WindowBatch)
_history_batch = msgspec.msgpack.Decoder(HistoryBatch)
_answers = {
    PING: msgspec.msgpack.Decoder(EngineInfo),
    WINDOWS: msgspec.msgpack.Decoder(Codes),
    HISTORIES: msgspec.msgpack.Decoder(Embeddings),
}
_failure = msgspec.msgpack.Decoder(Failure)


def pack_windows(source_index: list[int], chunks: list[Chunks | None], features: list[np.ndarray | None]) -> bytes:
    """One request's windows -> a WindowBatch body. A window has either chunks (text) or features (tabular)."""
    n_chunks = np.array([len(c) if c is not None else 0 for c in chunks], dtype=np.int32)
    flat = [x for c in chunks if c is not None for x in c]
    lengths = np.array([len(x) for x in flat], dtype=np.int32)
    ids = np.concatenate([np.asarray(x, dtype=np.int32) for x in flat]) if flat else np.zeros(0, np.int32)
    rows = [f for f in features if f is not None]
    widths = np.array([len(f) if f is not None else 0 for f in features], dtype=np.int32)
    feats = np.concatenate(rows).astype(np.float32) if rows else np.zeros(0, np.float32)
    return encoder.encode(
        WindowBatch(
            np.asarray(source_index, dtype=np.int64).tobytes(),
            n_chunks.tobytes(),
            widths.tobytes(),
            lengths.tobytes(),
            ids.tobytes(),
            feats.tobytes(),
        )
    )


def unpack_windows(body: bytes) -> tuple[np.ndarray, list[Chunks | None], list[np.ndarray | None]]:
    """A WindowBatch body -> (source index per window, chunks per window (arrays of ids), features per window)."""
    b = _window_batch.decode(body)
    n_chunks = np.frombuffer(b.chunks, np.int32)
    widths = np.frombuffer(b.widths, np.int32)
    lengths = np.frombuffer(b.chunk_lengths, np.int32)
    pieces = np.split(np.frombuffer(b.token_ids, np.int32).astype(np.int64), np.cumsum(lengths)[:-1])
    rows = np.split(np.frombuffer(b.features, np.float32), np.cumsum(widths)[:-1])
    chunks: list[Chunks | None] = []
    features: list[np.ndarray | None] = []
    c = 0
    for i, (k, w) in enumerate(zip(n_chunks.tolist(), widths.tolist(), strict=True)):
        chunks.append(pieces[c : c + k] if k else None)
        features.append(rows[i] if w else None)
        c += k
    return np.frombuffer(b.source_index, np.int64), chunks, features


def pack_histories(ids: np.ndarray, level: np.ndarray, age: np.ndarray) -> bytes:
    ids, level, age = (np.ascontiguousarray(x, dtype=np.int64) for x in (ids, level, age))
    return encoder.encode(HistoryBatch(ids.tobytes(), level.tobytes(), age.tobytes(), ids.shape))


def unpack_histories(body: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b = _history_batch.decode(body)
    return tuple(np.frombuffer(x, np.int64).reshape(b.shape) for x in (b.token_ids, b.level, b.age))


def decode_answer(kind: bytes, status: bytes, body: bytes):
    """-> the answer struct for `kind`, or a Failure (status full or error)."""
    return _answers[kind].decode(body) if status == OK else _failure.decode(body)
