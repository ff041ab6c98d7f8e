"""MicroBatcher: gathers windows from concurrent requests into batches for ONNX Runtime.

Two stages, each running in its own thread so they overlap: stage 1 collects a batch (up to `max_batch_size`
windows or `max_wait_ms`) and runs the subword tokenizer; stage 2 runs the encoders and the quantizer. The event
loop stays free for HTTP and Redis meanwhile.

Stage 1 forms a batch only when stage 2 has taken the previous one (one batch prepared ahead, no more): a batch
formed earlier would hold only the windows that had arrived by then. With a queue of prepared batches, 32
clients' windows went out in batches of 13 on average, and on a CPU a batch of 13 costs ~1.25x the CPU per
window of a batch of 64 (less room to group texts of similar length, per-batch runs of the small models).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from u2qt.model.manifest import Manifest
from u2qt.model.runtime import Chunks, RenderedWindow, TokenizerRuntime
from u2qt.service.metrics import ServiceMetrics


async def gather_batch(queue: asyncio.Queue, first, max_size: int, max_wait_s: float) -> list:
    """`first` plus whatever arrives within `max_wait_s`, up to `max_size` items. A None (stop marker) ends the
    batch and is put back, so the caller finishes this batch and then sees it."""
    loop = asyncio.get_running_loop()
    batch, deadline = [first], loop.time() + max_wait_s
    while len(batch) < max_size:
        try:
            nxt = queue.get_nowait()
        except asyncio.QueueEmpty:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                nxt = await asyncio.wait_for(queue.get(), remaining)
            except TimeoutError:
                break
        if nxt is None:
            queue.put_nowait(None)
            break
        batch.append(nxt)
    return batch


class QueueFull(Exception):
    """Taking these items would exceed the queue's size, or the service is behind (expected wait too long)."""


class Admission:
    """Who gets into a batcher's queue. Items are counted from the moment a request is admitted (reserve) until
    they are answered, so a request is refused before it has stored or started anything, never half-way.

    Refused when the items would overflow the queue, or when the items already ahead would take longer than
    `max_delay_s` at the measured rate: the service is behind. The size of the newcomer itself does not count
    against the delay (one large request on a quiet service is work, not overload), and an idle batcher takes
    any request that fits the queue."""

    def __init__(self, max_items: int, max_delay_ms: float, depth_gauge=None):
        self.max_items, self.max_delay_s, self.depth_gauge = max_items, max_delay_ms / 1000, depth_gauge
        self.rate: float | None = None  # items/s the inference stage sustains (EWMA over batches)
        self.pending = 0  # items admitted and not yet answered
        # items queued elsewhere ahead of ours: with frontends, the engine's whole queue as it last reported it
        self.elsewhere = 0
        self.closing = False

    def has_room(self, items: int) -> bool:
        if self.closing or self.pending + items > self.max_items:
            return False
        if self.pending == 0:
            return True
        ahead = max(self.pending, self.elsewhere)
        return not (self.max_delay_s and self.rate and ahead / self.rate > self.max_delay_s)

    def reserve(self, items: int) -> Reservation:
        if not self.has_room(items):
            raise QueueFull
        self._add(items)
        return Reservation(self, items)

    def observe_rate(self, items: int, seconds: float) -> None:
        sample = items / max(seconds, 1e-6)
        self.rate = sample if self.rate is None else 0.8 * self.rate + 0.2 * sample

    def _add(self, items: int) -> None:
        if not items:
            return
        self.pending += items
        if self.depth_gauge is not None:
            self.depth_gauge.set(self.pending)


class Reservation:
    """Room held in a queue for a request's items; what the request does not use is given back on exit."""

    def __init__(self, admission: Admission, items: int):
        self.admission, self.left = admission, items

    def take(self, items: int) -> None:
        if items > self.left:
            raise RuntimeError(f"{items} items submitted on a reservation of {self.left}")
        self.left -= items

    def done(self, items: int) -> None:
        self.admission._add(-items)

    def extend(self, items: int) -> None:
        """Room for `items` more of an admitted request's items (windows it must tokenize a second time): taken
        without asking admission, which admitted the request whole."""
        self.left += items
        self.admission._add(items)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc) -> None:
        self.done(self.left)
        self.left = 0


