import numpy as np
import pytest

from u2qt.model.entries import PackedEntries


@pytest.mark.parametrize("levels,codebook_size", [(1, 2), (4, 1024), (4, 1000), (5, 1025), (6, 256), (3, 65536)])
def test_packed_entries_round_trip_every_code(levels, codebook_size):
    rng = np.random.default_rng(levels * codebook_size)
    codes = rng.integers(0, codebook_size, size=(500, levels))
    codes[0], codes[1] = 0, codebook_size - 1  # both ends of the codebook
    windows = rng.integers(0, 2**24, size=500)
    windows[0], windows[1] = 0, 2**24 - 1  # both ends of the window index
    counts = rng.integers(0, 256, size=500)
    layout = PackedEntries(levels, codebook_size)
    entries = layout.pack(windows, codes, counts)
    assert len(entries) == 500 and {len(e) for e in entries} == {layout.size}
    # the Lua scripts read the window index as the entry's first 3 bytes, little endian (struct '<I3')
    assert [int.from_bytes(e[:3], "little") for e in entries[:20]] == windows[:20].tolist()
    back = layout.unpack(b"".join(entries))
    assert np.array_equal(back["window"], windows) and np.array_equal(back["codes"], codes)
    assert np.array_equal(back["count"], counts)


def test_packed_entry_is_nine_bytes_for_four_codes_of_1024():
    assert PackedEntries(4, 1024).size == 9  # 3-byte window + 40 bits of codes + the event count's byte
    assert PackedEntries(4, 1025).size == 10
    assert PackedEntries(4, 256).size == 8
    with pytest.raises(ValueError, match="16 bits"):
        PackedEntries(4, 2**16 + 1)
    with pytest.raises(ValueError, match="window indices"):
        PackedEntries(4, 1024).pack(np.array([2**24]), np.zeros((1, 4)))


def test_window_periods_shorter_than_an_hour_are_refused():
    from u2qt.model.sources import SourcesConfig

    with pytest.raises(ValueError, match="shorter than an hour"):
        SourcesConfig.model_validate({"window": "30m", "sources": [{"name": "a", "kind": "text"}]})
    assert SourcesConfig.model_validate({"window": "1h", "sources": [{"name": "a", "kind": "text"}]}).period_s == 3600


def test_coalescing_pipeline_shares_one_round_trip_and_keeps_each_callers_replies(redis_server):
    import asyncio

    import redis.asyncio as aioredis
    from redis.exceptions import ResponseError

    from u2qt.service.coalescing import CoalescingPipeline

    async def scenario():
        client = aioredis.from_url(redis_server.url)
        pipeline = CoalescingPipeline(client)
        await client.delete("cp:n", "cp:s")
        await client.set("cp:s", "text")
        before = (await client.info("stats"))["total_connections_received"]
        callers = [pipeline.execute([("INCR", "cp:n"), ("GET", "cp:n")]) for _ in range(20)]
        callers.append(pipeline.execute([("INCR", "cp:s")]))  # not an integer: this caller alone fails
        replies = await asyncio.gather(*callers, return_exceptions=True)
        after = (await client.info("stats"))["total_connections_received"]
        await client.aclose()
        return replies, after - before

    replies, new_connections = asyncio.run(scenario())
    assert isinstance(replies[-1], ResponseError)
    # each caller sees its own replies, in order: INCR and the GET that followed it in the one pipeline
    assert sorted(r[0] for r in replies[:-1]) == list(range(1, 21))
    assert all(int(r[1]) == r[0] for r in replies[:-1])
    assert new_connections <= 1, "21 callers in one loop turn: one pipeline on one connection"


