"""Redis memory per stored token at a full 180-day history, over many users.

    python3 benchmarks/redis_memory.py [--users 100000] [--days 180] [--levels 4] [--codebook-size 1024]

Starts its own redis-server, writes each user's history with the service's key layout and packed entry
format (TokenHistoryStore.history_key, PackedEntries.pack; daily windows, one source) and the per-user
metadata hash (engagement, history digest: TokenHistoryStore.meta_key), then reads INFO memory and
MEMORY USAGE. Prints bytes per token including every per-user overhead (key, list header, allocator).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import redis
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import RedisProcess, recorded  # noqa: E402
from u2qt.service.store import TokenHistoryStore  # noqa: E402


@recorded
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--days", type=int, default=180)
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--codebook-size", type=int, default=1024)
    args = p.parse_args()
    server = RedisProcess().start()  # no persistence: memory is what the dataset costs
    try:
        r = redis.Redis(port=server.port)
        store = TokenHistoryStore(
            r, "u2qt", "0b7848f0125f", args.levels, args.codebook_size, 86400, args.days, args.days, 1
        )
        rng = np.random.default_rng(0)
        base = r.info("memory")["used_memory"]
        first_day = 20_000
        pipe = r.pipeline(transaction=False)
        for u in tqdm(range(args.users), desc="write histories", unit="user"):
            codes = rng.integers(0, args.codebook_size, size=(args.days, args.levels))
            counts = rng.integers(1, 60, size=args.days)
            entries = store.entries.pack(first_day + np.arange(args.days), codes, counts)  # what COMMIT stores
            user = f"user-{u:09d}"
            pipe.rpush(store.history_key(user, "purchases"), *entries)
            pipe.expire(store.history_key(user, "purchases"), store.ttl_s)  # COMMIT sets a TTL on every history
            if u % 1000 == 999:
                pipe.execute()
        pipe.execute()
        lists = r.info("memory")["used_memory"] - base
        # then the per-user metadata the service keeps (engagement and history digest, as INGEST and STATE write)
        for u in tqdm(range(args.users), desc="write metadata", unit="user"):
            pipe.hset(store.meta_key(f"user-{u:09d}"), mapping={"x": int(rng.integers(1, 5000)), "d": f"{u:016x}"})
            pipe.expire(store.meta_key(f"user-{u:09d}"), store.ttl_s)
            if u % 1000 == 999:
                pipe.execute()
        pipe.execute()
        used = r.info("memory")["used_memory"] - base
        sample = [
            store.history_key(f"user-{u:09d}", "purchases") for u in range(0, args.users, max(1, args.users // 1000))
        ]
        per_key = np.mean([r.memory_usage(k, samples=0) for k in sample])
        tokens = args.users * args.days * args.levels
        print(
            f"command: python3 benchmarks/redis_memory.py --users {args.users} --days {args.days} "
            f"--levels {args.levels} --codebook-size {args.codebook_size}"
        )
        print(
            f"redis {r.info('server')['redis_version']}, entry = {store.entries.size} bytes "
            f"(3-byte window index, {args.levels} codes x {store.entries.bits} bits, 1-byte event count)"
        )
        print(f"users {args.users:,}, windows per user {args.days}, tokens {tokens:,}")
        print(
            f"INFO used_memory, history lists with TTLs: {lists / 2**20:.1f} MiB = {lists / tokens:.2f} bytes/token "
            f"({lists / args.users:.0f} bytes/user)"
        )
        print(
            f"INFO used_memory, plus the fallback metadata hash: {used / 2**20:.1f} MiB = {used / tokens:.2f} "
            f"bytes/token ({used / args.users:.0f} bytes/user; metadata {(used - lists) / args.users:.0f} bytes/user)"
        )
        print(
            f"MEMORY USAGE per history key (mean of {len(sample)}): {per_key:.0f} bytes = "
            f"{per_key / (args.days * args.levels):.2f} bytes/token"
        )
    finally:
        server.kill()


if __name__ == "__main__":
    main()
