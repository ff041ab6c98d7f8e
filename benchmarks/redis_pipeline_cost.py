"""What a redis-py pipeline costs the service's event loop, and what coalescing concurrent requests saves.

    python3 benchmarks/redis_pipeline_cost.py [--requests 4000] [--concurrency 32] [--repeat 5]

Against its own redis-server: `--concurrency` tasks, each standing for a request that sends two small scripts
(the shape of INGEST or COMMIT for one user-week), either as its own pipeline (what the service did) or through
service.coalescing.CoalescingPipeline (what it does), whose round trips are packed by hiredis and written to a
pooled connection directly; beside it the same coalescing with a redis-py Pipeline object per round trip. Also the
cost of one pipeline by its size, one at a time. Client CPU time is what matters on the service's loop; wall time
is printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import RedisProcess, recorded  # noqa: E402
from u2qt.service.coalescing import CoalescingPipeline  # noqa: E402

SCRIPT = "redis.call('SET', KEYS[1], ARGV[1]) return redis.call('GET', KEYS[1])"


def commands(i: int) -> list[tuple]:
    return [("EVAL", SCRIPT, 1, f"k{i}:{j}", "x" * 60) for j in range(2)]


async def per_request(client, n: int, concurrency: int) -> None:
    async def one(i):
        async with client.pipeline(transaction=False) as pipe:
            for c in commands(i):
                pipe.execute_command(*c)
            await pipe.execute()

    await run(n, concurrency, one)


async def coalesced(client, n: int, concurrency: int) -> None:
    pipeline = CoalescingPipeline(client)
    await run(n, concurrency, lambda i: pipeline.execute(commands(i)))


class PipelineObjectCoalescing(CoalescingPipeline):
    """CoalescingPipeline with a redis-py Pipeline per round trip, as it sent them before."""

    async def _round_trip(self, commands: list[tuple]) -> list:
        async with self.redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute(raise_on_error=False)


async def coalesced_pipeline_objects(client, n: int, concurrency: int) -> None:
    pipeline = PipelineObjectCoalescing(client)
    await run(n, concurrency, lambda i: pipeline.execute(commands(i)))


async def run(n: int, concurrency: int, one) -> None:
    it = iter(range(n))

    async def worker():
        for i in it:
            await one(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def timed(fn, client, n: int, concurrency: int) -> tuple[float, float]:
    """-> (client CPU us per request, wall us per request)"""
    c0, w0 = time.process_time(), time.perf_counter()
    await fn(client, n, concurrency)
    return (time.process_time() - c0) / n * 1e6, (time.perf_counter() - w0) / n * 1e6


async def main(args) -> None:
    store = RedisProcess().start()
    try:
        client = aioredis.from_url(store.url, max_connections=args.concurrency + 4)
        await timed(per_request, client, 500, args.concurrency)  # warm-up: connections, script cache
        await timed(coalesced, client, 500, args.concurrency)
        variants = {
            "per-request pipelines": per_request,
            "coalesced": coalesced,
            "coalesced, Pipeline objects": coalesced_pipeline_objects,
        }
        res = {name: [] for name in variants}
        for _ in range(args.repeat):  # alternated, so drift on a noisy machine hits both alike
            for name, fn in variants.items():
                res[name].append(await timed(fn, client, args.requests, args.concurrency))
        sizes = {}
        for size in (1, 2, 8, 32, 128):
            t0, m = time.process_time(), max(20, 2000 // size)
            for k in range(m):
                async with client.pipeline(transaction=False) as pipe:
                    for j in range(size):
                        pipe.execute_command("EVAL", SCRIPT, 1, f"s{k}:{j}", "x" * 60)
                    await pipe.execute()
            sizes[size] = (time.process_time() - t0) / m * 1e6
        await client.aclose()
    finally:
        store.kill()
    print(
        f"command: python3 benchmarks/redis_pipeline_cost.py --requests {args.requests} "
        f"--concurrency {args.concurrency} --repeat {args.repeat}"
    )
    print(f"{args.concurrency} concurrent requests, 2 scripts each; medians of {args.repeat} alternated runs:")
    med = {k: np.median(np.array(v), axis=0) for k, v in res.items()}
    for name, (cpu, wall) in med.items():
        print(f"  {name:28s} client CPU {cpu:6.1f} us/request   wall {wall:6.1f} us/request")
    print(f"  coalesced / per-request client CPU: {med['coalesced'][0] / med['per-request pipelines'][0]:.2f}")
    ratio = med["coalesced"][0] / med["coalesced, Pipeline objects"][0]
    print(f"  coalesced, connection written directly / with Pipeline objects, client CPU: {ratio:.2f}")
    print("one pipeline at a time, client CPU by size: " + ", ".join(f"{s}: {v:.0f} us" for s, v in sizes.items()))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--repeat", type=int, default=5)
    recorded(lambda args: asyncio.run(main(args)))(p.parse_args())
