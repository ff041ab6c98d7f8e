"""End-to-end service benchmark on real Complete Journey windows, measured side by side in one run.

    python3 benchmarks/service_bench.py --artifacts artifacts/cj [--clients 32] [--seconds 20]
        [--providers auto|cpu|cuda] [--max-batch 64] [--replicas 1] [--client wrk|python] [--client-procs 1]

1. raw limit: the service's own batch stages (tokenize + ONNX Runtime) on `--max-batch`-window batches, no
   HTTP/Redis;
2. POST /tokenize with `--clients` concurrent clients, micro-batching on (max_batch_size `--max-batch`);
3. the same load with batching off (max_batch_size 1);
4. GET /users/{id}/tokens at a fixed rate (default 500 req/s) over the users written, histories capped at
   180 days.
The service runs as `u2qt serve` in its own process against its own redis-server (`--replicas` such
processes sharing one Redis and, on a GPU, one GPU: what a deployment with several pods per node does; clients
spread over them). The POST clients are wrk connections (C, Debian package `wrk`; a closed loop, each posts its
next request when the last is answered) or, with `--client python`, httpx clients in `--client-procs`
processes, which cost the service's cores several times what wrk does. Either way they run on the same
machine. Medians of latencies; throughput = windows/s.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import harness  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    WRK_POST_LUA,
    RedisProcess,
    ServiceProcess,
    StageRun,
    batch_stage_throughput,
    cpu_by_thread,
    cpu_seconds,
    interleaved,
    metric_total,
    recorded,
    thread_groups,
    wrk,
)
from u2qt.model.manifest import Manifest  # noqa: E402
from u2qt.model.runtime import TokenizerRuntime  # noqa: E402
from u2qt.service.batcher import WindowJob  # noqa: E402
from u2qt.service.ingest import EventTokenizer  # noqa: E402
from u2qt.service.metrics import ServiceMetrics  # noqa: E402


def requests_by_user_week(max_users: int) -> list[list[dict]]:
    """One request per (household, week): that week's events of every source, as upstream would send them."""
    from u2qt.training.completejourney import load_events, sources_config
    from u2qt.training.events import normalize_events

    sources = sources_config()
    return interleaved(harness.requests_by_user_week(normalize_events(load_events(), sources), sources), max_users)


def window_jobs(manifest: Manifest, payloads: list[list[dict]]) -> list[WindowJob]:
    """The windows of `payloads` rendered as the service renders them (events as stored in Redis): a request's
    events of each source and window of the model's period."""
    from u2qt.model.sources import window_start
    from u2qt.service.schemas import EventIn

    tok = EventTokenizer(manifest, None, None, ServiceMetrics())  # renders windows into jobs; no store, no queue
    period = manifest.sources.period_s
    jobs: list[WindowJob] = []
    for p in payloads:
        groups: dict = {}
        for e in p:
            stored = tok._stored(EventIn(**e))
            groups.setdefault((e["source"], int(window_start(stored["ts"], period))), []).append(stored)
        jobs += [tok._job(src, evs) for (src, _), evs in groups.items()]
    return jobs


def raw_limit(artifacts: Path, payloads: list[list[dict]], seconds: float, providers: str, batch: int) -> StageRun:
    """The service's batch stages alone (render -> tokenize -> ONNX Runtime), `batch` per batch, split into
    encoder runs as the service splits them: windows/s and CPU per window."""
    manifest = Manifest.load(artifacts)
    rt = TokenizerRuntime(artifacts, manifest, providers=providers)
    return batch_stage_throughput(rt, window_jobs(manifest, payloads[:400]), batch, seconds)


class Replicas:
    """`n` service processes sharing one Redis, tuned for saturation: a queue that never refuses, no
    admission by expected wait."""

    def __init__(
        self, n: int, artifacts: Path, redis_url: str, prefix: str, max_batch: int, providers: str, frontends: int = 0
    ):
        self.services: list[ServiceProcess] = []
        try:
            for _ in range(n):  # all start at once, then all are waited for
                self.services.append(
                    ServiceProcess(
                        artifacts,
                        redis_url,
                        wait=False,
                        key_prefix=prefix,
                        max_batch_size=max_batch,
                        max_queue_windows=100000,
                        max_queue_delay_ms=0,
                        providers=providers,
                        frontends=frontends,
                    )
                )
            for s in self.services:
                s.wait_ready()
        except BaseException:
            self.stop()
            raise
        self.bases = [s.base for s in self.services]

    def stop(self) -> None:
        for s in self.services:
            s.stop()


