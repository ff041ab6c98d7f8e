"""EventTokenizer: what POST /tokenize does, apart from HTTP.

events -> (user, source, window) groups -> windows this frontend has not seen lately: rendered from the request's
events (model.windows, as in training) and tokenized (MicroBatcher) -> Redis INGEST (idempotent, lateness), which
also commits those whose event set holds exactly the request's events (INGEST_COMMIT) -> every other window that
changed: rendered from all its stored events -> MicroBatcher -> Redis COMMIT -> the collision fallback re-filed.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime
from functools import lru_cache

import numpy as np
from redis.exceptions import RedisError

from u2qt.model.manifest import Manifest
from u2qt.model.sources import event_time_bounds, index_start, window_index
from u2qt.model.windows import render_text_window, tabular_window_features
from u2qt.service.batcher import MicroBatcher, WindowJob
from u2qt.service.metrics import OUTCOMES, ServiceMetrics
from u2qt.service.schemas import EventIn
from u2qt.service.store import ACCEPTED, CLOSED, DUPLICATE, EXPIRED, FULL, TokenHistoryStore

STATUS = {ACCEPTED: "accepted", DUPLICATE: "duplicate", CLOSED: "late", EXPIRED: "late", FULL: "refused"}


def validation_errors(events: list[EventIn], manifest: Manifest, latest_ts: float) -> list[dict]:
    """Errors FastAPI-style (loc, msg, type) for events the schema alone cannot judge: the source, the fields
    its kind takes, and event times the store can keep that are no later than `latest_ts` (the server's clock
    plus the allowed skew)."""
    errors = []
    sources = manifest.sources
    _, last = event_time_bounds(sources.period_s)
    latest = min(latest_ts, last)

    def error(i: int, field: str, msg: str, kind: str = "value_error") -> None:
        errors.append({"loc": ["body", "events", i, field], "msg": msg, "type": kind})

    for i, e in enumerate(events):
        if e.ts >= latest:
            error(
                i,
                "ts",
                f"ts {iso(int(e.ts))} is ahead of the server's clock by more than the allowed skew "
                f"(U2QT_MAX_FUTURE_SKEW); events are refused until they could have happened",
            )
        spec = sources.get(e.source)
        if spec is None:
            known = [s.name for s in sources.sources]
            error(i, "source", f"unknown source {e.source!r}; this model has {known}")
        elif spec.kind == "text":
            if not (e.text or "").strip():
                error(i, "text", f"text source {e.source!r} needs a non-empty text", "missing")
            if e.attributes is not None:
                error(i, "attributes", f"text source {e.source!r} takes no attributes (text and amount)")
        else:
            for field in ("text", "amount"):
                if getattr(e, field) is not None:
                    error(i, field, f"tabular source {e.source!r} takes no {field}, only attributes {spec.attributes}")
            if not e.attributes:
                error(i, "attributes", f"tabular source {e.source!r} needs attributes {spec.attributes}", "missing")
            else:
                unknown = sorted(set(e.attributes) - set(spec.attributes))
                if unknown:
                    error(i, "attributes", f"{unknown} are not attributes of {e.source!r} ({spec.attributes})")
    return errors


class TooManyWindows(Exception):
    """One request touches more windows than the tokenization queue holds: it can never be admitted."""

    def __init__(self, windows: int, limit: int):
        super().__init__(
            f"this request touches {windows} (user, source, window) groups; at most {limit} fit the tokenization "
            "queue (U2QT_MAX_QUEUE_WINDOWS): split it into smaller requests"
        )


class RedisTimer:
    """Times one Redis step into u2qt_redis_command_duration_seconds and counts its errors. A class defined once,
    over label children resolved once: a class built per call shows in the read path's profile
    (benchmarks/profile_service.py --load get)."""

    __slots__ = ("latency", "errors", "t")

    def __init__(self, metrics: ServiceMetrics, operation: str):
        self.latency, self.errors = metrics.redis_steps[operation]

    def __enter__(self):
        self.t = time.perf_counter()

    def __exit__(self, exc_type, exc, tb):
        self.latency.observe(time.perf_counter() - self.t)
        if exc_type is not None and issubclass(exc_type, RedisError | OSError):
            self.errors.inc()


class GuessPolicy:
    """Whether a request's windows that its frontend has not seen lately are tokenized before INGEST, on the guess
    that they are new. A right guess saves a Redis round trip (a fraction of a millisecond of a frontend's CPU); a
    wrong one (the window already held events: another frontend took them, this one forgot them, or they are a
    replay) costs a window's inference, the most expensive step (~12 ms of CPU per window on a 2-core machine,
    ~0.1 ms of a GPU). So guessing stays on only while nearly every guess is right (new windows: a backfill, a
    producer that sends whole windows); a stream of single events into open windows across many frontends, or more
    open windows than a frontend remembers, turns it off after two requests, and one request in `probe_every` of those
    with an unseen window then guesses to notice when guesses pay again."""

    def __init__(self, min_hit_rate: float = 0.95, probe_every: int = 100, weight: float = 0.05):
        self.min_hit_rate, self.probe_every, self.weight = min_hit_rate, probe_every, weight
        self.hit_rate = 1.0  # EWMA over requests of the share of their guesses that were right
        self._skipped = 0

    def guess(self) -> bool:
        if self.hit_rate >= self.min_hit_rate:
            return True
        self._skipped += 1
        return self._skipped % self.probe_every == 0

    def observe(self, right: int, wrong: int) -> None:
        if right + wrong:
            self.hit_rate += self.weight * (right / (right + wrong) - self.hit_rate)


class EventTokenizer:
    def __init__(self, manifest: Manifest, store: TokenHistoryStore, batcher: MicroBatcher, metrics: ServiceMetrics):
        self.manifest, self.store, self.batcher, self.metrics = manifest, store, batcher, metrics
        self.vocabulary = manifest.token_vocabulary()
        self.strings = [self.vocabulary.string(i) for i in range(self.vocabulary.size)]
        self.period = manifest.sources.period_s
        self.source_index = {s.name: i for i, s in enumerate(manifest.sources.sources)}
        self.source_names = list(self.source_index)
        self._seen = [set() for _ in range(self.vocabulary.levels)]
        self._recent: dict[tuple[str, str, int], None] = {}  # insertion-ordered: the oldest is forgotten first
        self.guessing = GuessPolicy()
        self._guesses = {outcome: metrics.window_guesses.labels(outcome) for outcome in ("stored", "wasted")}
        v = self.vocabulary
        self._codes_possible = [  # at most 65,536 kept per level: the gauge must not cost unbounded memory
            min(v.codebook_size * (1 if level < v.shared_levels else len(self.source_names)), 1 << 16)
            for level in range(v.levels)
        ]
        # label children resolved once per process, not per request
        levels = [str(level + 1) for level in range(self.vocabulary.levels)]
        self._windows_by_source = [metrics.windows.labels(name) for name in self.source_names]
        self._tokens_by_level = [metrics.tokens.labels(level) for level in levels]
        self._codes_used_by_level = [metrics.codebook_used.labels(level) for level in levels]
        self._events_by_outcome = {outcome: metrics.events.labels(outcome) for outcome in OUTCOMES}

    async def tokenize(self, events: list[EventIn]) -> dict:
        """-> the body of a TokenizeResponse, as plain data (serialized once, by orjson). Raises TooManyWindows or
        QueueFull before anything is stored: a request is admitted whole, with room reserved for every window it
        may have to tokenize, or not at all."""
        groups: dict[tuple[str, str, int], list[int]] = defaultdict(list)
        windows = window_index(np.array([e.ts for e in events], dtype=np.float64), self.period).tolist()
        for i, (e, w) in enumerate(zip(events, windows, strict=True)):  # one vectorized call per request
            groups[(e.user_id, e.source, w)].append(i)
        if len(groups) > self.batcher.admission.max_items:
            raise TooManyWindows(len(groups), self.batcher.admission.max_items)
        with self.batcher.reserve(len(groups)) as reservation:
            return await self._tokenize(events, groups, reservation)

    async def _tokenize(self, events: list[EventIn], groups: dict, reservation) -> dict:
        keys = list(groups)
        payload = [[(events[i].event_id, self._stored(events[i])) for i in groups[k]] for k in keys]
        # Windows this frontend has not seen lately are most likely new: tokenized from the request's own events
        # first, their codes are written by the same script that ingests the events (one Redis round trip less)
        # wherever the window indeed held none of them; a wrong guess costs its inference and nothing else.
        guessed = [j for j, k in enumerate(keys) if k not in self._recent]
        if guessed and not self.guessing.guess():  # asked only where there is a window to guess: probes count these
            guessed = []
        guesses = {}
        if guessed:
            jobs = [self._job(keys[j][1], [event for _, event in payload[j]]) for j in guessed]
            guesses = dict(zip(guessed, await self.batcher.submit(jobs, reservation), strict=True))
            # their room is held on (no await since submit gave it back): a wrong guess is tokenized again
            reservation.extend(len(guessed))
        with RedisTimer(self.metrics, "ingest"):
            results, moves = await self.store.ingest_guessed(
                [(*k, p) for k, p in zip(keys, payload, strict=True)], guesses, self.source_names
            )
        self._remember(keys)

        statuses: list[dict | None] = [None] * len(events)
        counts = dict.fromkeys(OUTCOMES, 0)
        for k, res in zip(keys, results, strict=True):
            for i, st in zip(groups[k], res.statuses, strict=True):
                status = STATUS[st]
                counts[status] += 1
                statuses[i] = {"event_id": events[i].event_id, "status": status, "reason": self._reason(st, k, res)}

        todo = [(j, res) for j, res in enumerate(results) if res.events is not None]
        jobs = [self._job(keys[j][1], res.events) for j, res in todo]
        codes = dict(zip((j for j, _ in todo), await self.batcher.submit(jobs, reservation), strict=True))
        if todo:
            with RedisTimer(self.metrics, "commit"):
                later = await self.store.commit(
                    [(*keys[j], res.event_count, codes[j]) for j, res in todo], self.source_names
                )
            for user, (digest, old, engaged, ranked) in later.items():  # re-filed from its digest before both
                moves[user] = (digest, moves[user][1] if user in moves else old, engaged, ranked)
        right = [j for j, res in enumerate(results) if res.committed]
        codes |= {j: guesses[j] for j in right}
        wasted = len(guesses) - len(right)
        self.guessing.observe(len(right), wasted)
        if right:
            self._guesses["stored"].inc(len(right))
        if wasted:
            self._guesses["wasted"].inc(wasted)
        if moves:
            with RedisTimer(self.metrics, "fallback"):
                await self.store.refresh_fallback(moves)

        written = sorted(codes)
        todo = [(keys[j], results[j]) for j in written]
        codes = np.stack([codes[j] for j in written]) if written else np.zeros((0, self.vocabulary.levels), np.int64)
        src = np.array([self.source_index[k[1]] for k, _ in todo], dtype=np.int64)
        ids = self.vocabulary.ids(src, codes).tolist() if todo else []
        self._observe(src, codes)
        for outcome, n in counts.items():
            if n:  # with PROMETHEUS_MULTIPROC_DIR every update is a locked write to a shared file: none for nothing
                self._events_by_outcome[outcome].inc(n)
        return {
            "model_version": self.manifest.model_version,
            "accepted": counts["accepted"],
            "duplicates": counts["duplicate"],
            "late": counts["late"],
            "refused": counts["refused"],
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

    def _remember(self, keys: list[tuple[str, str, int]]) -> None:
        """The windows this frontend saw lately (at most 65,536, oldest forgotten first): their next events are
        tokenized with the window's stored ones, not guessed to be new."""
        recent = self._recent
        for k in keys:
            recent.pop(k, None)
            recent[k] = None
        while len(recent) > 1 << 16:
            del recent[next(iter(recent))]

    def _reason(self, status: int, group: tuple[str, str, int], res) -> str | None:
        start = iso(index_start(group[2], self.period))
        if status == CLOSED:
            behind = res.newest - group[2]
            return (
                f"window {start} is closed: it is {behind} windows older than the newest stored for this user and "
                f"source ({iso(index_start(res.newest, self.period))}), and only the newest "
                f"{self.store.late_windows + 1} accept events (U2QT_LATE_WINDOWS)"
            )
        if status == EXPIRED:
            return (
                f"window {start} is closed: its events were kept {self.store.late_windows + 2} window periods after "
                "its last change, and without them its stored tokens can no longer be rebuilt"
            )
        if status == FULL:
            return (
                f"window {start} already holds {res.event_count} events of this user and source, the most one "
                "window takes (U2QT_MAX_EVENTS_PER_WINDOW)"
            )
        return None

    def _observe(self, src: np.ndarray, codes: np.ndarray) -> None:
        """Windows and tokens counted once per request (not per window: a label lookup costs more than the count)."""
        if not len(src):
            return
        for i, n in enumerate(np.bincount(src, minlength=len(self.source_names)).tolist()):
            if n:
                self._windows_by_source[i].inc(n)
        for level in range(codes.shape[1]):
            self._tokens_by_level[level].inc(len(codes))
            seen = self._seen[level]
            if len(seen) < self._codes_possible[level]:  # once every code has been seen, nothing is left to count
                shared, before = level < self.vocabulary.shared_levels, len(seen)
                seen.update(
                    ("" if shared else self.source_names[s], int(c)) for s, c in zip(src, codes[:, level], strict=True)
                )
                if len(seen) != before:
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
