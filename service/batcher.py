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
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from model.runtime import TokenizerRuntime
from service.metrics import ServiceMetrics


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
    """Taking these windows would exceed the queue's size or its expected wait."""


@dataclass
class WindowJob:
    source_index: int
    text: str | None = None
    features: np.ndarray | None = None
    future: asyncio.Future = field(default=None, repr=False)
    queued_at: float = 0.0


@dataclass
class PreparedBatch:
    jobs: list[WindowJob]
    token_ids: list[list[int]]  # per text job, in the order of `text_jobs`
    text_jobs: list[int]


def length_runs(lengths: np.ndarray, width: int, max_padding: float = math.inf) -> list[np.ndarray]:
    """Indices of `lengths` in runs for the text encoder: sorted by length (similar lengths, less padding), at
    most `width` per run, and a run also ends before a window that would make its padding exceed `max_padding`
    of its real tokens (infinite: runs of fixed width)."""
    order = np.argsort(lengths, kind="stable")
    runs, start, total = [], 0, 0
    for k, i in enumerate(order):
        n, longest = k - start + 1, int(lengths[i])  # ascending: the newcomer is the run's longest
        if n > width or n * longest > (1 + max_padding) * (total + longest):
            runs.append(order[start:k])
            start, total = k, 0
        total += longest
    runs.append(order[start:])
    return runs


class MicroBatcher:
    def __init__(
        self,
        runtime: TokenizerRuntime,
        metrics: ServiceMetrics,
        max_batch_size: int = 64,
        max_wait_ms: float = 5.0,
        max_queue: int = 4096,
        max_queue_delay_ms: float = 0.0,
        text_chunk: int = 0,
        max_padding: float | None = None,
    ):
        self.runtime, self.metrics = runtime, metrics
        self.max_batch_size, self.max_wait_s, self.max_queue = max_batch_size, max_wait_ms / 1000, max_queue
        # Text-encoder runs within a batch. On CPU padding is paid in full: runs of similar length, at most 8 wide
        # and cut where padding would pass 25% of the real tokens (benchmarks/ort_threads.py --sections batches:
        # x1.25 / x1.09 / x1.08 the windows/s of fixed runs of 4 at batches of 8 / 13 / 64; runs of 4 were
        # themselves 1.7x runs of 32). On a GPU, the whole batch in one run: padding is cheap there.
        self.text_chunk = text_chunk or (max_batch_size if runtime.on_gpu else 8)
        self.max_padding = max_padding if max_padding is not None else (math.inf if runtime.on_gpu else 0.25)
        # Admission by expected wait, not only by count: under overload the queue then stays as short as the
        # latency objective allows, so accepted requests keep their latency and the rest get an honest 429.
        self.max_delay_s = max_queue_delay_ms / 1000
        self.rate: float | None = None  # windows/s the inference stage sustains (EWMA over batches)
        self.pending = 0  # windows submitted and not yet answered
        self._incoming: asyncio.Queue[WindowJob] | None = None
        self._prepared: asyncio.Queue[PreparedBatch | None] | None = None
        self._ahead: asyncio.Semaphore | None = None  # held by the one batch prepared and not yet taken
        self._tasks: list[asyncio.Task] = []
        self._prep_pool = ThreadPoolExecutor(1, thread_name_prefix="u2qt-tokenize")
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="u2qt-infer")
        self._closing = False

    async def start(self) -> None:
        self._incoming, self._prepared, self._ahead = asyncio.Queue(), asyncio.Queue(), asyncio.Semaphore(1)
        self._tasks = [asyncio.create_task(self._collect()), asyncio.create_task(self._infer())]

    def has_room(self, windows: int) -> bool:
        waiting = self.pending + windows
        if self._closing or waiting > self.max_queue:
            return False
        if self.pending == 0:  # an idle service takes any request that fits the queue, however large
            return True
        return not (self.max_delay_s and self.rate and waiting / self.rate > self.max_delay_s)

    async def submit(self, jobs: list[WindowJob]) -> np.ndarray:
        """-> codes [len(jobs), levels]. Raises QueueFull when the queue cannot take them all."""
        if not jobs:
            return np.zeros((0, self.runtime.vocabulary.levels), dtype=np.int64)
        if not self.has_room(len(jobs)):
            raise QueueFull
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        for job in jobs:
            job.future, job.queued_at = loop.create_future(), now
            self._incoming.put_nowait(job)
        self.pending += len(jobs)
        self.metrics.queue_depth.set(self.pending)
        try:
            return np.stack(await asyncio.gather(*(j.future for j in jobs)))
        finally:
            self.pending -= len(jobs)
            self.metrics.queue_depth.set(self.pending)

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
                self._fail(batch, e)
                continue
            self._prepared.put_nowait(prepared)

    def _tokenize(self, batch: list[WindowJob]) -> PreparedBatch:
        text_jobs = [i for i, j in enumerate(batch) if j.text is not None]
        ids = self.runtime.text.tokenizer.encode([batch[i].text for i in text_jobs]) if text_jobs else []
        return PreparedBatch(batch, ids, text_jobs)

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
                self._fail(prepared.jobs, e)
                continue
            elapsed = time.perf_counter() - started
            self.metrics.inference.observe(elapsed)
            sample = len(prepared.jobs) / max(elapsed, 1e-6)
            self.rate = sample if self.rate is None else 0.8 * self.rate + 0.2 * sample
            self.metrics.batch_size.observe(len(prepared.jobs))
            for job, c in zip(prepared.jobs, codes, strict=True):
                if not job.future.done():
                    job.future.set_result(c)

    def _run(self, p: PreparedBatch) -> np.ndarray:
        rt = self.runtime
        emb = np.zeros((len(p.jobs), rt.manifest.encoder.dim), dtype=np.float32)
        if p.text_jobs:
            lengths = np.array([len(x) for x in p.token_ids])
            for chunk in length_runs(lengths, self.text_chunk, self.max_padding):
                emb[[p.text_jobs[i] for i in chunk]] = rt.text.run_ids([p.token_ids[i] for i in chunk])
        names = [s.name for s in rt.manifest.sources.sources]
        for name in rt.manifest.tabular:
            rows = [i for i, j in enumerate(p.jobs) if j.features is not None and names[j.source_index] == name]
            if rows:
                emb[rows] = rt.embed_tabular(name, np.stack([p.jobs[i].features for i in rows]))
        codes, _ = rt.quantize(emb, np.array([j.source_index for j in p.jobs], dtype=np.int64))
        return codes

    def _fail(self, jobs: list[WindowJob], error: Exception) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(error)

    async def stop(self) -> None:
        """Finishes every window already submitted, then stops (SIGTERM drain)."""
        self._closing = True
        if self._incoming is not None:
            self._incoming.put_nowait(None)
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._prep_pool.shutdown(wait=True)
        self._infer_pool.shutdown(wait=True)


