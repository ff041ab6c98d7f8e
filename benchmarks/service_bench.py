"""End-to-end service benchmark on real Complete Journey windows, measured side by side in one run.

    python3 benchmarks/service_bench.py --artifacts artifacts/cj [--clients 32] [--seconds 20]

1. raw limit: the service's own batch stages (tokenize + ONNX Runtime) on 64-window batches, no HTTP/Redis;
2. POST /tokenize with `--clients` concurrent clients, micro-batching on (max_batch_size 64);
3. the same load with batching off (max_batch_size 1);
4. GET /users/{id}/tokens at a fixed rate (default 500 req/s) over the users written, histories capped at
   180 days.
The service runs as `u2qt serve` in its own process against its own redis-server; clients share this
machine, so figures are for a 2-core box running both. Medians of latencies; throughput = windows/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import RedisProcess, ServiceProcess  # noqa: E402
from model.manifest import Manifest  # noqa: E402
from model.runtime import TokenizerRuntime  # noqa: E402
from service.batcher import MicroBatcher, WindowJob  # noqa: E402
from service.ingest import EventTokenizer  # noqa: E402
from service.metrics import ServiceMetrics  # noqa: E402


def requests_by_user_week(max_users: int) -> list[list[dict]]:
    """One request per (household, week): that week's events of every source, as upstream would send them."""
    from training.completejourney import load_events, sources_config
    from training.events import normalize_events, to_service_events

    sources = sources_config()
    ev = normalize_events(load_events(), sources)
    users = np.sort(ev["user_id"].unique())[:max_users]
    ev = ev[ev["user_id"].isin(set(users))].sort_values("ts")
    ev["week"] = ((ev["ts"] - 4 * 86400) // (7 * 86400)).astype(int)
    return [to_service_events(g, sources) for _, g in ev.groupby(["week", "user_id"], sort=True)]


def raw_limit(artifacts: Path, payloads: list[list[dict]], seconds: float) -> float:
    """Windows/s of the service's batch stages alone (render -> tokenize -> ONNX Runtime), 64 per batch."""
    from service.schemas import EventIn

    manifest = Manifest.load(artifacts)
    rt = TokenizerRuntime(artifacts, manifest, providers="auto")
    batcher = MicroBatcher(rt, ServiceMetrics(), 64)
    tok = EventTokenizer(manifest, None, batcher, ServiceMetrics())
    jobs: list[WindowJob] = []
    for p in payloads[:400]:
        groups: dict = {}
        for e in p:
            groups.setdefault(e["source"], []).append(tok._stored(EventIn(**e)))  # as stored in Redis
        jobs += [tok._job(src, evs) for src, evs in groups.items()]
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for s in range(0, len(jobs), 64):
            batch = jobs[s : s + 64]
            batcher._run(batcher._tokenize(batch))
            done += len(batch)
            if time.perf_counter() - t0 >= seconds:
                break
    return done / (time.perf_counter() - t0)


def saturation_service(artifacts: Path, redis_url: str, prefix: str, max_batch: int) -> ServiceProcess:
    # saturation throughput: a queue that never refuses, no admission by expected wait
    return ServiceProcess(
        artifacts,
        redis_url,
        key_prefix=prefix,
        max_batch_size=max_batch,
        max_queue_windows=100000,
        max_queue_delay_ms=0,
    )


async def post_load(base: str, payloads: list[list[dict]], clients: int, seconds: float) -> dict:
    it, lat, windows, errors = iter(payloads), [], 0, 0
    t_end = time.perf_counter() + seconds

    async def client(c: httpx.AsyncClient):
        nonlocal windows, errors
        while time.perf_counter() < t_end:
            p = next(it, None)
            if p is None:
                return
            t = time.perf_counter()
            r = await c.post(f"{base}/tokenize", json={"events": p})
            lat.append(time.perf_counter() - t)
            if r.status_code == 200:
                windows += len(r.json()["windows"])
            else:
                errors += 1

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients)) as c:
        await asyncio.gather(*(client(c) for _ in range(clients)))
    wall = time.perf_counter() - t0
    return {
        "windows_s": windows / wall,
        "p50": np.median(lat),
        "p99": np.quantile(lat, 0.99),
        "requests": len(lat),
        "errors": errors,
    }


async def get_load(base: str, users: list[str], rate: float, seconds: float) -> dict:
    lat, errors, tasks = [], 0, []

    async def one(c, u):
        nonlocal errors
        t = time.perf_counter()
        r = await c.get(f"{base}/users/{u}/tokens")
        lat.append(time.perf_counter() - t)
        errors += r.status_code != 200

    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=64)) as c:
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            due = t0 + n / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(one(c, users[n % len(users)])))
            n += 1
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    return {"rate": len(lat) / wall, "p50": np.median(lat), "p99": np.quantile(lat, 0.99), "errors": errors}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--artifacts", default="artifacts/cj", type=Path)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--users", type=int, default=400)
    p.add_argument("--get-rate", type=float, default=500)
    args = p.parse_args()
    payloads = requests_by_user_week(args.users)
    store = RedisProcess().start()
    url = store.url
    try:
        raw = raw_limit(args.artifacts, payloads, args.seconds)
        svc = saturation_service(args.artifacts, url, "bench-batched", 64)
        try:
            batched = asyncio.run(post_load(svc.base, payloads, args.clients, args.seconds))
            users = sorted({e["user_id"] for pl in payloads for e in pl})
            reads = asyncio.run(get_load(svc.base, users, args.get_rate, args.seconds / 2))
            hist = httpx.get(f"{svc.base}/users/{users[0]}/tokens").json()["windows"]
        finally:
            svc.stop()
        svc = saturation_service(args.artifacts, url, "bench-unbatched", 1)
        try:
            unbatched = asyncio.run(post_load(svc.base, payloads, args.clients, args.seconds))
        finally:
            svc.stop()
    finally:
        store.kill()
    print(
        f"command: python3 benchmarks/service_bench.py --artifacts {args.artifacts} --clients {args.clients} "
        f"--seconds {args.seconds:g} --users {args.users} --get-rate {args.get_rate:g}"
    )
    print(
        f"machine: {os.cpu_count()} cores; service, redis-server and clients on one machine; "
        f"providers {TokenizerRuntime(args.artifacts, providers='auto').providers[0]}"
    )
    print(f"raw batched ONNX Runtime (no HTTP, no Redis): {raw:8.1f} windows/s")
    for name, r in (("POST /tokenize, batching on ", batched), ("POST /tokenize, batching off", unbatched)):
        print(
            f"{name}: {r['windows_s']:8.1f} windows/s  p50 {r['p50'] * 1e3:7.1f} ms  p99 {r['p99'] * 1e3:7.1f} ms"
            f"  ({r['requests']} requests, {r['errors']} errors)"
        )
    print(
        f"end-to-end / raw limit: {batched['windows_s'] / raw:.2f}   batching on / off: "
        f"{batched['windows_s'] / unbatched['windows_s']:.2f}x"
    )
    print(
        f"GET /users/{{id}}/tokens at {reads['rate']:.0f} req/s over {len(users)} users: p50 "
        f"{reads['p50'] * 1e3:.2f} ms  p99 {reads['p99'] * 1e3:.2f} ms  ({reads['errors']} errors; "
        f"e.g. {len(hist)} windows in a history)"
    )


if __name__ == "__main__":
    main()
