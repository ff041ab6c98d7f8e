"""InferenceEngine: the one process that owns ONNX Runtime (one model copy per GPU) when the service runs with
U2QT_FRONTENDS=N. It batches windows and histories from every frontend in one MicroBatcher and one
EmbeddingBatcher, so a GPU sees batches of everyone's windows instead of N processes' small ones.

Frontends (service/engine_client.py) do HTTP, validation, Redis, rendering and subword tokenization, and send
subword ids; the engine answers codes (service/engine_protocol.py). `u2qt serve` starts it
(`python -m u2qt.service.engine`, settings from the environment), restarts it when it dies, and stops it last:
SIGTERM finishes every window already received, then exits. It ignores SIGINT (a Ctrl+C reaches the frontends,
which drain through it first) and exits when its parent dies.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import numpy as np
import uvloop

from u2qt.model.manifest import Manifest
from u2qt.model.runtime import TokenizerRuntime
from u2qt.service import engine_protocol as wire
from u2qt.service.batcher import EmbeddingBatcher, MicroBatcher, QueueFull, WindowJob, warm_up
from u2qt.service.metrics import ServiceMetrics, multiprocess_dir
from u2qt.service.settings import ServiceSettings


def window_jobs(body: bytes) -> list[WindowJob]:
    """A WindowBatch body -> the batcher's jobs, already tokenized."""
    # positionally (source_index, text, features, chunks): keyword arguments cost more, for every window
    return [WindowJob(s, None, f, c) for s, c, f in wire.unpack_windows(body)]


class InferenceEngine:
    def __init__(self, settings: ServiceSettings):
        s = self.settings = settings
        self.manifest = Manifest.load(s.artifacts)
        self.runtime = TokenizerRuntime(
            s.artifacts, self.manifest, s.providers, s.ort_threads or None, s.encoder_batch, s.encoder_max_padding
        )
        self.metrics = ServiceMetrics()
        self.metrics.initialize([x.name for x in self.manifest.sources.sources], self.runtime.vocabulary.levels)
        # Frontends admit (each up to max_queue_windows, and none while the engine is behind): the engine takes what
        # they admitted, with room for all of them.
        # u2qt_queue_windows / _users are the frontends' (what each admitted and is not answered yet): the engine's
        # own count of the same windows would count each twice in the sum over processes
        room = s.max_queue_windows * max(s.frontends, 1)
        batching = (self.runtime, self.metrics, s.max_batch_size, s.max_wait_ms, room, 0.0)
        self.batcher = MicroBatcher(*batching, report_depth=False)
        self.embedder = EmbeddingBatcher(*batching, report_depth=False) if self.runtime.history is not None else None
        self.tasks: set[asyncio.Task] = set()

    def load(self) -> wire.Load:
        a = self.batcher.admission
        h = self.embedder.admission if self.embedder else None
        return wire.Load(a.pending, a.rate or 0.0, h.pending if h else 0, (h.rate or 0.0) if h else 0.0)

    async def start(self) -> None:
        await self.batcher.start()
        if self.embedder:
            await self.embedder.start()
        for job in warm_up(self.manifest):
            await self.batcher.submit([job])

    async def serve(self, path: str, stop: asyncio.Event) -> None:
        """Answers frontends on the Unix socket `path` until `stop` is set, then finishes every request received."""
        links: set[FrontendLink] = set()
        server = await asyncio.get_running_loop().create_unix_server(lambda: FrontendLink(self, links), path)
        print(f"u2qt engine ready: pid {os.getpid()}, {path}, {','.join(self.runtime.providers)}", flush=True)
        try:
            await stop.wait()
            server.close()  # no new frontends; those connected are answered what they sent
            await asyncio.gather(*self.tasks, return_exceptions=True)
        finally:
            await self.batcher.stop()
            if self.embedder:
                await self.embedder.stop()
            for link in list(links):
                link.close()

    def receive(self, link: FrontendLink, kind: bytes, rid: int, body: bytes) -> None:
        task = asyncio.create_task(self.answer(link, kind, rid, body))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def answer(self, link: FrontendLink, kind: bytes, rid: int, body: bytes) -> None:
        try:
            status, reply = wire.OK, await self.handle(kind, body)
        except QueueFull:
            status, reply = wire.FULL, wire.Failure("engine queue full", self.load())
        except Exception as e:  # noqa: BLE001 - a failed request fails alone, not the engine
            status, reply = wire.ERROR, wire.Failure(f"{type(e).__name__}: {e}", self.load())
        link.send(rid, status, wire.encoder.encode(reply))

    async def handle(self, kind: bytes, body: bytes):
        if kind == wire.WINDOWS:
            codes = await self.batcher.submit(window_jobs(body))
            levels = self.runtime.vocabulary.levels
            return wire.Codes(np.ascontiguousarray(codes, dtype=np.int64).tobytes(), levels, self.load())
        if kind == wire.HISTORIES:
            if self.embedder is None:
                raise RuntimeError("these artifacts have no history model")
            ids, level, age = wire.unpack_histories(body)
            out = await self.embedder.embed(list(zip(ids, level, age, strict=True)))
            out = np.ascontiguousarray(out, dtype=np.float32)
            return wire.Embeddings(out.tobytes(), out.shape[1], self.load())
        if kind == wire.PING:
            return wire.EngineInfo(os.getpid(), self.manifest.model_version, self.runtime.providers, self.load())
        raise ValueError(f"unknown request kind {kind!r}")


class FrontendLink(asyncio.Protocol):
    """One frontend's connection: its request frames go to the engine, which answers on the same connection."""

    def __init__(self, engine: InferenceEngine, links: set[FrontendLink]):
        self.engine, self.links = engine, links
        self.frames = wire.Frames(wire.REQUEST)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.links.add(self)

    def data_received(self, data: bytes) -> None:
        for kind, rid, body in self.frames.feed(data):
            self.engine.receive(self, kind, rid, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None  # its frontend is gone: the answers it waited for have no one to go to
        self.links.discard(self)

    def send(self, rid: int, status: bytes, body: bytes) -> None:
        if self.transport is not None:
            self.transport.write(wire.frame(wire.ANSWER, rid, status, body))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def run(settings: ServiceSettings) -> None:
    if not settings.engine_socket:
        raise SystemExit("U2QT_ENGINE_SOCKET is not set: the engine is started by `u2qt serve` with U2QT_FRONTENDS")
    try:
        engine = InferenceEngine(settings)
        await engine.start()
    except (OSError, RuntimeError, ValueError) as e:  # artifacts, providers: one line, for `u2qt serve` to show
        raise SystemExit(f"u2qt engine could not start: {e}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    parent = os.getppid()

    async def orphaned():
        while not stop.is_set():
            if os.getppid() != parent:  # `u2qt serve` died without stopping us
                stop.set()
            await asyncio.sleep(1)

    watch = asyncio.create_task(orphaned())
    await engine.serve(str(settings.engine_socket), stop)
    watch.cancel()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        uvloop.run(run(ServiceSettings()))
    finally:
        if multiprocess_dir():
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())
    sys.exit(0)


if __name__ == "__main__":
    main()
