"""GET /users/{id}/tokens latency at a fixed request rate, on 180-day histories of every Complete Journey household.

    python3 benchmarks/read_bench.py --artifacts artifacts/cj [--rate 500] [--seconds 20]

Histories: the tokens the training pipeline produced for every real window (TRAIN_DIR/windows.npz), written
with the service's own store and COMMIT script, capped at 180 days (26 weekly windows per source). Load: wrk
(a C load generator, Debian package `wrk`) with a Lua script that walks the users and paces each connection
so that all together offer `--rate` requests/s, in two arrival patterns alternated run by run (paced_reads):
Poisson (independent rankers) and lockstep (every connection at once, bursts); wrk reports latency
percentiles. The service runs as `u2qt serve` in its own process with its own redis-server; wrk shares the
machine's cores with both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import RedisProcess, ServiceProcess, recorded, wrk  # noqa: E402
from u2qt.model.manifest import Manifest  # noqa: E402
from u2qt.model.sources import window_index  # noqa: E402
from u2qt.service.settings import ServiceSettings  # noqa: E402
from u2qt.service.store import TokenHistoryStore  # noqa: E402

LUA = """
local users = {%s}
local mean, poisson = %d, %s
local i, count = 0, 0
function setup(thread)
  thread:set("id", count)
  count = count + 1
end
function init(args)
  math.randomseed(7919 * (id + 1))
  i = id * 997
end
request = function()
  i = i + 1
  return wrk.format("GET", "/users/" .. users[(i %% #users) + 1] .. "/tokens")
end
delay = function()
  if poisson then return -math.log(1 - math.random()) * mean end
  return mean
end
"""
ARRIVALS = ("poisson", "lockstep")


async def fill(url: str, artifacts: Path, prefix: str) -> tuple[list[str], float]:
    manifest = Manifest.load(artifacts)
    s = ServiceSettings(key_prefix=prefix)
    vocab = manifest.token_vocabulary()
    client = aioredis.from_url(url)
    store = TokenHistoryStore(
        client,
        prefix,
        manifest.model_version,
        vocab.levels,
        vocab.codebook_size,
        manifest.sources.period_s,
        s.history_days,
        s.ttl_days,
        s.late_windows,
    )
    with np.load(artifacts / "windows.npz") as npz:  # read each array once: NpzFile[...] re-reads the file
        z = {k: npz[k] for k in ("user_id", "source_index", "window_start", "codes")}
    names = [x.name for x in manifest.sources.sources]
    order = np.argsort(z["window_start"], kind="stable")
    writes = [
        (
            str(z["user_id"][i]),
            names[z["source_index"][i]],
            window_index(int(z["window_start"][i]), store.period_s),
            1,
            z["codes"][i],
        )
        for i in order
    ]
    for k in range(0, len(writes), 5000):
        await store.commit(writes[k : k + 5000], names)
    users = sorted({w[0] for w in writes})
    lengths = []
    for u in users[:200]:
        lengths.append(sum([await client.llen(store.history_key(u, n)) for n in names]))
    await client.aclose()
    return users, float(np.mean(lengths))


def paced_reads(
    base: str, users: list[str], rate: float, seconds: float, connections: int, arrivals: str = "poisson"
) -> dict:
    """`connections` wrk connections that together offer about `rate` requests/s. "poisson": each waits an
    exponential pause (mean: its share of the rate) before its next request, so together they arrive as many
    independent rankers do; "lockstep": each waits the same fixed pause, so the connections, started together,
    stay in step and their requests arrive in bursts of `connections` (the worst case of this load)."""
    delay_ms = max(0, round(connections * 1000 / rate) - 2)  # ~2 ms of each cycle is the request itself
    lua = LUA % (",".join(f'"{u}"' for u in users), delay_ms, str(arrivals == "poisson").lower())
    return wrk(base, lua, seconds, connections)


@recorded
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--artifacts", default="artifacts/cj", type=Path)
    p.add_argument("--rate", type=float, default=500)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--connections", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3, help="runs; the machine is noisy, so medians are reported")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("read_bench: needs wrk (apt-get install wrk)")
    store = RedisProcess().start()
    try:
        users, mean_windows = asyncio.run(fill(store.url, args.artifacts, "read"))
        svc = ServiceProcess(args.artifacts, store.url, key_prefix="read", ort_threads=1)
        try:
            paced_reads(svc.base, users, args.rate, 3, args.connections)  # warm-up
            runs = [
                (a, paced_reads(svc.base, users, args.rate, args.seconds, args.connections, a))
                for _ in range(args.repeat)
                for a in ARRIVALS
            ]
        finally:
            svc.stop()
    finally:
        store.kill()
    print(
        f"command: python3 benchmarks/read_bench.py --artifacts {args.artifacts} --rate {args.rate:g} "
        f"--seconds {args.seconds:g} --connections {args.connections}"
    )
    print(f"machine: {os.cpu_count()} cores; service (1 uvicorn process), redis-server and wrk on one machine")
    print(f"histories: {len(users)} users, mean {mean_windows:.1f} windows per user (180 days, 3 sources)")
    for i, (a, r) in enumerate(runs, 1):
        print(
            f"run {i}, {a:8s}: GET /users/{{id}}/tokens offered {args.rate:g} req/s -> achieved {r['rps']:.1f} req/s; "
            f"latency p50 {r['pct']['50']:.2f} ms, p90 {r['pct']['90']:.2f} ms, p99 {r['pct']['99']:.2f} ms; "
            f"non-2xx {r['non2xx']}"
        )
    for arrivals in ARRIVALS:
        mine = [r for a, r in runs if a == arrivals]
        med = {k: np.median([r["pct"][k] for r in mine]) for k in ("50", "99")}
        print(
            f"{arrivals} arrivals, median of {len(mine)} runs: {np.median([r['rps'] for r in mine]):.1f} req/s, "
            f"p50 {med['50']:.2f} ms, p99 {med['99']:.2f} ms (objective: p99 <= 5 ms at 500 req/s)"
        )


if __name__ == "__main__":
    main()
