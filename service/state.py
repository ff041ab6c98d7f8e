"""ServiceState: everything a running service holds (model, runtime, Redis, batchers), built at start-up and
stopped at shutdown, apart from HTTP."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import Request
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from u2qt.model.decoded import (
    SoftCounts,
    TokenTexts,
    load_codebooks,
    load_soft_counts,
    load_token_texts,
    pooled_width,
)
from u2qt.model.manifest import Manifest
from u2qt.model.runtime import TextTokenizer, TokenizerRuntime
from u2qt.service.batcher import EmbeddingBatcher, MicroBatcher, WindowQueue, warm_up
from u2qt.service.embedded_redis import EmbeddedRedis
from u2qt.service.engine_client import EngineConnection, EngineUnavailable, RemoteEmbeddingBatcher, RemoteMicroBatcher
from u2qt.service.ingest import EventTokenizer
from u2qt.service.metrics import ServiceMetrics, multiprocess_dir
from u2qt.service.redis_client import connect
from u2qt.service.settings import ServiceSettings
from u2qt.service.store import TokenHistoryStore


@dataclass
class ServiceState:
    settings: ServiceSettings
    manifest: Manifest
    local_providers: list[str]  # ONNX Runtime's in this process (none with frontends)
    metrics: ServiceMetrics
    redis: Redis | RedisCluster
    store: TokenHistoryStore
    batcher: WindowQueue  # MicroBatcher, or with frontends RemoteMicroBatcher
    tokenizer: EventTokenizer
    embedded: EmbeddedRedis | None
    embedder: EmbeddingBatcher | RemoteEmbeddingBatcher | None
    engine: EngineConnection | None = None  # with frontends: the engine process's connection
    codebooks: list[np.ndarray] | None = None  # GET /users/{id}/embedding?kind=tokens
    soft_counts: SoftCounts | None = None  # and its soft counts, where the manifest's decoded reader has them
    texts: TokenTexts | None = None  # and its event-text decoder, where the manifest lists texts
    # why kind=tokens is not served when codebooks is None (the 501's detail)
    codebooks_missing: str = "these artifacts have no codebooks.safetensors: export them again with u2qt export"
    warmed: bool = False

    @property
    def providers(self) -> list[str]:
        """ONNX Runtime's, in this process or in the engine (as it last said; none before it has answered)."""
        if self.engine is not None:
            return self.engine.info.providers if self.engine.info else []
        return self.local_providers

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
            # kind=tokens: the width a ranker sizes its input by, whether it holds soft counts, the texts it ends with
            "tokens_embedding": {"dim": m.decoded.dim, "soft_counts": m.decoded.soft_counts, "texts": m.decoded.texts}
            if self.codebooks is not None
            else None,
        }


async def start(settings: ServiceSettings) -> ServiceState:
    """Loads the model (or connects to the engine process that has it), connects to Redis (or starts the embedded
    one), starts the batchers and warms them up."""
    manifest = Manifest.load(settings.artifacts)
    vocabulary = manifest.token_vocabulary()
    metrics = ServiceMetrics()
    metrics.initialize([x.name for x in manifest.sources.sources], vocabulary.levels)
    metrics.queue_capacity.set(settings.max_queue_windows)
    s = settings
    engine = None
    if s.engine_socket:
        engine = EngineConnection(str(s.engine_socket), s.engine_request_timeout_s)
        version = manifest.model_version
        engine.watch_info(lambda info: metrics.model_info.labels(version, ",".join(info.providers)).set(1))
        if not await engine.start(s.engine_timeout_s):
            print(
                f"u2qt frontend {os.getpid()}: no inference engine answered on {s.engine_socket} within "
                f"{s.engine_timeout_s:g} s; serving reads, writes get 503 until it does",
                flush=True,
            )
        providers = []  # the engine's: state.providers
        tokenizer = TextTokenizer(Path(s.artifacts) / manifest.encoder.tokenizer_file, manifest.encoder)
        queue = s.max_queue_windows, s.max_queue_delay_ms
        batcher = RemoteMicroBatcher(engine, tokenizer, vocabulary.levels, metrics, s.max_batch_size, *queue)
        await batcher.start()
        embedder = RemoteEmbeddingBatcher(engine, metrics, *queue) if manifest.history else None
    else:
        runtime = TokenizerRuntime(
            s.artifacts, manifest, s.providers, s.ort_threads or None, s.encoder_batch, s.encoder_max_padding
        )
        providers = runtime.providers
        metrics.model_info.labels(manifest.model_version, ",".join(providers)).set(1)
        # both batchers gather and admit alike: batch size, wait, queue size, queue delay
        batching = s.max_batch_size, s.max_wait_ms, s.max_queue_windows, s.max_queue_delay_ms
        batcher = MicroBatcher(runtime, metrics, *batching)
        await batcher.start()
        embedder = None
        if runtime.history is not None:
            embedder = EmbeddingBatcher(runtime, metrics, *batching)
            await embedder.start()
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
        vocabulary.levels,
        vocabulary.codebook_size,
        manifest.sources.period_s,
        settings.history_days,
        settings.ttl_days,
        settings.late_windows,
        settings.max_events_per_window,
    )
    state = ServiceState(
        settings,
        manifest,
        providers,
        metrics,
        client,
        store,
        batcher,
        EventTokenizer(manifest, store, batcher, metrics),
        embedded,
        embedder,
        engine,
    )
    if manifest.decoded is not None:
        features, texts = manifest.decoded.soft_counts, len(manifest.decoded.texts)
        width = pooled_width(len(manifest.sources.sources), manifest.quantizer.code_dim, features, texts)
        if manifest.decoded.dim == width:
            state.codebooks = load_codebooks(settings.artifacts, vocabulary.levels)
            state.soft_counts = load_soft_counts(settings.artifacts) if features else None
            state.texts = load_token_texts(settings.artifacts) if texts else None
        else:  # a ranker sized its input by the manifest: never hand it another width
            state.codebooks_missing = (
                f"these artifacts were exported for a {manifest.decoded.dim}-float kind=tokens vector, this service "
                f"pools {width} (sources x (code_dim + activity + {features} soft counts) + {texts} texts): export "
                "them again with u2qt export"
            )
            print(f"u2qt: GET /users/{{id}}/embedding?kind=tokens answers 501: {state.codebooks_missing}", flush=True)
    try:
        # one at a time: the queue may hold a single window. An engine that has not answered is down or hung: this
        # frontend starts without it (reads need no engine), and its first windows warm it
        for job in warm_up(manifest) if engine is None or engine.info else []:
            await batcher.submit([job])
    except EngineUnavailable:
        pass
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
    if state.engine:
        await state.engine.stop()
    await state.redis.aclose()
    if state.embedded:
        state.embedded.stop()
    if multiprocess_dir():  # this frontend's live gauges leave the sums
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())


async def current(request: Request) -> ServiceState:
    """The running service's state, as a FastAPI dependency (async: FastAPI runs a sync one in a thread pool)."""
    return request.app.state.u2qt
