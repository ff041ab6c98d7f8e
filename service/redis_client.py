"""The Redis client the service and `u2qt batch` use: one standalone server, or a Redis Cluster.

`redis+cluster://host:port` (any one node), or any URL with U2QT_REDIS_CLUSTER=1, gives redis-py's RedisCluster,
which discovers the other masters and sends each command to the one that owns its key's hash slot. Every script
of the store (store.py) touches one user's keys only, and those share the hash tag `{user}`, so each runs on one
master; the collision sets (`:fb:`) are only ever touched by single-key commands.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

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