@dataclass
class WindowJob(RenderedWindow):
    """A rendered window waiting in the batcher for its codes; `chunks`: its subword ids when a frontend has
    already tokenized it (the engine process)."""

    chunks: Chunks | None = None
    future: asyncio.Future = field(default=None, repr=False)
    queued_at: float = 0.0


def warm_up(manifest: Manifest) -> list[WindowJob]:
    """One window per source, to run every model once before the service says it is ready."""
    jobs = []
    for i, s in enumerate(manifest.sources.sources):
        if s.kind == "text":
            jobs.append(WindowJob(i, text="warm up"))
        else:
            jobs.append(WindowJob(i, features=np.zeros(len(manifest.tabular[s.name].feature_names), np.float32)))
    return jobs


@dataclass
class PreparedBatch:
    jobs: list[WindowJob]
    token_ids: list[Chunks | None]  # per job (None for tabular windows)


def fail(jobs: list[WindowJob], error: Exception) -> None:
    """A batch that failed fails its requests, not its batcher."""
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(error)


class WindowQueue:
    """What the routes see of a window batcher, in-process (MicroBatcher) or in a frontend (RemoteMicroBatcher in
    service/engine_client.py): admission, and submit -> codes. A subclass consumes `_incoming`."""

    def __init__(self, levels: int, admission: Admission):
        self.levels, self.admission = levels, admission
        self._incoming: asyncio.Queue[WindowJob | None] | None = None

    def has_room(self, windows: int) -> bool:
        return self.admission.has_room(windows)

    def reserve(self, windows: int) -> Reservation:
        """Room for up to `windows` windows, held until the reservation is left; raises QueueFull."""
        return self.admission.reserve(windows)

    async def submit(self, jobs: list[WindowJob], reservation: Reservation | None = None) -> np.ndarray:
        """-> codes [len(jobs), levels]. On a reservation the jobs are always taken; without one they are
        admitted here, and QueueFull is raised when the queue cannot take them all."""
        if not jobs:
            return np.zeros((0, self.levels), dtype=np.int64)
        if reservation is None:
            with self.reserve(len(jobs)) as own:
                return await self.submit(jobs, own)
        reservation.take(len(jobs))
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        for job in jobs:
            job.future, job.queued_at = loop.create_future(), now
            self._incoming.put_nowait(job)
        try:
            return np.stack(await asyncio.gather(*(j.future for j in jobs)))
        finally:
            reservation.done(len(jobs))


class MicroBatcher(WindowQueue):
    def __init__(
        self,
        runtime: TokenizerRuntime,
        metrics: ServiceMetrics,
        max_batch_size: int = 64,
        max_wait_ms: float = 5.0,
        max_queue: int = 4096,
        max_queue_delay_ms: float = 0.0,
        report_depth: bool = True,
    ):
        """report_depth=False: what this batcher holds stays out of u2qt_queue_windows (the engine's: its frontends
        count the same windows)."""
        # Admission by expected wait, not only by count: under overload the queue then stays as short as the
        # latency objective allows, so accepted requests keep their latency and the rest get an honest 429.
        gauge = metrics.queue_depth if report_depth else None
        super().__init__(runtime.vocabulary.levels, Admission(max_queue, max_queue_delay_ms, gauge))
        self.runtime, self.metrics = runtime, metrics
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_ms / 1000
        self._prepared: asyncio.Queue[PreparedBatch | None] | None = None
        self._ahead: asyncio.Semaphore | None = None  # held by the one batch prepared and not yet taken
        self._tasks: list[asyncio.Task] = []
        self._prep_pool = ThreadPoolExecutor(1, thread_name_prefix="u2qt-tokenize")
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="u2qt-infer")

    async def start(self) -> None:
        self._incoming, self._prepared, self._ahead = asyncio.Queue(), asyncio.Queue(), asyncio.Semaphore(1)
        self._tasks = [asyncio.create_task(self._collect()), asyncio.create_task(self._infer())]

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._incoming.get()
            if job is None:
                self._prepared.put_nowait(None)
                return
            await self._ahead.acquire()  # until stage 2 takes the batch prepared before: windows gather meanwhile
            batch = await gather_batch(self._incoming, job, self.max_batch_size, self.max_wait_s)
            try:
                prepared = await loop.run_in_executor(self._prep_pool, self._tokenize, batch)
            except Exception as e:  # noqa: BLE001 - a failed batch fails its requests, not the batcher
                self._ahead.release()
                fail(batch, e)
                continue
            self._prepared.put_nowait(prepared)

    def _tokenize(self, batch: list[WindowJob]) -> PreparedBatch:
        todo = [j for j in batch if j.text is not None and j.chunks is None]
        for job, ids in zip(todo, self.runtime.tokenize_texts(todo), strict=True):
            job.chunks = ids
        return PreparedBatch(batch, [j.chunks for j in batch])

    async def _infer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            prepared = await self._prepared.get()
            if prepared is None:
                return
            self._ahead.release()
            started = time.perf_counter()
            for job in prepared.jobs:
                self.metrics.queue_wait.observe(started - job.queued_at)
            try:
                codes = await loop.run_in_executor(self._infer_pool, self._run, prepared)
            except Exception as e:  # noqa: BLE001
                fail(prepared.jobs, e)
                continue
            elapsed = time.perf_counter() - started
            self.metrics.inference.observe(elapsed)
            self.admission.observe_rate(len(prepared.jobs), elapsed)
            self.metrics.batch_size.observe(len(prepared.jobs))
            for job, c in zip(prepared.jobs, codes, strict=True):
                if not job.future.done():
                    job.future.set_result(c)

    def _run(self, p: PreparedBatch) -> np.ndarray:
        return self.runtime.encode_windows(p.jobs, p.token_ids)

    async def stop(self) -> None:
        """Finishes every window already submitted, then stops (SIGTERM drain)."""
        self.admission.closing = True
        if self._incoming is not None:
            self._incoming.put_nowait(None)
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._prep_pool.shutdown(wait=True)
        self._infer_pool.shutdown(wait=True)


