"""CoalescingPipeline: the Redis commands that concurrent requests issue in one event-loop turn go out as one
pipeline (what ioredis calls auto-pipelining; redis-py has none).

Each POST /tokenize needs three round trips (INGEST, COMMIT, fallback re-filing). Sent per request, each is a
redis-py pipeline whose fixed client-side cost is paid once per request and per step; queued here, the requests
that reach the same step together share it. They often do: the windows of one micro-batch finish in the same
turn, so their COMMITs travel together. Measured (benchmarks/redis_pipeline_cost.py, 32 concurrent requests
of two scripts each): 133 us of client CPU per request in its own pipeline, 44 us coalesced.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError


class CoalescingPipeline:
    def __init__(self, redis: Redis):
        self.redis = redis
        self._queued: list[tuple[list[tuple], asyncio.Future]] = []
        self._sending: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones

    async def execute(self, commands: list[tuple]) -> list:
        """-> the replies of `commands`, in order. Raises the first error among them (a failed connection fails
        every caller of that pipeline); the others' commands ran all the same, as in any pipeline."""
        if not commands:
            return []
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._queued:  # the first caller of this turn sends, after every caller already woken in it
            loop.call_soon(self._flush)
        self._queued.append((commands, future))
        return await future

    def _flush(self) -> None:
        batch, self._queued = self._queued, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[list[tuple], asyncio.Future]]) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for commands, _ in batch:
                    for command in commands:
                        pipe.execute_command(*command)
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as e:  # noqa: BLE001 - connection lost, timeout or cancelled: every caller hears it
            for _, future in batch:
                if not future.done():
                    future.set_exception(
                        e if isinstance(e, Exception) else RedisConnectionError("redis pipeline cancelled")
                    )
            if not isinstance(e, Exception):
                raise
            return
        at = 0
        for commands, future in batch:
            mine, at = replies[at : at + len(commands)], at + len(commands)
            if future.done():  # its request was cancelled; its commands ran all the same
                continue
            error = next((r for r in mine if isinstance(r, Exception)), None)
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(mine)