def test_one_script_per_user_per_step_and_each_window_gets_its_own_result(any_redis):
    """A request touching several windows of a user (a household's week: one per source) runs INGEST and COMMIT
    once per user, and still answers per window; the digest covers every source of the history."""
    import asyncio

    from u2qt.service.store import ACCEPTED, CLOSED, DUPLICATE, TokenHistoryStore

    sources = ["purchases", "visits", "promotions"]

    async def scenario():
        client = any_redis.client()
        store = TokenHistoryStore(client, "perusr", "m1", 4, 1024, 7 * 86400, 180, 180, 1)

        async def evals():
            return any_redis.eval_calls()

        def group(user, source, window, *ids):
            return (user, source, window, [(i, {"ts": window * 7 * 86400.0, "text": i}) for i in ids])

        groups = [group("a", s, 10, f"{s}-1", f"{s}-2") for s in sources] + [group("b", "purchases", 10, "p-1")]
        before = await evals()
        first = await store.ingest(groups)
        after_ingest = await evals()
        codes = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]])
        moves = await store.commit(
            [(g[0], g[1], g[2], r.event_count, c) for g, r, c in zip(groups, first, codes, strict=True)], sources
        )
        after_commit = await evals()
        # a replay of one window and a window too late for a, after a newer one is stored
        again = await store.ingest([group("a", "visits", 10, "visits-1"), group("a", "visits", 20, "v-new")])
        await store.commit([("a", "visits", 20, 1, codes[0])], sources)
        late = await store.ingest([group("a", "visits", 12, "v-late"), group("a", "purchases", 11, "p-ok")])
        histories, _ = await store.read(["a", "b"], sources)
        await client.aclose()
        return first, moves, again, late, histories, (after_ingest - before, after_commit - after_ingest)

    first, moves, again, late, histories, calls = asyncio.run(scenario())
    assert calls == (2, 2), "two users: one INGEST and one COMMIT script each"
    assert [r.statuses for r in first] == [[ACCEPTED, ACCEPTED]] * 3 + [[ACCEPTED]]
    assert [r.event_count for r in first] == [2, 2, 2, 1]
    assert [[e["event_id"] for e in r.events] for r in first[:3]] == [[f"{s}-1", f"{s}-2"] for s in sources]
    assert set(moves) == {"a", "b"} and moves["a"][0] != moves["b"][0]
    assert moves["a"][2] == 6 and moves["b"][2] == 1  # engagement: events accepted, per user
    assert again[0].statuses == [DUPLICATE] and again[0].events is None
    assert again[1].statuses == [ACCEPTED] and again[1].events is not None
    assert late[0].statuses == [CLOSED] and late[1].statuses == [ACCEPTED]
    assert {s: histories["a"][s]["window"].tolist() for s in sources} == {
        "purchases": [10],
        "visits": [10, 20],
        "promotions": [10],
    }
    assert histories["a"]["promotions"]["codes"].tolist() == [[9, 10, 11, 12]]


def test_a_guessed_new_window_is_ingested_and_committed_by_one_script_and_a_wrong_guess_writes_nothing(any_redis):
    """POST /tokenize guesses that a window it has not seen lately is new and tokenizes it from the request's
    events first: INGEST_COMMIT then writes those codes in the one script that ingests the events, where the
    window held none of them. A window that held events, a replay and a late window are answered as INGEST
    answers them, and their guessed codes are never stored."""
    import asyncio

    from u2qt.service.store import ACCEPTED, CLOSED, DUPLICATE, TokenHistoryStore

    sources = ["purchases", "visits"]

    async def scenario():
        client = any_redis.client()
        store = TokenHistoryStore(client, "guess", "m1", 4, 1024, 7 * 86400, 180, 180, 1)

        def group(user, source, window, *ids):
            return (user, source, window, [(i, {"ts": window * 7 * 86400.0, "text": i}) for i in ids])

        guessed, other = np.array([1, 2, 3, 4]), np.array([9, 9, 9, 9])
        before = any_redis.eval_calls()
        new, moves = await store.ingest_guessed(
            [group("a", "purchases", 10, "p-1", "p-2"), group("a", "visits", 10, "v-1")], {0: guessed}, sources
        )
        one_call = any_redis.eval_calls() - before
        stored_first = (await store.read(["a"], sources))[0]["a"]
        await store.commit([("a", "visits", 10, 1, other)], sources)  # the unguessed window, as the service does
        # then: one more event for the same window, a replay, and a window too late, each with a guess
        more, more_moves = await store.ingest_guessed(
            [group("a", "purchases", 10, "p-3"), group("a", "visits", 10, "v-1")], {0: other, 1: other}, sources
        )
        await store.commit([("a", "purchases", 12, 1, guessed)], sources)
        late, _ = await store.ingest_guessed([group("a", "purchases", 10, "p-4")], {0: other}, sources)
        stored_after = (await store.read(["a"], sources))[0]["a"]
        await client.aclose()
        return new, moves, one_call, stored_first, more, more_moves, late, stored_after

    new, moves, one_call, stored_first, more, more_moves, late, stored_after = asyncio.run(scenario())
    assert one_call == 1, "a user's new windows: INGEST and COMMIT in one script"
    assert new[0].committed and new[0].events is None and new[0].statuses == [ACCEPTED, ACCEPTED]
    assert new[0].event_count == 2
    assert not new[1].committed and [e["event_id"] for e in new[1].events] == ["v-1"], "not guessed: as INGEST"
    assert stored_first["purchases"]["codes"].tolist() == [[1, 2, 3, 4]]
    assert stored_first["purchases"]["count"].tolist() == [2]
    assert stored_first["visits"]["window"].tolist() == [], "the unguessed window waits for its own COMMIT"
    assert "a" in moves and moves["a"][2] == 3  # the digest to re-file under; engagement: 3 events accepted
    # the window held two events: the guess from the request's one event is wrong, and nothing is written
    assert not more[0].committed and [e["event_id"] for e in more[0].events] == ["p-1", "p-2", "p-3"]
    assert not more[1].committed and more[1].statuses == [DUPLICATE] and more[1].events is None
    assert more_moves == {}
    assert late[0].statuses == [CLOSED] and not late[0].committed
    assert stored_after["purchases"]["codes"].tolist() == [[1, 2, 3, 4], [1, 2, 3, 4]]
    assert stored_after["purchases"]["window"].tolist() == [10, 12]
    assert stored_after["purchases"]["count"].tolist() == [2, 1]
    assert stored_after["visits"]["codes"].tolist() == [[9, 9, 9, 9]]