class EmbeddingBatcher:
    """Gathers token histories from concurrent requests into one ONNX Runtime call of the history model
    (up to `max_batch_size` histories or `max_wait_ms`), off the event loop, behind the same admission as the
    MicroBatcher (429 when its queue is full or behind)."""

    def __init__(
        self,
        runtime: TokenizerRuntime,
        metrics: ServiceMetrics,
        max_batch_size: int = 64,
        max_wait_ms: float = 5.0,
        max_queue: int = 4096,
        max_queue_delay_ms: float = 0.0,
        report_depth: bool = True,
    ):
        self.runtime, self.metrics = runtime, metrics
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_ms / 1000
        gauge = metrics.embedding_queue_depth if report_depth else None
        self.admission = Admission(max_queue, max_queue_delay_ms, gauge)
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="u2qt-history")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def embed(self, sequences: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
        """-> one embedding per sequence. Raises QueueFull (before anything is queued) when there is no room."""
        with self.admission.reserve(len(sequences)):
            loop = asyncio.get_running_loop()
            now = time.perf_counter()
            futures = []
            for seq in sequences:
                fut = loop.create_future()
                self._queue.put_nowait((seq, fut, now))
                futures.append(fut)
            return np.stack(await asyncio.gather(*futures))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await self._queue.get()
            if item is None:
                return
            batch = await gather_batch(self._queue, item, self.max_batch_size, self.max_wait_s)
            started = time.perf_counter()
            for _, _, queued_at in batch:
                self.metrics.embedding_queue_wait.observe(started - queued_at)
            arrays = [np.stack([seq[i] for seq, _, _ in batch]) for i in range(3)]
            try:
                out = await loop.run_in_executor(self._pool, self.runtime.embed_histories, *arrays)
            except Exception as e:  # noqa: BLE001 - a failed batch fails its requests, not the batcher
                for _, fut, _ in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            elapsed = time.perf_counter() - started
            self.metrics.embedding_inference.observe(elapsed)
            self.metrics.embedding_batch_size.observe(len(batch))
            self.admission.observe_rate(len(batch), elapsed)
            for (_, fut, _), row in zip(batch, out, strict=True):
                if not fut.done():
                    fut.set_result(row)

    async def stop(self) -> None:
        self.admission.closing = True
        if self._queue is not None:
            self._queue.put_nowait(None)
            await asyncio.gather(self._task, return_exceptions=True)
        self._pool.shutdown(wait=True)
