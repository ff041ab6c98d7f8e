"""Faults survived: SIGTERM under load, Redis killed mid-load, overload, and fuzzing of the OpenAPI schema.
(Concurrent writers converging: tests/test_service.py.) benchmarks/fault_drill.py runs the same scenarios
at a larger scale and prints the figures recorded in docs/operations.md."""

import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid

import httpx
import pytest

from benchmarks.harness import RedisProcess, ServiceProcess, drive, lost_windows, requests_by_user_week, wait_until


@pytest.fixture(scope="module")
def user_streams(cj_events):
    events, sources = cj_events
    return requests_by_user_week(events, sources)


def streams_for(user_streams, n, prefix):
    users = sorted(user_streams)[:n]
    return [[[dict(e, user_id=prefix + e["user_id"]) for e in req] for req in user_streams[u]] for u in users]


def queue_depth(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return float(re.search(r"^u2qt_queue_windows (\S+)$", text, re.M).group(1))


def engine_pids(output: str) -> list[int]:
    return [int(p) for p in re.findall(r"u2qt engine ready: pid (\d+)", output)]


@pytest.mark.parametrize("frontends", [0, 2], ids=["in-process", "two-frontends"])
def test_sigterm_under_load_drains_what_is_in_flight_and_loses_nothing(
    trained_dir, redis_server, user_streams, serve, frontends
):
    # a prefix of its own per run: the test runs once per `serve` mode on the one session Redis, and a second run
    # under the first's prefix gets its first requests answered as duplicates (200, no windows) and acknowledges
    # nothing to check when SIGTERM comes that early
    prefix = f"sigterm{frontends}-{uuid.uuid4().hex[:8]}"
    svc = ServiceProcess(
        trained_dir[0], redis_server.url, key_prefix=prefix, max_batch_size=8, history_days=400, frontends=frontends
    )
    stop = threading.Event()
    result = {}
    load = threading.Thread(
        target=lambda: result.update(r=drive(svc.base, streams_for(user_streams, 8, "term-"), stop))
    )
    load.start()
    wait_until(lambda: queue_depth(svc.base) > 0, 60, "windows queued")
    signalled = time.perf_counter()
    svc.terminate()
    svc.wait(60)
    assert svc.shut_down_cleanly(), svc.output()[-2000:]
    if frontends:  # every frontend drained through the engine before the engine stopped
        out = svc.output()
        assert out.count("Application shutdown complete.") == frontends, out[-2000:]
        assert out.rindex("Application shutdown complete.") < out.index("u2qt engine stopped"), out[-2000:]
    stop.set()
    load.join(120)
    r = result["r"]
    assert not [s for s in r.statuses if s >= 500], r.statuses
    # answered, whatever the status: a 429 is an answer too, and a client pauses 0.1 s after each, so counting 200s
    # alone a signal that came while the clients paused could find nothing in flight to check
    drained = r.in_flight_at(signalled)
    assert drained > 0, f"requests in flight at SIGTERM were answered: {r.statuses}, {r.failures}"
    assert r.acknowledged
    reader, _ = serve(key_prefix=prefix, history_days=400)  # a fresh instance on the same Redis
    assert lost_windows(reader, r.acknowledged) == []


def finish_load(load: threading.Thread, stop: threading.Event, result: dict, timeout_s: float = 600):
    """The load's result once every stream is through, or after `timeout_s` what it got by then (streams that
    never finish must fail the test with their statuses, not hang it)."""
    load.join(timeout_s)
    stop.set()
    load.join(90)  # each client finishes the request it has in flight (60 s timeout)
    return result["r"]


def assert_outage_survived(base: str, res, streams, log: str = "") -> None:
    """A retrying upstream across an outage: it saw 503s (no other 5xx), each with Retry-After, every request
    finally succeeded, and every window acknowledged is stored. `log`: the service's output, shown on failure."""
    assert res.statuses[503] > 0 and not [s for s in res.statuses if s >= 500 and s != 503], res.statuses
    assert res.statuses[200] == sum(len(s) for s in streams), (
        f"not every request succeeded: {res.statuses}, {res.failures}\n{log[-3000:]}"
    )
    assert res.retry_after_missing == 0
    assert lost_windows(base, res.acknowledged) == []


def test_redis_killed_mid_load_gives_503_then_recovers_and_keeps_every_acknowledged_window(
    serve, user_streams, tmp_path
):
    store = RedisProcess(tmp_path / "redis", durable=True).start()
    try:
        base, _ = serve(redis_url=store.url, history_days=400)  # a year: no window is trimmed
        streams = streams_for(user_streams, 6, "kill-")
        stop, result = threading.Event(), {}
        load = threading.Thread(target=lambda: result.update(r=drive(base, streams, stop, retry=True, pause_s=0.2)))
        load.start()
        wait_until(
            lambda: (
                len(httpx.get(f"{base}/users/kill-{streams[0][0][0]['user_id'][5:]}/tokens").json()["windows"]) >= 2
            ),
            60,
            "first windows stored",
        )
        store.kill()
        time.sleep(1.0)
        probe = {"event_id": "probe", "user_id": "probe", "source": "purchases", "ts": 1489060406, "text": "milk"}
        r = httpx.post(f"{base}/tokenize", json={"events": [probe]}, timeout=30)
        assert r.status_code == 503 and r.headers["Retry-After"], "no false 200 while Redis is down"
        assert httpx.get(f"{base}/readyz").status_code == 503
        time.sleep(1.0)
        store.start()  # same port, same append-only file
        wait_until(lambda: httpx.get(f"{base}/readyz").status_code == 200, 30, "readiness after Redis returned")
        assert_outage_survived(base, finish_load(load, stop, result), streams)
    finally:
        store.kill()


def test_engine_killed_mid_load_gives_503_then_is_restarted_and_keeps_every_acknowledged_window(
    trained_dir, redis_server, user_streams
):
    svc = ServiceProcess(trained_dir[0], redis_server.url, key_prefix="engine-kill", history_days=400, frontends=2)
    try:
        streams = streams_for(user_streams, 6, "ekill-")
        stop, result = threading.Event(), {}
        load = threading.Thread(target=lambda: result.update(r=drive(svc.base, streams, stop, retry=True, pause_s=0.2)))
        load.start()
        first = f"{svc.base}/users/ekill-{streams[0][0][0]['user_id'][6:]}/tokens"
        wait_until(lambda: len(httpx.get(first).json()["windows"]) >= 2, 60, "first windows stored")
        [engine] = engine_pids(svc.output())
        os.kill(engine, signal.SIGKILL)
        time.sleep(0.5)
        probe = {"event_id": "probe", "user_id": "probe", "source": "purchases", "ts": 1489060406, "text": "milk"}
        r = httpx.post(f"{svc.base}/tokenize", json={"events": [probe]}, timeout=30)
        assert r.status_code == 503 and r.headers["Retry-After"], "no false 200 while the engine is down"
        assert httpx.get(f"{svc.base}/readyz").status_code == 503
        assert httpx.get(f"{svc.base}/users/probe/tokens").status_code == 200, "reads do not need the engine"
        wait_until(lambda: httpx.get(f"{svc.base}/readyz").status_code == 200, 120, "readiness after the restart")
        assert len(engine_pids(svc.output())) == 2, "the engine was restarted"
        assert_outage_survived(svc.base, finish_load(load, stop, result), streams, svc.output())
    finally:
        svc.stop()


def test_a_frontend_restarted_while_the_engine_is_hung_starts_and_the_service_stays_up(trained_dir, redis_server):
    """uvicorn restarts a frontend that dies (OOM, or killed as hung), and stops every frontend when one fails to
    start. A frontend that starts while the engine is down or hung must therefore start anyway: it serves reads,
    and writes once the engine answers again. Before, it failed its start and took the whole service down."""
    svc = ServiceProcess(
        trained_dir[0],
        redis_server.url,
        key_prefix="engine-hung",
        frontends=2,
        engine_timeout_s=1,
        engine_request_timeout_s=2,
    )
    event = {"event_id": "e1", "user_id": "hung", "source": "purchases", "ts": 1489060406, "text": "milk"}
    try:
        assert httpx.post(f"{svc.base}/tokenize", json={"events": [event]}, timeout=30).status_code == 200
        [engine] = engine_pids(svc.output())
        frontends = [int(p) for p in re.findall(r"Started server process \[(\d+)\]", svc.output())]
        os.kill(engine, signal.SIGSTOP)
        try:
            os.kill(frontends[0], signal.SIGKILL)
            wait_until(lambda: "no inference engine answered" in svc.output(), 60, "the restarted frontend's start")
            wait_until(lambda: svc.output().count("Application startup complete.") > len(frontends), 30, "its start")
            for _ in range(10):  # fresh connections: both frontends answer reads
                assert httpx.get(f"{svc.base}/users/hung/tokens", timeout=10).status_code == 200
            assert svc.process.poll() is None, svc.output()[-3000:]
        finally:
            os.kill(engine, signal.SIGCONT)
        again = dict(event, event_id="e2", ts=event["ts"] + 8 * 86400)

        def written():
            return httpx.post(f"{svc.base}/tokenize", json={"events": [again]}, timeout=30).status_code == 200

        for _ in range(6):  # each frontend, once its connection is back
            wait_until(written, 30, "writes after the engine answers again")
        assert len(httpx.get(f"{svc.base}/users/hung/tokens").json()["windows"]) == 2
        for _ in range(6):  # and each says what the engine runs
            wait_until(
                lambda: httpx.get(f"{svc.base}/readyz").json()["providers"] == ["CPUExecutionProvider"], 30, "providers"
            )
    finally:
        svc.stop()


def test_overload_is_refused_with_429_and_the_queue_stays_bounded(serve, user_streams):
    base, _ = serve(max_queue_windows=64, max_queue_delay_ms=20, history_days=400)
    stop, result, depths = threading.Event(), {}, []
    load = threading.Thread(
        target=lambda: result.update(
            r=drive(base, streams_for(user_streams, 24, "over-"), stop, retry=False, loop=True)
        )
    )
    load.start()
    t_end = time.time() + 8
    while time.time() < t_end:
        depths.append(queue_depth(base))
        time.sleep(0.1)
    stop.set()
    load.join(120)
    r = result["r"]
    assert r.statuses[429] > 0 and r.statuses[200] > 0, r.statuses
    assert r.retry_after_missing == 0
    assert not [s for s in r.statuses if s >= 500], r.statuses
    assert max(depths) <= 64, "memory is bounded by the queue's capacity"
    assert queue_depth(base) == 0
    assert lost_windows(base, r.acknowledged) == []


def test_fuzzing_the_openapi_schema_finds_no_server_error(serve):
    base, _ = serve()
    exe = shutil.which("schemathesis") or shutil.which("st")
    assert exe, "schemathesis is installed by deploy/install.sh (dev extra)"
    r = subprocess.run(
        [
            exe,
            "run",
            f"{base}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "40",
            "--request-timeout",
            "60",
            "--generation-deterministic",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    tested = re.search(r"Tested: (\d+)", r.stdout)
    assert tested and int(tested.group(1)) >= 6, r.stdout[-1500:]  # every operation was exercised


def evicting(port: int, policy: str = "allkeys-lru") -> None:
    import redis

    redis.Redis(port=port).config_set("maxmemory", 100 * 2**20)
    redis.Redis(port=port).config_set("maxmemory-policy", policy)


def not_evicting(port: int) -> None:
    import redis

    redis.Redis(port=port).config_set("maxmemory-policy", "noeviction")
    redis.Redis(port=port).config_set("maxmemory", 0)


def test_serve_refuses_a_redis_that_may_evict_keys(trained_dir, capsys):
    """Every key u2qt writes has a TTL, so a managed Redis' usual volatile-lru would drop histories silently:
    `u2qt serve` and `u2qt batch` name the setting and stop, unless told that losing histories is acceptable."""
    import sys

    from benchmarks.harness import free_port
    from u2qt.service.redis_client import check_eviction

    server = RedisProcess().start()
    try:
        evicting(server.port, "volatile-lru")
        env = dict(os.environ, REDIS_URL=server.url)
        args = [sys.executable, "-m", "u2qt.service.cli", "serve", "--artifacts", str(trained_dir[0])]
        r = subprocess.run([*args, "--port", str(free_port())], capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "maxmemory-policy volatile-lru" in r.stderr and "noeviction" in r.stderr, r.stderr
        assert "U2QT_REDIS_ALLOW_EVICTION" in r.stderr and "Traceback" not in r.stderr and "serving" not in r.stdout
        batch = [sys.executable, "-m", "u2qt.service.cli", "batch", "--artifacts", str(trained_dir[0])]
        r = subprocess.run([*batch, "--events", "x.parquet"], capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 2 and "maxmemory-policy volatile-lru" in r.stderr and "Traceback" not in r.stderr
        check_eviction(server.url, False, allow=True)  # accepted knowingly
        # a Redis user whose ACL forbids INFO: nobody can tell the policy, so serving goes on, with a warning
        import redis

        redis.Redis(port=server.port).acl_setuser("limited", enabled=True, passwords=["+pw"], keys=["*"],
                                                  commands=["+@all", "-info"])  # fmt: skip
        limited = f"redis://limited:pw@127.0.0.1:{server.port}/0"
        check_eviction(limited, False, allow=False)
        assert "maxmemory-policy is unknown" in capsys.readouterr().err
        not_evicting(server.port)
        check_eviction(server.url, False, allow=False)
    finally:
        server.stop()


def test_a_redis_that_starts_evicting_makes_the_service_unready(serve, redis_server):
    base, _ = serve()
    try:
        assert httpx.get(f"{base}/readyz").status_code == 200
        evicting(redis_server.port)
        r = httpx.get(f"{base}/readyz")
        assert r.status_code == 503 and "maxmemory-policy allkeys-lru" in r.json()["redis"], r.text
    finally:
        not_evicting(redis_server.port)
    assert httpx.get(f"{base}/readyz").status_code == 200


def test_every_evicting_master_of_a_cluster_is_named(redis_cluster):
    import asyncio

    from u2qt.service.redis_client import connect, evicting_masters

    async def masters():
        client = connect(redis_cluster.url)
        try:
            return await evicting_masters(client)
        finally:
            await client.aclose()

    assert asyncio.run(masters()) == []
    try:
        evicting(redis_cluster.ports[1], "volatile-ttl")
        found = asyncio.run(masters())
        assert len(found) == 1 and f":{redis_cluster.ports[1]}:" in found[0] and "volatile-ttl" in found[0], found
    finally:
        not_evicting(redis_cluster.ports[1])


def test_a_full_redis_gets_503_naming_it_and_the_retry_stores_everything(serve, redis_server):
    """Under noeviction a full Redis refuses writes: each write answers 503 saying the store is full, and once
    Redis has room the same request, retried, leaves every event in its window's tokens."""
    import redis

    from tests.test_integrity import milk
    from tests.test_service import post

    base, _ = serve()
    events = [milk(f"f{i}", user_id="full", ts=1489060406 + 60 * i) for i in range(3)]
    used = redis.Redis(port=redis_server.port).info("memory")["used_memory"]
    try:
        redis.Redis(port=redis_server.port).config_set("maxmemory", used // 2)  # the policy stays noeviction
        r = post(base, events)
        assert r.status_code == 503 and "token store full" in r.json()["detail"], r.text
        assert r.headers["retry-after"]
    finally:
        not_evicting(redis_server.port)
    r = post(base, events)
    assert r.status_code == 200 and r.json()["windows"][0]["event_count"] == 3, r.text
