"""The wire format between HTTP frontends and the inference engine (service/engine.py), over a Unix socket.

Each frontend holds one stream connection to the engine. A request is one frame `[length, kind, request id]` +
body, an answer one frame `[length, request id, status]` + body (REQUEST, ANSWER: little-endian headers whose
first field is the body's length). A plain socket read by the event loop itself, not a messaging library with
its own I/O threads: a round trip is then one wake-up per side (benchmarks/frontends_bench.py, "IPC").
Bodies are msgpack structs (msgspec, decoded straight into typed fields) whose arrays (subword ids, features,
codes, histories, embeddings) travel as raw int32/int64/float32 bytes, never as lists of Python numbers.

    kind  P  ping                      -> EngineInfo
          W  WindowBatch (subword ids)  -> Codes
          H  HistoryBatch               -> Embeddings
    status  k ok | f full (the engine's queue cannot take them: 429) | e error (message: the request fails, 503)

Every answer carries the engine's queues (`pending` windows admitted and not answered, `rate` windows/s it
sustains; the same for histories), so each frontend refuses with 429 before it stores (or queues) anything when
the engine is behind.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import msgspec
import numpy as np

from u2qt.model.runtime import Chunks

PING, WINDOWS, HISTORIES = b"P", b"W", b"H"
OK, FULL, ERROR = b"k", b"f", b"e"
REQUEST = struct.Struct("<IcQ")  # body length, kind, request id
ANSWER = struct.Struct("<IQc")  # body length, request id, status


class Frames:
    """Splits a byte stream into frames of `header` (whose first field is the body's length) -> (the header's
    other fields..., body) per complete frame; a partial frame waits for the rest."""

    __slots__ = ("header", "buffer")

    def __init__(self, header: struct.Struct):
        self.header, self.buffer = header, bytearray()

    def feed(self, data: bytes) -> list[tuple]:
        buf = self.buffer
        buf += data
        frames, at, size = [], 0, self.header.size
        while len(buf) - at >= size:
            length, *fields = self.header.unpack_from(buf, at)
            end = at + size + length
            if end > len(buf):
                break
            frames.append((*fields, bytes(buf[at + size : end])))
            at = end
        del buf[:at]
        return frames


def frame(header: struct.Struct, first, second, body: bytes) -> bytes:
    return header.pack(len(body), first, second) + body


def ping(path: str, timeout_s: float) -> EngineInfo | None:
    """One blocking ping (for `u2qt serve`, before the frontends start) -> the engine's info, or None when no
    engine answers on `path` within `timeout_s`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(path)
            sock.sendall(frame(REQUEST, PING, 0, b""))
            frames, reader = [], Frames(ANSWER)
            while not frames:
                data = sock.recv(65536)
                if not data:
                    return None
                frames = reader.feed(data)
        except OSError:  # not listening yet, refused, or timed out
            return None
    _, status, body = frames[0]
    return decode_answer(PING, status, body) if status == OK else None


class Load(msgspec.Struct, array_like=True):
    pending: int = 0  # windows
    rate: float = 0.0  # windows/s; 0: not measured yet
    histories: int = 0  # histories admitted to the history model and not answered
    history_rate: float = 0.0  # histories/s; 0: not measured yet


class EngineInfo(msgspec.Struct, array_like=True):
    pid: int
    model_version: str
    providers: list[str]
    load: Load


class WindowBatch(msgspec.Struct, array_like=True):
    """Windows of one request: per window its source, the lengths of its chunks of subword ids ([] for a tabular
    window) and its features (float32 bytes; empty for a text window); then every chunk's ids, in order, as int32
    bytes. The frontend packs the ids (struct, from the tokenizer's lists) so that the engine, the one process all
    frontends share, only slices a buffer (benchmarks/frontends_bench.py)."""

    source_index: list[int]
    chunk_lengths: list[list[int]]
    token_ids: bytes
    features: list[bytes]


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
    ids: list[int] = []
    for cs in chunks:
        for c in cs or ():
            ids += c  # one flat list, packed by one struct call instead of a call per chunk
    return encoder.encode(
        WindowBatch(
            source_index,
            [[len(c) for c in cs] if cs is not None else [] for cs in chunks],
            struct.pack(f"<{len(ids)}i", *ids),
            [np.asarray(f, dtype=np.float32).tobytes() if f is not None else b"" for f in features],
        )
    )


def unpack_windows(body: bytes) -> Iterator[tuple[int, Chunks | None, np.ndarray | None]]:
    """A WindowBatch body -> per window, in order: (source index, chunks (int32 views of the body) or None,
    features or None). One pass, no lists in between: the engine builds its jobs from it."""
    b = _window_batch.decode(body)
    ids = np.frombuffer(b.token_ids, "<i4")
    at = 0
    for source, lengths, features in zip(b.source_index, b.chunk_lengths, b.features, strict=True):
        if not lengths:
            yield source, None, np.frombuffer(features, np.float32) if features else None
            continue
        window = []
        for n in lengths:
            window.append(ids[at : at + n])
            at += n
        yield source, window, None


def pack_histories(ids: np.ndarray, level: np.ndarray, age: np.ndarray) -> bytes:
    ids, level, age = (np.ascontiguousarray(x, dtype=np.int64) for x in (ids, level, age))
    return encoder.encode(HistoryBatch(ids.tobytes(), level.tobytes(), age.tobytes(), ids.shape))


def unpack_histories(body: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b = _history_batch.decode(body)
    return tuple(np.frombuffer(x, np.int64).reshape(b.shape) for x in (b.token_ids, b.level, b.age))


def decode_answer(kind: bytes, status: bytes, body: bytes):
    """-> the answer struct for `kind`, or a Failure (status full or error)."""
    return _answers[kind].decode(body) if status == OK else _failure.decode(body)