async def post_clients(
    bases: list[str], payloads: list[list[dict]], clients: int, t_start: float, t_end: float
) -> dict:
    """`clients` concurrent clients (client i talks to replica i mod n) from wall time `t_start` to `t_end`."""
    it, lat, windows, errors = iter(payloads), [], 0, 0
    await asyncio.sleep(max(0.0, t_start - time.time()))

    async def client(c: httpx.AsyncClient, base: str):
        nonlocal windows, errors
        while time.time() < t_end:
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

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients)) as c:
        await asyncio.gather(*(client(c, bases[i % len(bases)]) for i in range(clients)))
    return {"windows": windows, "latencies": lat, "errors": errors, "end": time.time()}


def _client_process(args: tuple) -> dict:
    return asyncio.run(post_clients(*args))


def post_load(bases: list[str], payloads: list[list[dict]], clients: int, seconds: float, procs: int) -> dict:
    """Runs the clients in `procs` processes (one Python process tops out well below a GPU's rate), each with its
    share of clients and of the requests, all starting and stopping on the same wall clock."""
    t0 = time.time() + 2.0 * procs  # every process started before the clock runs
    t_end = t0 + seconds
    shares = [(bases, payloads[i::procs], clients // procs + (i < clients % procs), t0, t_end) for i in range(procs)]
    if procs == 1:
        parts = [_client_process(shares[0])]
    else:
        with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = list(pool.map(_client_process, shares))
    lat = np.concatenate([p["latencies"] for p in parts])
    wall = max(p["end"] for p in parts) - t0
    windows = sum(p["windows"] for p in parts)
    return {
        "windows_s": windows / wall,
        "p50": np.median(lat),
        "p99": np.quantile(lat, 0.99),
        "requests": len(lat),
        "errors": sum(p["errors"] for p in parts),
    }


def post_load_wrk(bases: list[str], payloads: list[list[dict]], clients: int, seconds: float) -> dict:
    """The same closed loop from wrk (C, on loopback): `clients` connections, each posting its next request as
    soon as the last is answered; one wrk per replica with its share of connections and of the requests.
    Windows/s from the services' own u2qt_windows_tokenized_total over wrk's run."""
    n = len(bases)
    files = []
    for i in range(n):
        f = tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False)  # noqa: SIM115
        f.write(b"\n".join(orjson.dumps({"events": p}) for p in payloads[i::n]) + b"\n")
        f.close()
        files.append((f.name, len(payloads[i::n])))
    before = sum(metric_total(b, "u2qt_windows_tokenized_total") for b in bases)

    def one(i: int) -> dict:
        conns = clients // n + (i < clients % n)
        threads = min(2, conns)
        return wrk(bases[i], WRK_POST_LUA, seconds, conns, threads, (files[i][0], threads))

    with ThreadPoolExecutor(n) as pool:
        runs = list(pool.map(one, range(n)))
    windows = sum(metric_total(b, "u2qt_windows_tokenized_total") for b in bases) - before
    for name, _ in files:
        os.unlink(name)
    requests = sum(r["requests"] for r in runs)
    return {
        "windows_s": windows / seconds,
        "p50": float(np.median([r["pct"]["50"] for r in runs])) / 1e3,
        "p99": max(r["pct"]["99"] for r in runs) / 1e3,
        "requests": requests,
        "errors": sum(r["non2xx"] for r in runs),
        "replayed": max(0, requests - sum(k for _, k in files)),
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


def cpu_by_process(svc: Replicas, store: RedisProcess) -> dict[str, float]:
    """CPU seconds used so far by the service processes, redis-server and the load generator (wrk, a child)."""
    return {
        "service": sum(cpu_seconds(s.process.pid) for s in svc.services),
        "redis-server": cpu_seconds(store.process.pid),
        "wrk": cpu_seconds(None),
    }


def batch_totals(bases: list[str]) -> tuple[float, float]:
    """(windows, batches) the services' micro-batcher has run so far."""
    return tuple(sum(metric_total(b, f"u2qt_batch_windows_{k}") for b in bases) for k in ("sum", "count"))


def by_thread(ms: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in sorted(ms.items(), key=lambda kv: -kv[1]) if v >= 0.005)


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True)
        return ", " + out.stdout.decode().strip()
    except OSError:
        return ""


@recorded
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--artifacts", default="artifacts/cj", type=Path)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--users", type=int, default=400)
    p.add_argument("--get-rate", type=float, default=500)
    p.add_argument("--providers", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--client-procs", type=int, default=1, help="--client python: processes of clients")
    p.add_argument(
        "--client",
        choices=["wrk", "python"],
        default="wrk" if shutil.which("wrk") else "python",
        help="POST load generator: wrk (C; default where installed) or httpx clients in Python processes",
    )
    args = p.parse_args()

    def post(bases: list[str]) -> dict:
        if args.client == "wrk":
            return post_load_wrk(bases, payloads, args.clients, args.seconds)
        return post_load(bases, payloads, args.clients, args.seconds, args.client_procs)

    payloads = requests_by_user_week(args.users)
    store = RedisProcess().start()
    url = store.url
    try:
        stages = raw_limit(args.artifacts, payloads, args.seconds, args.providers, args.max_batch)
        raw = stages.windows_s
        svc = Replicas(args.replicas, args.artifacts, url, "bench-batched", args.max_batch, args.providers)
        try:
            cpu0, threads0 = cpu_by_process(svc, store), cpu_by_thread(svc.services[0].process.pid)
            batches0 = batch_totals(svc.bases)
            batched = post(svc.bases)
            cpu1, threads1 = cpu_by_process(svc, store), cpu_by_thread(svc.services[0].process.pid)
            batches1 = batch_totals(svc.bases)
            # read while the service still runs: thread names come from a py-spy dump of the live process
            service_threads = thread_groups(svc.services[0].process.pid, threads0, threads1)
            users = sorted({e["user_id"] for pl in payloads for e in pl})
            if args.client == "wrk":
                from benchmarks.read_bench import paced_reads

                r = paced_reads(svc.bases[0], users, args.get_rate, args.seconds / 2, 10)
                reads = {"rate": r["rps"], "p50": r["pct"]["50"] / 1e3, "p99": r["pct"]["99"] / 1e3}
                reads["errors"] = r["non2xx"]
            else:
                reads = asyncio.run(get_load(svc.bases[0], users, args.get_rate, args.seconds / 2))
            hist = httpx.get(f"{svc.bases[0]}/users/{users[0]}/tokens").json()["windows"]
        finally:
            svc.stop()
        svc = Replicas(args.replicas, args.artifacts, url, "bench-unbatched", 1, args.providers)
        try:
            unbatched = post(svc.bases)
        finally:
            svc.stop()
    finally:
        store.kill()
    print(
        f"command: python3 benchmarks/service_bench.py --artifacts {args.artifacts} --clients {args.clients} "
        f"--seconds {args.seconds:g} --users {args.users} --get-rate {args.get_rate:g} --providers "
        f"{args.providers} --max-batch {args.max_batch} --replicas {args.replicas} --client {args.client}"
        + (f" --client-procs {args.client_procs}" if args.client == "python" else "")
    )
    rt = TokenizerRuntime(args.artifacts, providers=args.providers)
    clients = "wrk" if args.client == "wrk" else f"{args.client_procs} Python process(es), httpx"
    print(
        f"machine: {os.cpu_count()} cores{gpu_name() if rt.on_gpu else ''}; {args.replicas} service process(es), "
        f"redis-server and the clients ({clients}) on one machine; providers {rt.providers[0]}"
    )
    print(f"raw batched ONNX Runtime, {args.max_batch} per batch (no HTTP, no Redis): {raw:8.1f} windows/s")
    for name, r in (("POST /tokenize, batching on ", batched), ("POST /tokenize, batching off", unbatched)):
        print(
            f"{name}: {r['windows_s']:8.1f} windows/s  p50 {r['p50'] * 1e3:7.1f} ms  p99 {r['p99'] * 1e3:7.1f} ms"
            f"  ({r['requests']} requests, {r['errors']} errors"
            + (f", {r['replayed']} replays of requests already sent" if r.get("replayed") else "")
            + ")"
        )
    if args.client == "wrk":  # CPU time per window tokenized, by process: where the cores went
        per = {k: (cpu1[k] - cpu0[k]) * 1e3 / (batched["windows_s"] * args.seconds) for k in cpu0}
        print(
            f"CPU per window, batching on (ms, all cores): {', '.join(f'{k} {v:.2f}' for k, v in per.items())}, "
            f"total {sum(per.values()):.2f}; the raw batch stages alone {stages.cpu_ms_per_window:.2f}"
        )
        # by thread: what the request path (event loop) costs beside the stages that the raw figure also runs
        ms = 1e3 / (batched["windows_s"] * args.seconds / args.replicas)
        print("  by thread (ms per window): service " + by_thread({k: v * ms for k, v in service_threads.items()}))
        print("  by thread (ms per window): raw stages " + by_thread(stages.cpu_ms_by_thread))
        mean = (batches1[0] - batches0[0]) / max(batches1[1] - batches0[1], 1)
        print(f"  windows per inference batch: service {mean:.1f} (mean), raw stages {args.max_batch}")
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
