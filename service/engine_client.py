"""A frontend's side of the inference engine (service/engine.py), for U2QT_FRONTENDS=N.

RemoteMicroBatcher and RemoteEmbeddingBatcher are what the routes see, as in-process MicroBatcher and
EmbeddingBatcher are: admission before anything is stored (429), submit -> codes, embed -> vectors. They share
one EngineConnection (a Unix socket). The frontend renders and tokenizes (subword ids, off the event loop) and
sends id arrays; the engine batches them with every other frontend's windows.

When the engine dies its socket closes: every request waiting on it and every new one fails
with EngineUnavailable (503, nothing committed: a retry re-tokenizes the window, as after a Redis outage), until
`u2qt serve` has restarted the engine and the socket reconnects by itself.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from u2qt.model.runtime import TextTokenizer
from u2qt.service import engine_protocol as wire
from u2qt.service.batcher import Admission, QueueFull, Reservation, WindowJob, WindowQueue, fail, gather_batch
from u2qt.service.metrics import ServiceMetrics


class EngineUnavailable(Exception):
    """The inference engine is down or restarting: 503, retry."""


class EngineConnection(asyncio.Protocol):
    """A frontend's one stream connection to the engine's Unix socket (frames: engine_protocol), read by the
    event loop itself. Reconnects by itself (every 50 ms, backing off to 0.5 s) while the engine restarts."""

    def __init__(self, path: str, request_timeout_s: float = 30.0):
        self.path, self.request_timeout_s = path, request_timeout_s
        self.up = False
        self.info: wire.EngineInfo | None = None
        self.load = wire.Load()  # the engine's queues, as its last answer said
        self._load_listeners: list[Callable[[wire.Load], None]] = []
        self._info_listeners: list[Callable[[wire.EngineInfo], None]] = []
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[bytes, asyncio.Future, float]] = {}  # rid -> kind, answer, deadline
        self._frames = wire.Frames(wire.ANSWER)
        self._transport: asyncio.Transport | None = None
        self._introduced = asyncio.Event()  # set once an engine has answered a ping on this connection
        self._lost = asyncio.Event()
        self._connector: asyncio.Task | None = None
        self._introduction: asyncio.Task | None = None
        self._sweeper: asyncio.Task | None = None
        self._stopping = False

    async def start(self, timeout_s: float) -> bool:
        """Connects; -> whether the engine answered a ping within `timeout_s`. A frontend starts either way: one
        that uvicorn restarts while the engine is down (or hung) must not fail its start, which would make uvicorn
        stop every frontend. It serves reads meanwhile, and writes get 503 until the engine answers."""
        self._connector = asyncio.create_task(self._connect())
        self._sweeper = asyncio.create_task(self._expire())
        try:
            async with asyncio.timeout(timeout_s):
                await self._introduced.wait()
        except TimeoutError:
            return False
        return True

    async def _connect(self) -> None:
        loop, delay = asyncio.get_running_loop(), 0.05
        while True:
            try:
                await loop.create_unix_connection(lambda: self, self.path)
            except OSError:  # not listening (yet, or again)
                await asyncio.sleep(delay)
                delay = min(2 * delay, 0.5)
                continue
            delay = 0.05
            await self._lost.wait()
            self._lost.clear()

    def connection_made(self, transport: asyncio.Transport) -> None:
        self._transport, self._frames = transport, wire.Frames(wire.ANSWER)
        self.up = True
        self._introduction = asyncio.get_running_loop().create_task(self._introduce(transport))

    async def _introduce(self, transport: asyncio.Transport) -> None:
        """Asks each engine it connects to what it runs (a restarted engine may have other providers); a hung one is
        asked again, a lost connection's next one asks anew."""
        while True:
            if self._transport is not transport:
                return
            try:
                info = await self.request(wire.PING)
                break
            except EngineUnavailable:
                continue
        self.info = info
        print(f"u2qt frontend {os.getpid()}: connected to the engine (pid {info.pid})", flush=True)
        for listener in self._info_listeners:
            listener(info)
        self._introduced.set()

    def connection_lost(self, exc: Exception | None) -> None:
        """The engine died or stopped: every request waiting on it fails now (503), as does every new one until the
        connection is back."""
        if self.info is not None and not self._stopping:
            print(f"u2qt frontend {os.getpid()}: lost the engine; writes get 503 until it is back", flush=True)
        self._transport, self.up = None, False
        self._set_load(wire.Load())
        self._lost.set()
        waiting, self._waiting = self._waiting, {}
        for _, future, _ in waiting.values():
            if not future.done():
                future.set_exception(EngineUnavailable())

    def data_received(self, data: bytes) -> None:
        for rid, status, body in self._frames.feed(data):
            kind, future, _ = self._waiting.pop(rid, (None, None, None))
            if future is None or future.done():
                continue
            answer = wire.decode_answer(kind, status, body)
            self._set_load(answer.load)
            if status == wire.OK:
                future.set_result(answer)
            elif status == wire.FULL:
                future.set_exception(QueueFull())
            else:
                future.set_exception(RuntimeError(f"inference engine: {answer.message}"))

    def watch_load(self, listener: Callable[[wire.Load], None]) -> None:
        """Calls `listener` with the engine's load now, on every answer, and with an empty load when the connection
        is lost: the batchers' admissions hold the engine's queues in one place, pushed here."""
        self._load_listeners.append(listener)
        listener(self.load)

    def watch_info(self, listener: Callable[[wire.EngineInfo], None]) -> None:
        """Calls `listener` with what each engine this connection reaches says it runs (now, if known)."""
        self._info_listeners.append(listener)
        if self.info is not None:
            listener(self.info)

    def _set_load(self, load: wire.Load) -> None:
        self.load = load
        for listener in self._load_listeners:
            listener(load)

    async def request(self, kind: bytes, body: bytes = b""):
        """Sends one request and waits for its answer; raises EngineUnavailable (also when an engine that is alive
        does not answer within request_timeout_s: a hung engine must not hold requests for ever), QueueFull or
        RuntimeError."""
        if not self.up:
            raise EngineUnavailable
        rid = next(self._ids)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting[rid] = (kind, future, loop.time() + self.request_timeout_s)
        self._transport.write(wire.frame(wire.REQUEST, kind, rid, body))
        return await future

    async def _expire(self) -> None:
        """Fails the requests whose deadline has passed (a late answer then finds no one waiting and is dropped).
        One sweep every quarter of the timeout (at most 1 s) instead of a timer armed and cancelled per request."""
        loop, every = asyncio.get_running_loop(), min(1.0, self.request_timeout_s / 4)
        while True:
            await asyncio.sleep(every)
            now = loop.time()
            late = [rid for rid, (_, _, deadline) in self._waiting.items() if deadline <= now]
            for rid in late:
                _, future, _ = self._waiting.pop(rid)
                if not future.done():
                    future.set_exception(EngineUnavailable(f"no answer within {self.request_timeout_s:g} s"))

    async def stop(self) -> None:
        self._stopping = True
        for task in (self._connector, self._introduction, self._sweeper):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._transport is not None:
            self._transport.close()


