"""EventTokenizer: what POST /tokenize does, apart from HTTP.

events -> (user, source, window) groups -> Redis INGEST (idempotent, lateness) -> render the windows that
changed from all their stored events (model.windows, as in training) -> MicroBatcher -> Redis COMMIT.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime
from functools import lru_cache

import numpy as np
from redis.exceptions import RedisError

from model.manifest import Manifest
from model.sources import index_start, window_index
from model.windows import render_text_window, tabular_window_features
from service.batcher import MicroBatcher, QueueFull, WindowJob
from service.metrics import OUTCOMES, ServiceMetrics
from service.schemas import EventIn
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


class RedisTimer:
    """Times one Redis step into u2qt_redis_command_duration_seconds and counts its errors. A class defined once,
    over label children resolved once: one built per call showed in the read path's profile
    (docs/cpu/profile_get_at_48c9a79.txt.gz)."""

    __slots__ = ("latency", "errors", "t")

    def __init__(self, metrics: ServiceMetrics, operation: str):
        self.latency, self.errors = metrics.redis_steps[operation]

    def __enter__(self):
        self.t = time.perf_counter()

    def __exit__(self, exc_type, exc, tb):
        self.latency.observe(time.perf_counter() - self.t)
        if exc_type is not None and issubclass(exc_type, RedisError | OSError):
            self.errors.inc()


class EventTokenizer:
    def __init__(self, manifest: Manifest, store: TokenHistoryStore, batcher: MicroBatcher, metrics: ServiceMetrics):
        self.manifest, self.store, self.batcher, self.metrics = manifest, store, batcher, metrics
        self.vocabulary = manifest.token_vocabulary()
        self.strings = [self.vocabulary.string(i) for i in range(self.vocabulary.size)]
        self.period = manifest.sources.period_s
        self.source_index = {s.name: i for i, s in enumerate(manifest.sources.sources)}
        self.source_names = list(self.source_index)
        self._seen = [set() for _ in range(self.vocabulary.levels)]
        # label children resolved once per process, not per request
        levels = [str(level + 1) for level in range(self.vocabulary.levels)]
        self._windows_by_source = [metrics.windows.labels(name) for name in self.source_names]
        self._tokens_by_level = [metrics.tokens.labels(level) for level in levels]
        self._codes_used_by_level = [metrics.codebook_used.labels(level) for level in levels]
        self._events_by_outcome = {outcome: metrics.events.labels(outcome) for outcome in OUTCOMES}

    async def tokenize(self, events: list[EventIn]) -> dict:
        """-> the body of a TokenizeResponse, as plain data (serialized once, by orjson)."""
        groups: dict[tuple[str, str, int], list[int]] = defaultdict(list)
        windows = window_index(np.array([e.ts for e in events], dtype=np.float64), self.period).tolist()
        for i, (e, w) in enumerate(zip(events, windows, strict=True)):  # one vectorized call per request
            groups[(e.user_id, e.source, w)].append(i)
        if not self.batcher.has_room(len(groups)):
            raise QueueFull
        keys = list(groups)
        payload = [[(events[i].event_id, self._stored(events[i])) for i in groups[k]] for k in keys]
        with RedisTimer(self.metrics, "ingest"):
            results = await self.store.ingest([(*k, p) for k, p in zip(keys, payload, strict=True)])

        statuses: list[dict | None] = [None] * len(events)
        counts = {"accepted": 0, "duplicate": 0, "late": 0}
        for k, res in zip(keys, results, strict=True):
            for i, st in zip(groups[k], res.statuses, strict=True):
                status, reason = STATUS.get(st, "late"), None
                if status == "late":
                    reason = (
                        f"window {iso(index_start(k[2], self.period))} is closed: {self.store.late_windows} "
                        "window(s) behind the newest"
                    )
                counts[status] += 1
                statuses[i] = {"event_id": events[i].event_id, "status": status, "reason": reason}

        todo = [(k, res) for k, res in zip(keys, results, strict=True) if res.events is not None]
        jobs = [self._job(k[1], res.events) for k, res in todo]
        codes = await self.batcher.submit(jobs)
        with RedisTimer(self.metrics, "commit"):
            moves = await self.store.commit(
                [(*k, res.event_count, c) for (k, res), c in zip(todo, codes, strict=True)], self.source_names
            )
        if moves:
            with RedisTimer(self.metrics, "fallback"):
                await self.store.refresh_fallback(moves)

        src = np.array([self.source_index[k[1]] for k, _ in todo], dtype=np.int64)
        ids = self.vocabulary.ids(src, codes).tolist() if todo else []
        self._observe(src, codes)
        for outcome, n in counts.items():
            self._events_by_outcome[outcome].inc(n)
        return {
            "model_version": self.manifest.model_version,
            "accepted": counts["accepted"],
            "duplicates": counts["duplicate"],
            "late": counts["late"],
            "events": statuses,
            "windows": [
                {
                    "user_id": user,
                    "source": source,
                    "window_start": iso(index_start(w, self.period)),
                    "event_count": res.event_count,
                    "tokens": t,
                    "token_strings": [self.strings[i] for i in t],
                }
                for ((user, source, w), res), t in zip(todo, ids, strict=True)
            ],
        }

    def _observe(self, src: np.ndarray, codes: np.ndarray) -> None:
        """Windows and tokens counted once per request (not per window: a label lookup costs more than the count)."""
        if not len(src):
            return
        for i, n in zip(*np.unique(src, return_counts=True), strict=True):
            self._windows_by_source[i].inc(int(n))
        for level in range(codes.shape[1]):
            self._tokens_by_level[level].inc(len(codes))
            seen = self._seen[level]
            if len(seen) < 1 << 16:
                shared = level < self.vocabulary.shared_levels
                seen.update(
                    ("" if shared else self.source_names[s], int(c)) for s, c in zip(src, codes[:, level], strict=True)
                )
                self._codes_used_by_level[level].set(len(seen))

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


@lru_cache(maxsize=65536)
def iso(ts: int) -> str:
    """A window start as the API writes times (UTC, ISO-8601, seconds)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
