"""CoalescingPipeline: the Redis commands that concurrent requests issue in one event-loop turn go out as one
pipeline (what ioredis calls auto-pipelining; redis-py has none).

Each POST /tokenize needs two round trips where its windows are new (INGEST_COMMIT, fallback re-filing) and three
where they held events (INGEST, COMMIT, fallback re-filing). Sent per request, each is a
redis-py pipeline whose fixed client-side cost is paid once per request and per step; queued here, the requests
that reach the same step together share it. They often do: the windows of one micro-batch finish in the same
turn, so their COMMITs travel together. Measured (benchmarks/redis_pipeline_cost.py, 32 concurrent requests
of two scripts each): 70 us of client CPU per request in its own pipeline, 20 us coalesced.
"""

from __future__ import annotations

import asyncio
import hashlib
from functools import cache

import hiredis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

_BODIES: dict[str, str] = {}  # SHA1 -> script body, of every script evalsha() has named


@cache
def _sha(script: str) -> str:
    sha = hashlib.sha1(script.encode()).hexdigest()
    _BODIES[sha] = script
    return sha


def evalsha(script: str, keys: list[str], args: list = ()) -> tuple:
    """A Lua script as an EVALSHA command: its 40-byte SHA1 on the wire instead of its body (kilobytes, which the
    client packs and writes and Redis hashes on every EVAL). A Redis that does not hold the script yet (first use,
    a restart, a new cluster node) answers NOSCRIPT, and the command goes again as EVAL with its body
    (CoalescingPipeline, run_script), which caches it there. redis-py's Script objects would instead send SCRIPT
    EXISTS before every pipeline: a round trip."""
    return ("EVALSHA", _sha(script), len(keys), *keys, *args)


def with_body(command: tuple) -> tuple:
    """An EVALSHA command as the EVAL of its script's body."""
    return ("EVAL", _BODIES[command[1]], *command[2:])


async def run_script(redis: Redis, command: tuple):
    """One evalsha() command on its own (no pipeline), sent again with its body if Redis does not hold it."""
    try:
        return await redis.execute_command(*command)
    except NoScriptError:
        return await redis.execute_command(*with_body(command))


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
            replies = await self._round_trip([command for commands, _ in batch for command in commands])
        except BaseException as e:  # noqa: BLE001 - connection lost, timeout or cancelled: every caller hears it
            for _, future in batch:
                if not future.done():
                    future.set_exception(
                        e if isinstance(e, Exception) else RedisConnectionError("redis pipeline cancelled")
                    )
            if not isinstance(e, Exception):
                raise
            return
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:  # scripts this Redis does not hold yet: sent again with their bodies, once
            flat = [command for commands, _ in batch for command in commands]
            try:
                again = await self._round_trip([with_body(flat[i]) for i in missing])
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
            except Exception as e:  # noqa: BLE001 - as above: every caller hears it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
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

    async def _round_trip(self, commands: list[tuple]) -> list:
        """-> each command's reply, or its error (ResponseError) in its place. On one Redis server: one pooled
        connection, written once with every command packed by hiredis (in C; redis-py's own packer encodes each
        argument in Python first, byte for byte the same result) and read reply by reply, retried by the
        connection's own retry policy as redis-py's pipeline retries it. A redis-py Pipeline object per round trip,
        with its packer, command stack, per-command response callbacks and operation telemetry, cost 1.56x the
        client CPU for the same replies (benchmarks/redis_pipeline_cost.py); none of these commands has a callback
        that changes its reply's meaning. A Redis Cluster goes through its pipeline, which routes each command to
        its slot's master."""
        if not isinstance(self.redis, Redis):
            async with self.redis.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                return await pipe.execute(raise_on_error=False)
        pool = self.redis.connection_pool
        connection = await pool.get_connection()

        async def attempt() -> list:
            await connection.send_packed_command(b"".join([hiredis.pack_command(c) for c in commands]))
            replies = []
            for _ in commands:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as e:
                    replies.append(e)
            return replies

        async def failed(_error) -> None:
            await connection.disconnect()

        try:
            return await connection.retry.call_with_retry(attempt, failed)
        except BaseException:
            # replies of the rest may still be on its socket: it must not go back to the pool as it is
            await connection.disconnect(nowait=True)
            raise
        finally:
            await pool.release(connection)
