"""TokenHistoryStore: the one interface to Redis, with one key layout.

Keys (a user's keys share the hash tag `{user}`, so they live in one Redis Cluster slot and the
multi-key scripts below stay legal there):

    {prefix}:{<user>}:h:<model_version>:<source>   LIST, one packed entry per window, oldest first
    {prefix}:{<user>}:e:<source>:<window_index>    HASH event_id -> event JSON, for windows still open
    {prefix}:{<user>}:n:<source>:<window_index>    STRING: how many events the stored tokens were built
                                                   from (open windows only)

Packed entry (little endian): uint32 window index, then one uint16 code per level (12 bytes for 4
tokens). The model version is part of the history key, so tokens of two model versions can never mix
in one history. Keys of open windows expire once no late event can reach them any more.

Every change to one (user, source) is one Lua script, so it is atomic without locks:
  INGEST  adds events (idempotent on event_id), rejects events of closed windows, and says whether the
          window must be (re)tokenized, returning its events if so;
  COMMIT  appends or replaces the window's entry unless one built from more events is already stored,
          trims the history to its cap and sets the TTL.
Concurrent writers therefore converge: the entry built from the most events wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson
from redis.asyncio import Redis

INGEST = """
local w = tonumber(ARGV[1])
local late = tonumber(ARGV[2])
local tail = redis.call('LRANGE', KEYS[1], -(late + 1), -1)
local closed = false
if #tail > 0 then
  local newest = struct.unpack('<I4', tail[#tail])
  if w < newest - late then closed = true end
end
local status, added = {}, 0
for i = 4, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1 then
    status[#status + 1] = 0
  elseif closed then
    status[#status + 1] = 2
  else
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    status[#status + 1] = 1
    added = added + 1
  end
end
if added > 0 then redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3])) end
local n = redis.call('HLEN', KEYS[2])
if closed or n == 0 then return {0, n, status, {}} end
local stored = tonumber(redis.call('GET', KEYS[3]) or '-1')
if stored >= n then return {0, n, status, {}} end
return {1, n, status, redis.call('HGETALL', KEYS[2])}
"""

COMMIT = """
local w, n = tonumber(ARGV[1]), tonumber(ARGV[2])
if tonumber(redis.call('GET', KEYS[2]) or '-1') > n then return 0 end
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
local placed = false
for j = #entries, 1, -1 do
  local ew = struct.unpack('<I4', entries[j])
  if ew == w then
    redis.call('LSET', KEYS[1], j - 1, ARGV[3])
    placed = true
    break
  end
  if ew < w then
    redis.call('LINSERT', KEYS[1], 'AFTER', entries[j], ARGV[3])
    placed = true
    break
  end
end
if not placed then redis.call('LPUSH', KEYS[1], ARGV[3]) end
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[4]), -1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
redis.call('SET', KEYS[2], n, 'EX', tonumber(ARGV[6]))
return 1
"""

# One command per user instead of one LRANGE per source: the read path is the hot one, and a client-side
# pipeline object costs more than the reads themselves.
READ = """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('LRANGE', KEYS[i], 0, -1) end
return out
"""

ACCEPTED, DUPLICATE, LATE = 1, 0, 2


@dataclass
class IngestResult:
    statuses: list[int]  # per event: ACCEPTED, DUPLICATE or LATE
    event_count: int  # events now stored for the window
    events: list[dict] | None  # all of the window's events when it must be (re)tokenized, else None


class TokenHistoryStore:
    def __init__(
        self,
        redis: Redis,
        prefix: str,
        model_version: str,
        levels: int,
        period_s: int,
        history_days: int,
        ttl_days: int,
        late_windows: int,
    ):
        self.redis, self.prefix, self.model_version = redis, prefix, model_version
        self.period_s, self.late_windows = period_s, late_windows
        self.entry = np.dtype([("window", "<u4"), ("codes", "<u2", (levels,))])
        self.max_entries = max(1, -(-history_days * 86400 // period_s))
        self.ttl_s = ttl_days * 86400
        # an open window's events are kept while late events may still arrive for it
        self.events_ttl_s = (late_windows + 2) * period_s
        self._ingest = redis.register_script(INGEST)
        self._commit = redis.register_script(COMMIT)
        self._read = redis.register_script(READ)

    def history_key(self, user: str, source: str) -> str:
        return f"{self.prefix}:{{{user}}}:h:{self.model_version}:{source}"

    def events_key(self, user: str, source: str, window: int) -> str:
        return f"{self.prefix}:{{{user}}}:e:{source}:{window}"

    def count_key(self, user: str, source: str, window: int) -> str:
        return f"{self.prefix}:{{{user}}}:n:{source}:{window}"

    async def ingest(self, groups: list[tuple[str, str, int, list[tuple[str, dict]]]]) -> list[IngestResult]:
        """groups: (user, source, window index, [(event_id, event)]) -> one result per group."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for user, source, window, events in groups:
                args = [window, self.late_windows, self.events_ttl_s]
                for event_id, event in events:
                    args += [event_id, orjson.dumps(event)]
                await self._ingest(
                    keys=[
                        self.history_key(user, source),
                        self.events_key(user, source, window),
                        self.count_key(user, source, window),
                    ],
                    args=args,
                    client=pipe,
                )
            replies = await pipe.execute()
        results = []
        for need, n, statuses, flat in replies:
            events = None
            if need:
                pairs = sorted(zip(flat[0::2], flat[1::2], strict=True))
                events = sorted(
                    (orjson.loads(v) | {"event_id": k.decode()} for k, v in pairs),
                    key=lambda e: (e["ts"], e["event_id"]),
                )
            results.append(IngestResult([int(s) for s in statuses], int(n), events))
        return results

    def pack(self, window: int, codes: np.ndarray) -> bytes:
        e = np.zeros(1, self.entry)
        e["window"], e["codes"] = window, codes
        return e.tobytes()

    async def commit(self, writes: list[tuple[str, str, int, int, np.ndarray]]) -> None:
        """writes: (user, source, window index, event count, codes [levels])."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for user, source, window, n, codes in writes:
                await self._commit(
                    keys=[self.history_key(user, source), self.count_key(user, source, window)],
                    args=[window, n, self.pack(window, codes), self.max_entries, self.ttl_s, self.events_ttl_s],
                    client=pipe,
                )
            await pipe.execute()

    async def read(self, users: list[str], sources: list[str]) -> dict[str, dict[str, np.ndarray]]:
        """-> {user: {source: structured array of entries (window, codes)}} in one round trip."""
        if len(users) == 1:
            replies = [await self._read(keys=[self.history_key(users[0], s) for s in sources])]
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for user in users:  # one script per user: its keys share a Redis Cluster slot
                    await self._read(keys=[self.history_key(user, s) for s in sources], client=pipe)
                replies = await pipe.execute()
        return {
            user: {s: np.frombuffer(b"".join(entries), self.entry) for s, entries in zip(sources, lists, strict=True)}
            for user, lists in zip(users, replies, strict=True)
        }
