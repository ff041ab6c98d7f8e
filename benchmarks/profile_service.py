"""Where the service's request path spends its time: py-spy samples of `u2qt serve` under POST or GET load.

    python3 benchmarks/profile_service.py --artifacts artifacts/cj [--providers cuda] [--seconds 12] [--load get]
        [--frontends 1]
    python3 benchmarks/profile_service.py --summarize profile.txt.gz

Starts redis-server and one service process (with `--frontends 1`: `u2qt serve` with U2QT_FRONTENDS=1, whose
own process is then the frontend and the models run in the engine process), drives it with 32 clients
(service_bench's load: one request per household-week of real events; wrk, or with --client python httpx
clients in 2 processes) or, with `--load get`, with read_bench's load (GET /users/{id}/tokens at 500
requests/s, Poisson arrivals, over 180-day histories of every household), records the service with
`py-spy record --threads -f raw` (py-spy from PyPI; active samples only), and prints each
thread's share of the samples and, for the event-loop thread, the share spent in the parts of the request
path. `--summarize` prints the same from a raw profile already recorded (`--out profile.txt.gz` keeps one).
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# part of the request path -> a frame (function, file) whose presence on the stack marks it; a function ending in
# "*" is a prefix (any method of that class)
POST_PARTS = {
    "/tokenize handler (the route function and EventTokenizer)": ("tokenize", "write_routes.py"),
    "  body decoded (msgspec: schemas.tokenize_events)": ("tokenize_events", "schemas.py"),
    "  INGEST or INGEST_COMMIT prepared, sent and its reply read (TokenHistoryStore.ingest_guessed)": (
        "TokenHistoryStore.ingest_guessed",
        "store.py",
    ),
    "  COMMIT of windows that held events (TokenHistoryStore.commit)": ("TokenHistoryStore.commit", "store.py"),
    "  windows rendered (EventTokenizer._job)": ("EventTokenizer._job", "ingest.py"),
    "  token metrics (EventTokenizer._observe)": ("EventTokenizer._observe", "ingest.py"),
    "Redis pipelines coalesced across requests (own task)": ("CoalescingPipeline._send", "coalescing.py"),
    "engine answers received (--frontends 1)": ("EngineConnection.data_received", "engine_client.py"),
    "socket writes (asyncio StreamWriter.writelines: Redis)": ("StreamWriter.writelines", "streams.py"),
    "request metrics middleware (RequestMetrics)": ("RequestMetrics.__call__", "middleware.py"),
    "Prometheus value updates in shared files (PROMETHEUS_MULTIPROC_DIR; --frontends 1)": (
        "MultiProcessValue.<locals>.MmapedValue.*",
        "values.py",
    ),
}
GET_PARTS = {
    "GET route function (user_tokens)": ("user_tokens", "read_routes.py"),
    "  path and query validated (pydantic)": ("parse_params", "http.py"),
    "  Redis read (TokenHistoryStore.read: command, reply, unpacking)": ("TokenHistoryStore.read", "store.py"),
    "  histories(): the Redis read above, then the history assembled as plain data": ("histories", "read_routes.py"),
    "  response serialized (orjson)": ("OrjsonResponse.render", "http.py"),
    "metrics middleware (RequestMetrics)": ("RequestMetrics.__call__", "middleware.py"),
}


def summarize(path: Path, seconds: float, rate: int, parts_of: dict = POST_PARTS) -> None:
    opener = gzip.open if path.suffix == ".gz" else open
    threads, parts, loop, idle = Counter(), Counter(), 0, 0
    with opener(path, "rt") as f:
        for line in f:
            stack, n = line.rsplit(" ", 1)
            frames = stack.split(";")
            thread = frames[0].split(": ", 1)[-1].rstrip(")").split("_")[0]
            threads[thread] += int(n)
            if thread != "MainThread":
                continue
            loop += int(n)
            idle += int(n) if frames[-1].startswith("Runner.run (") else 0  # in the loop's own (native) code
            for part, (func, file) in parts_of.items():
                head = func[:-1] if func.endswith("*") else func + " ("
                if any(fr.startswith(head) and f"{file}:" in fr for fr in frames[1:]):
                    parts[part] += int(n)
    possible = seconds * rate
    print(f"profile: {path} ({seconds:g} s at {rate} Hz = {possible:.0f} samples per thread if always active)")
    for thread, n in threads.most_common():
        print(f"thread {thread}: active in {n / possible:.1%} of the samples")
    print(f"event-loop thread (MainThread), share of its {loop} active samples:")
    for part in parts_of:
        print(f"  {parts[part] / loop:6.1%}  {part}")
    own = [p for p in parts_of if not p.startswith(" ") and p != next(iter(parts_of))]
    inside = parts[next(iter(parts_of))] + sum(parts[p] for p in own if "own task" in p)
    rest = "outside the handler and its own tasks (uvicorn, Starlette, FastAPI, middlewares, the loop)"
    print(f"  {1 - inside / loop:6.1%}  {rest}")
    print(f"  {idle / loop:6.1%}    of which the loop's own code (innermost frame Runner.run: uvloop, polling, I/O)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--artifacts", default="artifacts/cj", type=Path)
    p.add_argument("--providers", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seconds", type=float, default=12)
    p.add_argument("--rate", type=int, default=250)
    p.add_argument("--out", type=Path, default=Path("profile_service.txt"))
    p.add_argument("--summarize", type=Path, help="a raw py-spy profile to summarize instead of recording one")
    p.add_argument("--client", choices=["wrk", "python"], default="wrk" if shutil.which("wrk") else "python")
    p.add_argument("--load", choices=["post", "get"], default="post")
    p.add_argument(
        "--frontends", type=int, choices=[0, 1], default=0, help="1: the models in an engine process (U2QT_FRONTENDS)"
    )
    args = p.parse_args()
    parts_of = GET_PARTS if args.load == "get" else POST_PARTS
    if args.summarize:
        summarize(args.summarize, args.seconds, args.rate, parts_of)
        return
    if args.load == "get" and args.client != "wrk":
        sys.exit("profile_service: --load get needs wrk (apt-get install wrk)")

    from benchmarks.harness import RedisProcess, ServiceProcess
    from benchmarks.read_bench import fill, paced_reads
    from benchmarks.service_bench import post_load, post_load_wrk, requests_by_user_week

    print(
        f"command: python3 benchmarks/profile_service.py --artifacts {args.artifacts} --providers {args.providers} "
        f"--seconds {args.seconds:g} --rate {args.rate} --out {args.out} --client {args.client} --load {args.load} "
        f"--frontends {args.frontends}"
    )
    store = RedisProcess().start()
    if args.load == "get":
        import asyncio

        users, _ = asyncio.run(fill(store.url, args.artifacts, "profile"))
    else:
        payloads = requests_by_user_week(600)
    svc = ServiceProcess(
        args.artifacts,
        store.url,
        key_prefix="profile",
        max_queue_windows=100000,
        max_queue_delay_ms=0,
        providers=args.providers,
        frontends=args.frontends,
    )
    try:
        # py-spy writes plain text: record beside the target and gzip it after, when the target asks for .gz
        raw = args.out.with_suffix("") if args.out.suffix == ".gz" else args.out
        record = f"py-spy record -p {svc.process.pid} -d {args.seconds:g} -r {args.rate} --threads -f raw -o {raw}"
        # record from ~1 s into the load (post_load's clients start 2 s per client process after it is called)
        lead = 1 if args.client == "wrk" else 5
        spy = subprocess.Popen(["sh", "-c", f"sleep {lead}; exec {record}"], stdout=subprocess.DEVNULL)
        if args.load == "get":
            r = paced_reads(svc.base, users, 500, args.seconds + 2, 10)
        elif args.client == "wrk":
            r = post_load_wrk([svc.base], payloads, 32, args.seconds + 2)
        else:
            r = post_load([svc.base], payloads, 32, args.seconds + 3, 2)
        spy.wait()
        if raw != args.out:
            with open(raw, "rb") as src, gzip.open(args.out, "wb") as dst:
                shutil.copyfileobj(src, dst)
            raw.unlink()
    finally:
        svc.stop()
        store.kill()
    if args.load == "get":
        print(f"load while profiled: {r['rps']:.1f} GET/s, p99 {r['pct']['99']:.2f} ms ({os.cpu_count()} cores)")
    else:
        print(f"load while profiled: {r['windows_s']:.1f} windows/s, {r['requests']} requests ({os.cpu_count()} cores)")
    summarize(args.out, args.seconds, args.rate, parts_of)


if __name__ == "__main__":
    main()