def test_scripts_go_by_sha1_and_a_redis_that_lost_them_is_sent_their_bodies(any_redis):
    """Writes and reads send EVALSHA; after SCRIPT FLUSH (or a restart, or a new node) each command that meets
    NOSCRIPT goes again with its script's body, in a pipeline and on the single-read path alike."""
    import asyncio

    import redis

    from u2qt.service.store import TokenHistoryStore

    async def write_and_read(store, user):
        groups = [(user, "purchases", 10, [("e1", {"ts": 10 * 7 * 86400.0, "text": "milk"})])]
        (res,) = await store.ingest(groups)
        await store.commit([(user, "purchases", 10, res.event_count, np.array([1, 2, 3, 4]))], ["purchases"])
        one, _ = await store.read([user], ["purchases"])  # one user: a single EVALSHA, no pipeline
        return one[user]["purchases"]["codes"].tolist()

    async def scenario():
        client = any_redis.client()
        store = TokenHistoryStore(client, "sha", "m1", 4, 1024, 7 * 86400, 180, 180, 1)
        first = await write_and_read(store, "u1")
        for port in any_redis.ports:
            redis.Redis(port=port).script_flush()
        again = await write_and_read(store, "u2")
        await client.aclose()
        return first, again

    before = [
        redis.Redis(port=p).info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0) for p in any_redis.ports
    ]
    assert asyncio.run(scenario()) == ([[1, 2, 3, 4]], [[1, 2, 3, 4]])
    after = [
        redis.Redis(port=p).info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0) for p in any_redis.ports
    ]
    assert sum(after) - sum(before) >= 6, "every script went as EVALSHA first"


def test_the_store_and_eval_share_one_definition_of_an_identical_history(any_redis):
    """The digest COMMIT writes in Redis is model.fallback.history_digest of the user's packed entries, source by
    source: `u2qt eval` counts collisions with the very rule the service serves the fallback by."""
    import asyncio

    from u2qt.model.fallback import history_digest
    from u2qt.service.store import TokenHistoryStore

    sources = ["purchases", "promotions", "visits"]
    writes = [("d", "purchases", 10, 2, np.array([1, 2, 3, 4])), ("d", "visits", 11, 1, np.array([5, 6, 7, 8]))]
    writes.append(("d", "purchases", 12, 3, np.array([9, 10, 11, 12])))

    async def scenario():
        client = any_redis.client()
        store = TokenHistoryStore(client, "digest", "m1", 4, 1024, 7 * 86400, 180, 180, 1)
        for user, source, window, n, _ in writes:
            events = [(f"{source}-{window}-{i}", {"ts": 1.0, "text": "x"}) for i in range(n)]
            await store.ingest([(user, source, window, events)])
        moves = await store.commit(writes, sources)
        stored = await client.hget(store.meta_key("d"), "d")
        await client.aclose()
        return moves["d"][0], stored.decode(), store.entries

    digest, stored, entries = asyncio.run(scenario())
    by_source = [[w for w in writes if w[1] == s] for s in sources]
    expected = history_digest(
        [entries.pack(np.array([w[2] for w in ws]), np.stack([w[4] for w in ws])) if ws else [] for ws in by_source]
    )
    assert digest == stored == expected


