"""Random event streams against the real service and a real redis-server (hypothesis): whatever a client sends,
no 5xx while Redis is up, every event answered `accepted` is stored, a window's tokens are those of the events it
accepted (however they arrived), a replay never changes a history, and a read after any sequence of writes
parses."""

import itertools
import json
import math

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ServiceThreads
from u2qt.model.sources import index_start, window_index

WEEK = 7 * 86400
START = 1489060406  # 2017-03-09
SOURCES = {"purchases": "text", "promotions": "text", "visits": "tabular"}
examples = itertools.count()


@pytest.fixture(scope="module")
def live(trained_dir, redis_server, tmp_path_factory):
    services = ServiceThreads(trained_dir[0], redis_server.url, tmp_path_factory.mktemp("properties"))
    yield services.start(max_events_per_window=6)[0]
    services.stop()


hostile = st.sampled_from([True, 0, -1, 86400, math.nan, math.inf, 1e400, 2**70, 4_070_908_800, "2017-13-45", "", None])
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@st.composite
def event(draw):
    source = draw(st.sampled_from(list(SOURCES)))
    e = {
        "event_id": draw(st.sampled_from("abcdefgh")),  # few ids: replays and duplicates within a stream
        "user_id": draw(st.sampled_from(["u1", "u2", "u3"])),
        "source": source,
        "ts": START + draw(st.integers(0, 6 * WEEK)),
    }
    if SOURCES[source] == "text":
        e["text"] = draw(st.sampled_from(["milk", "bread", "soft drinks", "coupon: dairy", "frozen pizza"]))
        if draw(st.booleans()):
            e["amount"] = draw(finite)
    else:
        e["attributes"] = {
            a: draw(finite) for a in draw(st.sets(st.sampled_from(["spend", "lines", "hour"]), min_size=1))
        }
    if draw(st.integers(0, 9)) == 0:  # now and then a field a careless client gets wrong
        e[draw(st.sampled_from(["ts", "amount", "user_id", "text"]))] = draw(hostile)
    return e


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(event(), min_size=1, max_size=12), min_size=1, max_size=5))
def test_random_streams_keep_every_invariant(live, stream):
    run = f"p{next(examples)}-"
    requests = [
        [dict(e, user_id=run + e["user_id"]) if isinstance(e["user_id"], str) else e for e in r] for r in stream
    ]
    users = sorted({e["user_id"] for r in requests for e in r if isinstance(e["user_id"], str)})

    accepted: dict[tuple, list[dict]] = {}  # (user, source, window start) -> the events answered `accepted`
    for body in requests:
        r = tokenize(live, body)
        assert r.status_code in (200, 413, 422), r.text
        if r.status_code != 200:
            continue
        for e, status in zip(body, r.json()["events"], strict=True):
            assert status["event_id"] == e["event_id"]
            if status["status"] == "accepted":
                stored = {(w["source"], w["window_start"]) for w in history(live, e["user_id"])}
                assert (e["source"], window_of(e["ts"])) in stored, "an accepted event's window is stored"
                accepted.setdefault((e["user_id"], e["source"], window_of(e["ts"])), []).append(e)
    for (user, source, start), events in accepted.items():
        ids = [e["event_id"] for e in events]
        assert len(ids) == len(set(ids)), "an event id is accepted once per window"
        counts = {(w["source"], w["window_start"]): w["event_count"] for w in history(live, user)}
        assert counts[(source, start)] == len(ids), "a window counts every event it accepted, once"
    for n, ((user, source, start), events) in enumerate(accepted.items()):
        # the same events at once, last first, for a user who has nothing else: the tokens a backfill computes
        fresh = f"{run}whole-{n}"
        r = tokenize(live, [dict(e, user_id=fresh) for e in reversed(events)])
        assert r.status_code == 200 and r.json()["accepted"] == len(events), r.text
        online = {(w["source"], w["window_start"]): w["tokens"] for w in history(live, user)}
        (whole,) = history(live, fresh)
        assert online[(source, start)] == whole["tokens"], "a window's tokens are those of all its accepted events"

    before = {u: history(live, u) for u in users}
    for body in requests:  # the whole stream again: at-least-once delivery
        r = tokenize(live, body)
        assert r.status_code in (200, 413, 422), r.text
        if r.status_code == 200:
            assert r.json()["accepted"] == 0, "a replay is never accepted again"
    assert {u: history(live, u) for u in users} == before, "a replay changes no history"
    if users:
        batch = httpx.post(f"{live}/users/tokens", json={"user_ids": users, "format": "both"}, timeout=60)
        assert batch.status_code == 200 and batch.json()["users"] == before


def tokenize(base: str, events: list[dict]) -> httpx.Response:
    """POST /tokenize with the body as a careless client may write it: NaN and Infinity as bare literals."""
    body = json.dumps({"events": events}, allow_nan=True)
    return httpx.post(f"{base}/tokenize", content=body, headers={"content-type": "application/json"}, timeout=60)


def history(base: str, user: str) -> list[dict]:
    r = httpx.get(f"{base}/users/{user}/tokens", params={"format": "both"}, timeout=60)
    assert r.status_code == 200, r.text
    windows = r.json()["windows"]
    assert [w["window_start"] for w in windows] == sorted(w["window_start"] for w in windows)
    return windows


def window_of(ts: float) -> str:
    from u2qt.service.ingest import iso

    return iso(index_start(int(window_index(ts, WEEK)), WEEK))
