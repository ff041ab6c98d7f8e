"""The fault drill: the faults of tests/test_faults.py at a larger scale, on the full model, with figures.

    python3 benchmarks/fault_drill.py --artifacts artifacts/cj [--users 48] [--seconds 20]

1. Redis killed (kill -9) mid-load and restarted on its append-only file; upstream retries 503s.
2. Overload: the same service at 1 client (unloaded) and at `--overload-clients` clients.
3. SIGTERM under load: batches in flight are finished and answered; a fresh instance reads them back.
4. Concurrent writers: 8 clients replay overlapping, differently chunked copies of the same users' events.
5. schemathesis against the OpenAPI schema.
Every scenario runs `u2qt serve` in its own process against a real redis-server; windows lost = acknowledged
windows (HTTP 200) whose tokens are not in Redis afterwards.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import (  # noqa: E402
    LoadResult,
    RedisProcess,
    ServiceProcess,
    drive,
    latency_buckets,
    lost_windows,
    recorded,
    requests_by_user_week,
    server_quantile,
    wait_until,
)

KEEP_ALL = {"history_days": 400}  # a cap longer than the data: nothing acknowledged is trimmed


def streams(by_user: dict, users: list[str], prefix: str) -> list[list[list[dict]]]:
    return [[[dict(e, user_id=prefix + e["user_id"]) for e in req] for req in by_user[u]] for u in users]


def queue_depth(base: str) -> float:
    return float(re.search(r"^u2qt_queue_windows (\S+)$", httpx.get(f"{base}/metrics").text, re.M).group(1))


def timed_load(base, s, seconds, **kw) -> tuple[LoadResult, list[float]]:
    stop, out, samples = threading.Event(), {}, []
    t = threading.Thread(target=lambda: out.update(r=drive(base, s, stop, **kw)))
    t.start()
    end = time.time() + seconds
    while time.time() < end:
        samples.append(queue_depth(base))
        time.sleep(0.2)
    stop.set()
    t.join()
    return out["r"], samples


def redis_kill(artifacts, by_user, users, tmp: Path) -> dict:
    store = RedisProcess(tmp / "redis", durable=True).start()
    svc = ServiceProcess(artifacts, store.url, key_prefix="drill-kill", **KEEP_ALL)
    s = streams(by_user, users, "kill-")
    stop, out = threading.Event(), {}
    t = threading.Thread(target=lambda: out.update(r=drive(svc.base, s, stop, retry=True, pause_s=0.2)))
    t.start()
    time.sleep(5)
    store.kill()
    down = time.perf_counter()
    time.sleep(3)
    ready_while_down = httpx.get(f"{svc.base}/readyz").status_code
    store.start()
    wait_until(lambda: httpx.get(f"{svc.base}/readyz").status_code == 200, 60, "readiness")
    recovered_s = time.perf_counter() - down - 3
    t.join()
    r = out["r"]
    lost = lost_windows(svc.base, r.acknowledged)
    svc.stop()
    store.kill()
    return {
        "requests tried": r.tried,
        "requests acknowledged (200)": r.statuses[200],
        "errors by class": r.errors_by_class(),
        "/readyz while Redis down": ready_while_down,
        "ready again after restart (s)": round(recovered_s, 2),
        "windows acknowledged": len(r.acknowledged),
        "windows lost": len(lost),
        "429/503 without Retry-After": r.retry_after_missing,
    }


def overload(artifacts, by_user, users, clients, seconds, url) -> dict:
    """Fresh events only (no replays: a duplicate is answered without inference and would flatter latency)."""
    svc = ServiceProcess(artifacts, url, key_prefix="drill-over", **KEEP_ALL)
    rss0 = svc.rss_bytes()
    calm_stream = [req for u in streams(by_user, users, "calm-") for req in u]
    b0 = latency_buckets(svc.base)
    calm, _ = timed_load(svc.base, [calm_stream], seconds, retry=False)
    b1 = latency_buckets(svc.base)
    # each client: every household's weeks under its own prefix, so no request is a replay within the run
    s = [[req for u in streams(by_user, users, f"over{i}-") for req in u] for i in range(clients)]
    rss = []
    sampler_stop = threading.Event()

    def sample():
        while not sampler_stop.is_set():
            rss.append(svc.rss_bytes())
            time.sleep(0.2)

    th = threading.Thread(target=sample)
    th.start()
    hot, depths = timed_load(svc.base, s, seconds, retry=False, pause_s=0.0)
    b2 = latency_buckets(svc.base)
    calm_server, hot_server = server_quantile(b0, b1, 0.99) * 1e3, server_quantile(b1, b2, 0.99) * 1e3
    sampler_stop.set()
    th.join()
    lost = lost_windows(svc.base, hot.acknowledged)
    settings = httpx.get(f"{svc.base}/metrics").text
    capacity = float(re.search(r"^u2qt_queue_capacity_windows (\S+)$", settings, re.M).group(1))
    svc.stop()
    return {
        "unloaded (1 client): requests, p99 ms": (calm.statuses[200], round(calm.p99_ms(), 1)),
        f"overload ({clients} clients): requests tried": hot.tried,
        "overload: 200 / 429 / 5xx": (
            hot.statuses[200],
            hot.statuses[429],
            sum(n for st, n in hot.statuses.items() if st >= 500),
        ),
        "overload: accepted p99 ms": round(hot.p99_ms(), 1),
        "accepted p99 / unloaded p99 (clients' clocks)": round(hot.p99_ms() / calm.p99_ms(), 2),
        "server-side p99 of 200s, ms: unloaded / overload": (round(calm_server, 1), round(hot_server, 1)),
        "server-side ratio": round(hot_server / calm_server, 2),
        "429 without Retry-After": hot.retry_after_missing,
        "queue depth max / capacity (windows)": (max(depths), capacity),
        "service RSS MiB: start / peak under overload": (rss0 // 2**20, max(rss) // 2**20),
        "windows lost": len(lost),
    }


def sigterm(artifacts, by_user, users, url) -> dict:
    svc = ServiceProcess(artifacts, url, key_prefix="drill-term", **KEEP_ALL)
    stop, out = threading.Event(), {}
    # an at-least-once upstream: 429s are retried; after SIGTERM the retries meet a closed port until `stop`
    t = threading.Thread(target=lambda: out.update(r=drive(svc.base, streams(by_user, users, "term-"), stop)))
    t.start()
    time.sleep(1)  # a second of load, then the signal while windows are queued
    wait_until(lambda: queue_depth(svc.base) > 0, 30, "windows queued")
    signalled = time.perf_counter()
    svc.terminate()
    svc.wait(90)
    stopped_s = time.perf_counter() - signalled
    stop.set()
    t.join()
    r = out["r"]
    reader = ServiceProcess(artifacts, url, key_prefix="drill-term", **KEEP_ALL)
    lost = lost_windows(reader.base, r.acknowledged)
    reader.stop()
    drained = r.in_flight_at(signalled, status=200)
    return {
        "requests tried": r.tried,
        "requests in flight at SIGTERM, answered 200": drained,
        "errors by class (429 retried; transport errors after the listener closed)": r.errors_by_class(),
        "clean shutdown": svc.shut_down_cleanly(),
        "SIGTERM to exit (s)": round(stopped_s, 2),
        "windows acknowledged": len(r.acknowledged),
        "windows lost": len(lost),
    }


def concurrent_writers(artifacts, by_user, users, url, writers=8) -> dict:
    svc = ServiceProcess(artifacts, url, key_prefix="drill-conc", **KEEP_ALL)
    serial = drive(svc.base, [[req for u in streams(by_user, users, "s-") for req in u]], threading.Event())
    base_streams = streams(by_user, users, "c-")

    def replay(seed):
        rng = random.Random(seed)
        out = []
        for stream in base_streams:  # weeks in order per user; chunks of 1-3 weeks, shuffled inside a chunk
            i = 0
            while i < len(stream):
                n = rng.randint(1, 3)
                chunk = [e for req in stream[i : i + n] for e in req]
                rng.shuffle(chunk)
                out.append(chunk)
                i += n
        return out

    conc = drive(svc.base, [replay(s) for s in range(writers)], threading.Event())
    got = httpx.post(f"{svc.base}/users/tokens", json={"user_ids": [f"c-{u}" for u in users]}).json()["users"]
    want = httpx.post(f"{svc.base}/users/tokens", json={"user_ids": [f"s-{u}" for u in users]}).json()["users"]
    svc.stop()
    differ = sum(got[f"c-{u}"] != want[f"s-{u}"] for u in users)
    return {
        "writers": writers,
        "requests (all writers)": conc.tried,
        "errors by class": conc.errors_by_class() or {},
        "users compared": len(users),
        "windows in the serial histories": sum(len(v) for v in want.values()),
        "users whose history differs from the serial writer's": differ,
        "serial writer errors": serial.errors_by_class() or {},
    }


def fuzz(artifacts, url, examples) -> dict:
    svc = ServiceProcess(artifacts, url, key_prefix="drill-fuzz")
    exe = shutil.which("schemathesis") or shutil.which("st")
    r = subprocess.run(
        [
            exe,
            "run",
            f"{svc.base}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            str(examples),
            "--request-timeout",
            "60",
            "--no-color",
        ],
        capture_output=True,
        text=True,
    )
    svc.stop()
    cases = re.search(r"(\d+) generated, (.*)", r.stdout)
    return {
        "operations tested": re.search(r"Tested: (\d+)", r.stdout).group(1),
        "test cases": cases.group(0) if cases else r.stdout[-300:],
        "server errors found": "none" if r.returncode == 0 else r.stdout[-1000:],
    }


@recorded
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--artifacts", default="artifacts/cj", type=Path)
    p.add_argument("--users", type=int, default=48)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--overload-clients", type=int, default=16)
    p.add_argument("--fuzz-examples", type=int, default=100)
    p.add_argument("--only", help="run only the scenario whose number is given, e.g. 3")
    args = p.parse_args()
    from u2qt.training.completejourney import load_events, sources_config
    from u2qt.training.events import keep_users, normalize_events

    sources = sources_config()
    events = keep_users(normalize_events(load_events(), sources), args.users, seed=1)
    by_user = requests_by_user_week(events, sources)
    users = sorted(by_user)
    print(
        f"command: python3 benchmarks/fault_drill.py --artifacts {args.artifacts} --users {args.users} "
        f"--seconds {args.seconds:g} --overload-clients {args.overload_clients} --fuzz-examples {args.fuzz_examples}"
    )
    print(f"{len(users)} real households, {sum(len(v) for v in by_user.values())} household-week requests")
    scenarios = {
        "1. Redis killed mid-load, restarted": lambda tmp, url: redis_kill(args.artifacts, by_user, users, tmp),
        "2. overload": lambda tmp, url: overload(
            args.artifacts, by_user, users, args.overload_clients, args.seconds, url
        ),
        "3. SIGTERM under load": lambda tmp, url: sigterm(args.artifacts, by_user, users, url),
        "4. concurrent writers": lambda tmp, url: concurrent_writers(args.artifacts, by_user, users[:12], url),
        "5. schemathesis": lambda tmp, url: fuzz(args.artifacts, url, args.fuzz_examples),
    }
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = RedisProcess(Path(tmp) / "main", durable=True).start()
        try:
            for name, run in scenarios.items():
                if args.only and not name.startswith(args.only):
                    continue
                report[name] = figures = run(Path(tmp), store.url)
                print(f"\n{name}", flush=True)
                for k, v in figures.items():
                    print(f"  {k}: {v}", flush=True)
        finally:
            store.kill()
    lost = sum(f.get("windows lost", 0) for f in report.values())
    print(f"\nwindows lost across scenarios: {lost}")
    sys.exit(1 if lost else 0)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
