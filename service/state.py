"""ServiceState: everything a running service holds (model, runtime, Redis, batchers), built at start-up and
stopped at shutdown, apart from HTTP."""

from __future__ import annotations

import gc
from dataclasses import dataclass

import numpy as np
from fastapi import Request
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from u2qt.model.decoded import load_codebooks
from u2qt.model.manifest import Manifest
from u2qt.model.runtime import TokenizerRuntime
from u2qt.service.batcher import EmbeddingBatcher, MicroBatcher, WindowJob
from u2qt.service.embedded_redis import EmbeddedRedis
from u2qt.service.ingest import EventTokenizer
from u2qt.service.metrics import ServiceMetrics
from u2qt.service.redis_client import connect
from u2qt.service.settings import ServiceSettings
from u2qt.service.store import TokenHistoryStore


@dataclass
class ServiceState:
    settings: ServiceSettings
    manifest: Manifest
    runtime: TokenizerRuntime
    metrics: ServiceMetrics
    redis: Redis | RedisCluster
    store: TokenHistoryStore
    batcher: MicroBatcher
    tokenizer: EventTokenizer
    embedded: EmbeddedRedis | None
    embedder: EmbeddingBatcher | None
    codebooks: list[np.ndarray] | None = None  # GET /users/{id}/embedding?kind=tokens
    warmed: bool = False

    @property
    def model_description(self) -> dict:
        m, v = self.manifest, self.tokenizer.vocabulary
        return {
            "model_version": m.model_version,
            "window": m.sources.window,
            "sources": [{"name": x.name, "kind": x.kind, "description": x.description} for x in m.sources.sources],
            "shared_levels": v.shared_levels,
            "specific_levels": v.specific_levels,
            "codebook_size": v.codebook_size,
            "vocabulary": m.vocabulary.model_dump(),
            "tokens": self.tokenizer.strings,
            "history_model": m.history.model_dump() if m.history else None,
        }


def warm_up(batcher: MicroBatcher, manifest: Manifest) -> list[WindowJob]:
    jobs = []
    for i, s in enumerate(manifest.sources.sources):
        if s.kind == "text":
            jobs.append(WindowJob(i, text="warm up"))
        else:
            jobs.append(WindowJob(i, features=np.zeros(len(manifest.tabular[s.name].feature_names), np.float32)))
    return jobs


async def start(settings: ServiceSettings) -> ServiceState:
    """Loads the model, connects to Redis (or starts the embedded one), starts the batchers and warms them up."""
    manifest = Manifest.load(settings.artifacts)
    runtime = TokenizerRuntime(
        settings.artifacts,
        manifest,
        settings.providers,
        settings.ort_threads or None,
        run_width=settings.encoder_batch,
        max_padding=settings.encoder_max_padding,
    )
    metrics = ServiceMetrics()
    metrics.initialize([x.name for x in manifest.sources.sources], runtime.vocabulary.levels)
    metrics.queue_capacity.set(settings.max_queue_windows)
    metrics.model_info.labels(manifest.model_version, ",".join(runtime.providers)).set(1)
    embedded = None
    url = settings.redis_url
    if not url:
        embedded = EmbeddedRedis(settings.embedded_redis_dir)
        url = embedded.start()
    client = connect(url, settings.redis_cluster, settings.redis_max_connections, settings.redis_pool_timeout_s)
    store = TokenHistoryStore(
        client,
        settings.key_prefix,
        manifest.model_version,
        runtime.vocabulary.levels,
        runtime.vocabulary.codebook_size,
        manifest.sources.period_s,
        settings.history_days,
        settings.ttl_days,
        settings.late_windows,
        settings.max_events_per_window,
    )
    # both batchers gather and admit alike: batch size, wait, queue size, queue delay
    s = settings
    batching = s.max_batch_size, s.max_wait_ms, s.max_queue_windows, s.max_queue_delay_ms
    batcher = MicroBatcher(runtime, metrics, *batching)
    await batcher.start()
    embedder = None
    if runtime.history is not None:
        embedder = EmbeddingBatcher(runtime, metrics, *batching)
        await embedder.start()
    state = ServiceState(
        settings,
        manifest,
        runtime,
        metrics,
        client,
        store,
        batcher,
        EventTokenizer(manifest, store, batcher, metrics),
        embedded,
        embedder,
    )
    if manifest.decoded is not None:
        state.codebooks = load_codebooks(settings.artifacts, runtime.vocabulary.levels)
    for job in warm_up(batcher, manifest):  # one at a time: the queue may hold a single window
        await batcher.submit([job])
    state.warmed = True
    # Long-lived objects (model, sessions, modules) move out of the collector's view: full collections
    # then scan only request garbage, which trims the read path's latency tail.
    gc.collect()
    gc.freeze()
    return state


async def stop(state: ServiceState) -> None:
    """Drains every window already submitted (finished and committed), then closes everything."""
    await state.batcher.stop()
    if state.embedder:
        await state.embedder.stop()
    await state.redis.aclose()
    if state.embedded:
        state.embedded.stop()


async def current(request: Request) -> ServiceState:
    """The running service's state, as a FastAPI dependency (async: FastAPI runs a sync one in a thread pool)."""
    return request.app.state.u2qt
