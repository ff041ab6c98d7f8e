"""EventTokenizer: what POST /tokenize does, apart from HTTP.

events -> (user, source, window) groups -> Redis INGEST (idempotent, lateness) -> render the windows that
changed from all their stored events (model.windows, as in training) -> MicroBatcher -> Redis COMMIT.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime

import numpy as np
from redis.exceptions import RedisError

from model.manifest import Manifest
from model.sources import index_start, window_index
from model.windows import render_text_window, tabular_window_features
from service.batcher import MicroBatcher, QueueFull, WindowJob
from service.metrics import ServiceMetrics
from service.schemas import EventIn, EventStatus, TokenizeResponse, WindowTokens
from service.store import ACCEPTED, DUPLICATE, TokenHistoryStore

STATUS = {ACCEPTED: "accepted", DUPLICATE: "duplicate"}


def validation_errors(events: list[EventIn], manifest: Manifest) -> list[dict]:
    """Errors FastAPI-style (loc, msg, type) for events the schema alone cannot judge."""
    errors = []
    for i, e in enumerate(events):
        loc = ["body", "events", i]
        spec = manifest.sources.get(e.source)
        if spec is None:
            known = [s.name for s in manifest.sources.sources]
            errors.append(
                {
                    "loc": [*loc, "source"],
                    "msg": f"unknown source {e.source!r}; this model has {known}",
                    "type": "value_error",
                }
            )
        elif spec.kind == "text":
            if not (e.text or "").strip():
                errors.append(
                    {
                        "loc": [*loc, "text"],
                        "msg": f"text source {e.source!r} needs a non-empty text",
                        "type": "missing",
                    }
                )
            if e.attributes:
                errors.append(
                    {
                        "loc": [*loc, "attributes"],
                        "msg": f"text source {e.source!r} takes no attributes",
                        "type": "value_error",
                    }
                )
        else:
            if not e.attributes:
                errors.append(
                    {
                        "loc": [*loc, "attributes"],
                        "msg": f"tabular source {e.source!r} needs attributes {spec.attributes}",
                        "type": "missing",
                    }
                )
            else:
                unknown = sorted(set(e.attributes) - set(spec.attributes))
                if unknown:
                    errors.append(
                        {
                            "loc": [*loc, "attributes"],
                            "msg": f"{unknown} are not attributes of {e.source!r} ({spec.attributes})",
                            "type": "value_error",
                        }
                    )
    return errors


def timed_redis(metrics: ServiceMetrics, operation: str):
    class _Timer:
        def __enter__(self):
            self.t = time.perf_counter()

        def __exit__(self, exc_type, exc, tb):
            metrics.redis_latency.labels(operation).observe(time.perf_counter() - self.t)
            if exc_type is not None and issubclass(exc_type, RedisError | OSError):
                metrics.redis_errors.labels(operation).inc()

    return _Timer()


class EventTokenizer:
    def __init__(self, manifest: Manifest, store: TokenHistoryStore, batcher: MicroBatcher, metrics: ServiceMetrics):
        self.manifest, self.store, self.batcher, self.metrics = manifest, store, batcher, metrics
        self.vocabulary = manifest.token_vocabulary()
        self.strings = [self.vocabulary.string(i) for i in range(self.vocabulary.size)]
        self.period = manifest.sources.period_s
        self.source_index = {s.name: i for i, s in enumerate(manifest.sources.sources)}
        self.source_names = list(self.source_index)
        self._seen = [set() for _ in range(self.vocabulary.levels)]

    async def tokenize(self, events: list[EventIn]) -> TokenizeResponse:
        groups: dict[tuple[str, str, int], list[int]] = defaultdict(list)
        windows = window_index(np.array([e.ts for e in events], dtype=np.float64), self.period).tolist()
        for i, (e, w) in enumerate(zip(events, windows, strict=True)):  # one vectorized call per request
            groups[(e.user_id, e.source, w)].append(i)
        if not self.batcher.has_room(len(groups)):
            raise QueueFull
        keys = list(groups)
        payload = [[(events[i].event_id, self._stored(events[i])) for i in groups[k]] for k in keys]
        with timed_redis(self.metrics, "ingest"):
            results = await self.store.ingest([(*k, p) for k, p in zip(keys, payload, strict=True)])

        statuses: list[EventStatus | None] = [None] * len(events)
        for k, res in zip(keys, results, strict=True):
            for i, st in zip(groups[k], res.statuses, strict=True):
                reason = None
                if st not in STATUS:
                    reason = (
                        f"window {self._iso(k[2])} is closed: {self.store.late_windows} window(s) behind the newest"
                    )
                statuses[i] = EventStatus(event_id=events[i].event_id, status=STATUS.get(st, "late"), reason=reason)

        todo = [(k, res) for k, res in zip(keys, results, strict=True) if res.events is not None]
        jobs = [self._job(k[1], res.events) for k, res in todo]
        codes = await self.batcher.submit(jobs)
        with timed_redis(self.metrics, "commit"):
            moves = await self.store.commit(
                [(*k, res.event_count, c) for (k, res), c in zip(todo, codes, strict=True)], self.source_names
            )
        if moves:
            with timed_redis(self.metrics, "fallback"):
                await self.store.refresh_fallback(moves)

        windows = []
        for ((user, source, w), res), c in zip(todo, codes, strict=True):
            ids = self.vocabulary.ids(np.array([self.source_index[source]]), c[None])[0]
            self.metrics.windows.labels(source).inc()
            for level, code in enumerate(c):
                self.metrics.tokens.labels(str(level + 1)).inc()
                seen = self._seen[level]
                if len(seen) < 1 << 16:
                    seen.add((source if level >= self.vocabulary.shared_levels else "", int(code)))
                    self.metrics.codebook_used.labels(str(level + 1)).set(len(seen))
            windows.append(
                WindowTokens(
                    user_id=user,
                    source=source,
                    window_start=self._iso(w),
                    event_count=res.event_count,
                    tokens=ids.tolist(),
                    token_strings=[self.strings[t] for t in ids],
                )
            )
        counts = {s: sum(1 for x in statuses if x.status == s) for s in ("accepted", "duplicate", "late")}
        for s, n in counts.items():
            self.metrics.events.labels(s).inc(n)
        return TokenizeResponse(
            model_version=self.manifest.model_version,
            accepted=counts["accepted"],
            duplicates=counts["duplicate"],
            late=counts["late"],
            events=statuses,
            windows=windows,
        )

    def _iso(self, index: int) -> datetime:
        return datetime.fromtimestamp(index_start(index, self.period), UTC)

    @staticmethod
    def _stored(e: EventIn) -> dict:
        d = {"ts": e.ts}
        if e.text is not None:
            d["text"] = e.text
        if e.amount is not None:
            d["amount"] = e.amount
        if e.attributes:
            d["attributes"] = e.attributes
        return d

    def _job(self, source: str, events: list[dict]) -> WindowJob:
        spec = self.manifest.sources.get(source)
        idx = self.source_index[source]
        if spec.kind == "text":
            text = render_text_window(
                [e.get("text", "") for e in events],
                [e["ts"] for e in events],
                [e.get("amount", float("nan")) for e in events],
                spec.template,
            )
            return WindowJob(idx, text=text)
        rows = np.array(
            [[e.get("attributes", {}).get(a, np.nan) for a in spec.attributes] for e in events], dtype=np.float64
        )
        return WindowJob(idx, features=tabular_window_features(rows))
