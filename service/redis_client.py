"""The Redis client the service and `u2qt batch` use: one standalone server, or a Redis Cluster.

`redis+cluster://host:port` (any one node), or any URL with U2QT_REDIS_CLUSTER=1, gives redis-py's RedisCluster,
which discovers the other masters and sends each command to the one that owns its key's hash slot. Every script
of the store (store.py) touches one user's keys only, and those share the hash tag `{user}`, so each runs on one
master; the collision sets (`:fb:`) are only ever touched by single-key commands.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoPermissionError

ALLOW_EVICTION = "U2QT_REDIS_ALLOW_EVICTION"

CLUSTER_SCHEME = "redis+cluster://"


def is_cluster(url: str, cluster: bool = False) -> bool:
    return cluster or url.startswith(CLUSTER_SCHEME)


def connect(
    url: str, cluster: bool = False, max_connections: int = 256, pool_timeout_s: float = 5.0
) -> aioredis.Redis | RedisCluster:
    """A client for `url`. Standalone: a blocking pool, so a request waits for a free connection (a burst of reads
    is load, not an outage). Cluster: `max_connections` per master."""
    timeouts = dict(socket_timeout=2.0, socket_connect_timeout=2.0)
    if is_cluster(url, cluster):
        if url.startswith(CLUSTER_SCHEME):
            url = "redis://" + url[len(CLUSTER_SCHEME) :]
        return RedisCluster.from_url(url, max_connections=max_connections, **timeouts)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=pool_timeout_s, health_check_interval=10, **timeouts
    )
    return aioredis.Redis(connection_pool=pool)


async def evicting_masters(client: aioredis.Redis | RedisCluster) -> list[str] | None:
    """The masters that may evict the store's keys: a `maxmemory` with any `maxmemory-policy` but `noeviction`;
    None when the Redis user may not run INFO (an ACL), so nobody can tell.
    Every key the service writes has a TTL, so the volatile-* policies (a managed Redis' usual default) may drop
    them too, and an eviction is silent: the writes before it answered OK, and a history or an open window's events
    are simply gone. Read from INFO, which managed services serve where they disable CONFIG."""
    try:
        if isinstance(client, RedisCluster):
            await client.initialize()
            nodes = [(n.name, await client.info("memory", target_nodes=n)) for n in client.get_primaries()]
        else:
            nodes = [("redis", await client.info("memory"))]
    except NoPermissionError:
        return None
    return [
        f"{name}: maxmemory {info['maxmemory']} bytes, maxmemory-policy {info['maxmemory_policy']}"
        for name, info in nodes
        if int(info.get("maxmemory", 0)) > 0 and info.get("maxmemory_policy", "noeviction") != "noeviction"
    ]


class EvictingRedis(ValueError):
    """The Redis may evict the store's keys (a ValueError: the CLI prints it as one line)."""


def check_eviction(url: str | None, cluster: bool, allow: bool) -> None:
    """Raises EvictingRedis when the Redis at `url` may evict keys, unless `allow`; before `u2qt serve` and
    `u2qt batch` write anything. A Redis that does not answer yet is not judged here: the service starts and
    /readyz judges it once it answers; the batch job fails on its own first write."""
    if not url or allow:
        return
    import asyncio
    import sys

    from redis.exceptions import RedisError

    async def masters() -> list[str] | None:
        client = connect(url, cluster, 4)
        try:
            return await asyncio.wait_for(evicting_masters(client), 5.0)
        finally:
            await client.aclose()

    try:
        evicting = asyncio.run(masters())
    except (RedisError, OSError, TimeoutError):
        return
    if evicting is None:
        print(
            "u2qt: this Redis user may not run INFO, so its maxmemory-policy is unknown: make sure it is noeviction "
            "(any other policy may drop histories without an error)",
            file=sys.stderr,
            flush=True,
        )
    elif evicting:
        raise EvictingRedis(eviction_refusal(evicting))


def eviction_refusal(masters: list[str]) -> str:
    return (
        f"this Redis may evict u2qt's keys ({'; '.join(masters)}): accepted events and stored histories would be "
        f"lost without an error. Set maxmemory-policy noeviction (writes then get 503 when Redis is full), or "
        f"{ALLOW_EVICTION}=1 if losing histories is acceptable to you"
    )