def test_an_entry_whose_event_set_expired_is_final_and_a_new_window_needs_none(any_redis):
    import asyncio

    from u2qt.service.store import TokenHistoryStore

    async def scenario():
        client = any_redis.client()
        store = TokenHistoryStore(client, "final", "m1", 4, 1024, 7 * 86400, 180, 180, 1)
        first = await store.commit([("u", "purchases", 10, 5, np.array([1, 2, 3, 4]))], ["purchases"])
        await client.delete(store.events_key("u", "purchases", 10))  # its event set expires
        again = await store.commit([("u", "purchases", 10, 1, np.array([9, 9, 9, 9]))], ["purchases"])
        newer = await store.commit([("u", "purchases", 11, 1, np.array([5, 6, 7, 8]))], ["purchases"])
        histories, _ = await store.read(["u"], ["purchases"])
        await client.aclose()
        return first, again, newer, histories["u"]["purchases"]

    first, again, newer, entries = asyncio.run(scenario())
    assert first and not again and newer
    assert entries["window"].tolist() == [10, 11] and entries["codes"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_a_cluster_spreads_users_over_every_master_and_each_users_scripts_stay_legal(redis_cluster):
    """Every key of a user carries the hash tag {user}: the store's multi-key scripts run on one master, and
    users spread over all of them. The collision sets (one key each, single-key commands only) live anywhere."""
    import asyncio

    from u2qt.service.redis_client import connect
    from u2qt.service.store import TokenHistoryStore

    async def scenario():
        client = connect(redis_cluster.url)
        store = TokenHistoryStore(client, "spread", "m1", 4, 1024, 7 * 86400, 180, 180, 1)
        users = [f"user-{i}" for i in range(60)]
        groups = [(u, "purchases", 10, [(f"{u}-e", {"ts": 1.0, "text": "milk"})]) for u in users]
        results = await store.ingest(groups)
        same = np.array([1, 2, 3, 4])  # 60 identical histories: one collision set
        moves = await store.commit(
            [(u, "purchases", 10, r.event_count, same) for u, r in zip(users, results, strict=True)], ["purchases"]
        )
        await store.refresh_fallback(moves)
        histories, fallback = await store.read(users, ["purchases"])
        await client.aclose()
        return users, histories, fallback

    users, histories, fallback = asyncio.run(scenario())
    assert all(histories[u]["purchases"]["codes"].tolist() == [[1, 2, 3, 4]] for u in users)
    assert sorted(fallback.values()) == list(range(1, 61))  # 60 identical histories: ranks 1..60
    spread = redis_cluster.keys_per_master()
    assert len(spread) == 3 and min(spread) > 20, spread


def test_guessing_stops_after_wrong_guesses_and_resumes_when_probes_are_right():
    """A wrong guess costs a window's inference: POST /tokenize stops guessing that unseen windows are new after
    two requests of wrong guesses (a stream of events into open windows), then guesses in one request of 100 only,
    and guesses again once those probes have been right long enough."""
    from u2qt.service.ingest import GuessPolicy

    policy = GuessPolicy()
    assert all(policy.guess() for _ in range(10))
    policy.observe(right=2, wrong=0)
    assert policy.guess()
    policy.observe(right=0, wrong=2)
    policy.observe(right=0, wrong=1)
    decisions = [policy.guess() for _ in range(1000)]
    assert sum(decisions) == 10, "off: one request in 100 probes"
    for _ in range(200):  # the probes are right again (new windows again): guessing comes back
        policy.observe(right=3, wrong=0)
    assert policy.guess() and all(policy.guess() for _ in range(10))


def test_round_trips_go_on_the_wire_as_redis_py_would_pack_them():
    """CoalescingPipeline packs commands with hiredis instead of redis-py's packer: the same bytes for every kind of
    argument the store sends (strings, ints, negative floats, JSON bytes)."""
    import orjson
    import redis.asyncio as aioredis
    from hiredis import pack_command

    connection = aioredis.Redis().connection_pool.make_connection()
    event = orjson.dumps({"ts": 1_500_000_000.25, "text": "milk x3", "amount": 3.25})
    commands = [
        ("EVALSHA", "a" * 40, 2, "u2qt:{u}:c:v:purchases", "u2qt:{u}:m:v", 1, 86400, "e-1", event, b"\x99\t\x00"),
        ("ZADD", "u2qt:fb:v:0123", -12.0, "u"),
        ("ZADD", "u2qt:fb:v:0123", -0.1, "u"),
        ("EXPIRE", "u2qt:fb:v:0123", 15552000),
        ("HDEL", "u2qt:{u}:m:v", "f"),
    ]
    for command in commands:
        assert pack_command(command) == b"".join(connection.pack_command(*command)), command