class RemoteMicroBatcher(WindowQueue):
    """MicroBatcher's interface, batched by the engine. Its first stage runs here: windows that concurrent requests
    submit while the previous message is being prepared go out together (up to `max_batch_size`, never waiting
    for more), tokenized and packed off the event loop; the engine batches those messages with every other
    frontend's. One message per gathering, not per request: the event loop's and the engine's cost per
    message is shared by its windows."""

    def __init__(
        self,
        connection: EngineConnection,
        tokenizer: TextTokenizer,
        levels: int,
        metrics: ServiceMetrics,
        max_batch_size: int = 64,
        max_queue: int = 4096,
        max_queue_delay_ms: float = 0.0,
    ):
        super().__init__(levels, Admission(max_queue, max_queue_delay_ms, metrics.queue_depth))
        self.connection, self.tokenizer, self.max_batch_size = connection, tokenizer, max_batch_size
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="u2qt-tokenize")
        self._sender: asyncio.Task | None = None
        self._exchanges: set[asyncio.Task] = set()
        connection.watch_load(self._engine_load)

    async def start(self) -> None:
        self._incoming = asyncio.Queue()
        self._sender = asyncio.create_task(self._send())

    def reserve(self, windows: int) -> Reservation:
        if not self.connection.up:
            raise EngineUnavailable
        return super().reserve(windows)

    def _engine_load(self, load: wire.Load) -> None:
        """The engine's whole queue and rate, as its last answer said, decide admission by expected wait."""
        self.admission.elsewhere, self.admission.rate = load.pending, load.rate or None

    async def _send(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._incoming.get()
            if job is None:
                return
            batch = await gather_batch(self._incoming, job, self.max_batch_size, 0.0)
            try:
                body = await loop.run_in_executor(self._pool, self._pack, batch)
            except Exception as e:  # noqa: BLE001 - a failed batch fails its requests, not the frontend
                fail(batch, e)
                continue
            exchange = asyncio.create_task(self._exchange(batch, body))  # the next batch gathers meanwhile
            self._exchanges.add(exchange)
            exchange.add_done_callback(self._exchanges.discard)

    async def _exchange(self, batch: list[WindowJob], body: bytes) -> None:
        try:
            answer = await self.connection.request(wire.WINDOWS, body)
        except Exception as e:  # noqa: BLE001 - EngineUnavailable (503), QueueFull (429) or a failed inference
            fail(batch, e)
            return
        codes = np.frombuffer(answer.codes, np.int64).reshape(len(batch), answer.levels)
        for job, c in zip(batch, codes, strict=True):
            if not job.future.done():
                job.future.set_result(c)

    def _pack(self, jobs: list[WindowJob]) -> bytes:
        chunks = self.tokenizer.encode_windows(jobs)
        return wire.pack_windows([j.source_index for j in jobs], chunks, [j.features for j in jobs])

    async def stop(self) -> None:
        """Finishes every window already submitted, then stops."""
        self.admission.closing = True
        if self._incoming is not None:
            self._incoming.put_nowait(None)
            await asyncio.gather(self._sender, return_exceptions=True)
            await asyncio.gather(*self._exchanges, return_exceptions=True)
        self._pool.shutdown(wait=True)


class RemoteEmbeddingBatcher:
    """EmbeddingBatcher's interface: histories go to the engine's history model, admitted (or 429) by the
    engine's history queue and rate as its last answer said, as RemoteMicroBatcher admits windows."""

    def __init__(self, connection: EngineConnection, metrics: ServiceMetrics, max_queue: int, max_delay_ms: float):
        self.connection = connection
        self.admission = Admission(max_queue, max_delay_ms, metrics.embedding_queue_depth)
        connection.watch_load(self._engine_load)

    def _engine_load(self, load: wire.Load) -> None:
        self.admission.elsewhere, self.admission.rate = load.histories, load.history_rate or None

    async def embed(self, sequences: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
        if not self.connection.up:
            raise EngineUnavailable
        with self.admission.reserve(len(sequences)):
            arrays = [np.stack([seq[i] for seq in sequences]) for i in range(3)]
            answer = await self.connection.request(wire.HISTORIES, wire.pack_histories(*arrays))
            return np.frombuffer(answer.vectors, np.float32).reshape(len(sequences), answer.dim)

    async def stop(self) -> None:
        self.admission.closing = True