class EmbeddingBatcher:
    """Gathers token histories from concurrent requests into one ONNX Runtime call of the history model
    (up to `max_batch_size` histories or `max_wait_ms`), off the event loop."""

    def __init__(self, runtime: TokenizerRuntime, max_batch_size: int = 64, max_wait_ms: float = 5.0):
        self.runtime, self.max_batch_size, self.max_wait_s = runtime, max_batch_size, max_wait_ms / 1000
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="u2qt-history")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def embed(self, sequences: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        futures = []
        for seq in sequences:
            fut = loop.create_future()
            self._queue.put_nowait((seq, fut))
            futures.append(fut)
        return np.stack(await asyncio.gather(*futures))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await self._queue.get()
            if item is None:
                return
            batch = await gather_batch(self._queue, item, self.max_batch_size, self.max_wait_s)
            arrays = [np.stack([seq[i] for seq, _ in batch]) for i in range(3)]
            try:
                out = await loop.run_in_executor(self._pool, self.runtime.embed_histories, *arrays)
            except Exception as e:  # noqa: BLE001 - a failed batch fails its requests, not the batcher
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, fut), row in zip(batch, out, strict=True):
                if not fut.done():
                    fut.set_result(row)

    async def stop(self) -> None:
        if self._queue is not None:
            self._queue.put_nowait(None)
            await asyncio.gather(self._task, return_exceptions=True)
        self._pool.shutdown(wait=True)
