"""Prometheus metrics (u2qt_ prefix, base units, _total counters, never a user id as a label).

With U2QT_FRONTENDS=N the service is several processes (an engine and N frontends): `u2qt serve` then sets
PROMETHEUS_MULTIPROC_DIR before any of them imports prometheus_client, each process writes its samples there, and
GET /metrics, on any frontend, reads them all (prometheus_client's multiprocess mode). Gauges say how processes
add up: queue depths and capacities sum over live processes; codes used is the largest any process saw.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# 5 ms and 50 ms are bucket bounds: the GET p99 objective and a POST objective sit exactly on them.
OUTCOMES = ("accepted", "duplicate", "late", "refused")
REJECT_REASONS = ("queue_full", "embedding_queue_full", "redis_unavailable", "engine_unavailable")
REDIS_OPERATIONS = ("ingest", "commit", "fallback", "read")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServiceMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self._request_series: dict[tuple[str, str, int], tuple] = {}
        self.requests = Counter("u2qt_http_requests_total", "HTTP requests", ["route", "method", "status"], registry=r)
        self.latency = Histogram(
            "u2qt_http_request_duration_seconds",
            "HTTP request latency (by status: a fast 429 must not hide a slow 200)",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "u2qt_batch_windows",
            "Windows per inference batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.queue_wait = Histogram(
            "u2qt_queue_wait_seconds", "Time a window waits before its batch runs", buckets=LATENCY_BUCKETS, registry=r
        )
        self.inference = Histogram(
            "u2qt_inference_duration_seconds", "ONNX Runtime time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "u2qt_queue_windows", "Windows waiting for or in inference", registry=r, multiprocess_mode="livesum"
        )
        self.queue_capacity = Gauge(
            "u2qt_queue_capacity_windows", "Most windows the queue takes", registry=r, multiprocess_mode="livesum"
        )
        self.events = Counter("u2qt_events_total", "Events received, by outcome", ["outcome"], registry=r)
        self.windows = Counter("u2qt_windows_tokenized_total", "Windows tokenized", ["source"], registry=r)
        self.tokens = Counter("u2qt_tokens_emitted_total", "Tokens emitted", ["level"], registry=r)
        self.window_guesses = Counter(
            "u2qt_window_guesses_total",
            "Windows tokenized from a request's events before knowing they were new: stored, or wasted (the window "
            "held events; it was tokenized again)",
            ["outcome"],
            registry=r,
        )
        self.rejected = Counter("u2qt_requests_rejected_total", "Requests refused before work", ["reason"], registry=r)
        self.redis_latency = Histogram(
            "u2qt_redis_command_duration_seconds",
            "Redis round trip",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_errors = Counter("u2qt_redis_errors_total", "Failed Redis round trips", ["operation"], registry=r)
        # label children resolved once: the read path times a Redis step per request
        self.redis_steps = {
            op: (self.redis_latency.labels(op), self.redis_errors.labels(op)) for op in REDIS_OPERATIONS
        }
        self.codebook_used = Gauge(
            "u2qt_codebook_codes_used",
            "Distinct codes emitted since start",
            ["level"],
            registry=r,
            multiprocess_mode="livemax",
        )
        # the history model's batcher (GET /users/{id}/embedding), measured as the token batcher is
        self.embedding_batch_size = Histogram(
            "u2qt_embedding_batch_users",
            "Histories per history-model batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.embedding_queue_wait = Histogram(
            "u2qt_embedding_queue_wait_seconds",
            "Time a history waits before its batch runs",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.embedding_inference = Histogram(
            "u2qt_embedding_inference_duration_seconds",
            "ONNX Runtime time per history-model batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.embedding_queue_depth = Gauge(
            "u2qt_embedding_queue_users",
            "Histories waiting for or in the history model",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_info = Gauge(
            "u2qt_model_info", "Loaded model", ["model_version", "providers"], registry=r, multiprocess_mode="livemax"
        )

    def request_series(self, route: str, method: str, status: int):
        """-> (count, latency) label children of one (route, method, status), resolved once: every request
        records both, and resolving label children takes a lock and builds a key each time."""
        key = (route, method, status)
        series = self._request_series.get(key)
        if series is None:
            labels = (route, method, str(status))
            series = self._request_series[key] = (self.requests.labels(*labels), self.latency.labels(*labels))
        return series

    def initialize(self, sources: list[str], levels: int) -> None:
        """Creates every known label set at zero, so dashboards and alerts see a series before the first event
        (a rate over a missing series is no data, not 0)."""
        for outcome in OUTCOMES:
            self.events.labels(outcome)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        for outcome in ("stored", "wasted"):
            self.window_guesses.labels(outcome)
        for source in sources:
            self.windows.labels(source)
        for level in range(1, levels + 1):
            self.tokens.labels(str(level))
            self.codebook_used.labels(str(level))


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition(metrics: ServiceMetrics) -> tuple[bytes, str]:
    """The /metrics body: this process's registry, or every process's samples in multiprocess mode."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(metrics.registry), CONTENT_TYPE_LATEST
