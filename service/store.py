"""TokenHistoryStore: the one interface to Redis, with one key layout.

Keys (a user's keys share the hash tag `{user}`, so they live in one Redis Cluster slot and the
multi-key scripts below stay legal there):

    {prefix}:{<user>}:c:<model_version>:<source>   LIST, one packed entry per window, oldest first
    {prefix}:{<user>}:e:<model_version>:<source>:<window_index>
                                                   HASH, for windows still open: event_id -> event JSON, and
                                                   the field "" (no event id is empty) = how many events the
                                                   stored entry was built from
    {prefix}:{<user>}:m:<model_version>            HASH: x = events accepted (engagement), d = digest of the
                                                   whole history (all sources; 64 bits of sha1), f = the
                                                   fallback index, only while another user collides
    {prefix}:fb:<model_version>:<digest>           ZSET: users whose histories have this digest, scored by
                                                   -engagement (the only key not in a user's slot)

Packed entry (PackedEntries): the window index in 3 bytes (little endian), then the levels' codes in
ceil(log2(codebook size)) bits each, most significant bit first, zero-padded to a whole byte, then the number of
events the tokens were built from (one byte): 9 bytes for 4 codes of a 1024-entry codebook. Every
key but the collision sets' names the model version, so two versions never share a history, an event set or a
count: a new version's histories are built beside the old ones from the same events (docs/operations.md,
"Upgrading the model"). The history key's `c` names this entry format (`t` held a 4-byte window index and no count),
so a history written in another format is never misread.

A window accepts events while it is open: no more than `late_windows` windows older than the newest window
stored for that user and source (event time, so a backfill in time order works), and while its event set
lives. The event set expires `(late_windows + 2)` window periods of wall-clock time after its last change; a
window whose entry is stored but whose event set has expired can no longer be rebuilt, so it is closed too:
an event for it (a replay included) is refused as late and the stored entry stays as it is. A window's events
and the count of events its entry was built from live and die together in one key (the event set), so a replay
can never replace an entry with one built from fewer events.

Every change to one user is one Lua script, so it is atomic without locks, and a request that touches several
of a user's windows (a household's week: one per source) costs one script per step, not one per window:
  INGEST  adds events (idempotent on event_id), refuses events of closed windows and events past the
          per-window cap, and says for each window whether it must be (re)tokenized, returning its events if so;
  COMMIT  appends or replaces each window's entry unless one built from more events is stored (or the window's
          entry is stored and its event set has expired),
          trims the history to its cap, sets the TTL, and then re-hashes the user's whole history (every
          source) once into the metadata's digest, in the same atomic step, for the collision fallback.
  INGEST_COMMIT  INGEST, then COMMIT of the windows the caller tokenized from its own events before knowing
          whether they were new, for those whose event set now holds exactly those events: a new window is
          ingested and stored in one round trip.
Concurrent writers therefore converge: the entry built from the most events wins. Commands go out through
one CoalescingPipeline, so concurrent requests at the same step share a round trip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson
from redis.asyncio import Redis

from u2qt.model.entries import PackedEntries
from u2qt.model.sources import windows_in
from u2qt.service.coalescing import CoalescingPipeline, evalsha, run_script

# One call per user: KEYS = for each of the user's (source, window) groups its history and its event set, then the
# user's metadata; ARGV = late windows, event-set TTL, history TTL, events per window cap, then for each group its
# window index, its number of events m and m (event_id, event) pairs.
# -> per group {must (re)tokenize, events now stored, per-event statuses, all its events when it must, newest
# window stored}. Statuses: 0 duplicate, 1 accepted, 2 window closed, 3 window full, 4 window's event set expired.
INGEST_STEPS = """
local late, ettl, ttl, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local meta = KEYS[#KEYS]
local out, engaged, a = {}, 0, 5
for g = 0, (#KEYS - 1) / 2 - 1 do
  local hist, evs = KEYS[2 * g + 1], KEYS[2 * g + 2]
  local w, m = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  local tail = redis.call('LRANGE', hist, -(late + 1), -1)
  local refuse, newest, stored = nil, -1, false
  for j = 1, #tail do
    local ew = struct.unpack('<I3', tail[j])
    if ew == w then stored = true end
    newest = ew
  end
  local known = redis.call('EXISTS', evs) == 1
  if newest >= 0 and w < newest - late then
    refuse = 2
  elseif stored and not known then
    refuse = 4
  end
  local n = 0
  if known then n = redis.call('HLEN', evs) - redis.call('HEXISTS', evs, '') end
  local status, added = {}, 0
  for i = a, a + 2 * m - 1, 2 do
    if (known or added > 0) and redis.call('HEXISTS', evs, ARGV[i]) == 1 then
      status[#status + 1] = 0
    elseif refuse then
      status[#status + 1] = refuse
    elseif n >= cap then
      status[#status + 1] = 3
    else
      redis.call('HSET', evs, ARGV[i], ARGV[i + 1])
      status[#status + 1] = 1
      added = added + 1
      n = n + 1
    end
  end
  a = a + 2 * m
  if added > 0 then redis.call('EXPIRE', evs, ettl) end
  engaged = engaged + added
  local result = {0, n, status, {}, newest}
  if not refuse and n > 0 and tonumber(redis.call('HGET', evs, '') or '-1') < n then
    result = {1, n, status, redis.call('HGETALL', evs), newest}
  end
  out[#out + 1] = result
end
if engaged > 0 then
  redis.call('HINCRBY', meta, 'x', engaged)
  redis.call('EXPIRE', meta, ttl)
end
return out
"""

# One call per user: KEYS = the metadata, every source's history (in the order of `sources`), then each write's
# event set; ARGV = history cap, history TTL, event-set TTL, whether the writer is `u2qt batch` (1: its events
# never pass INGEST, so a window it adds counts its events once as engagement, and it opens no event set: a window
# it writes is closed to the stream unless the stream had opened it; 0: the online path), then for each write its
# source's position among the histories (1-based), window index, event count and packed entry. A write applies
# when its window's event set holds no count above the write's, or, with no event set, when the window has no
# entry yet (an entry whose event set has expired is final).
# -> {writes applied, digest after, digest before, engagement, has a fallback index}. The digest is the collision
# fallback's key (paper eq. 9, model/fallback.py: history_digest, the entries without their event counts),
# hashed once per call over the user's whole history: users with
# the same digest share a sorted set scored by -engagement, whose order (engagement desc, then user id, Redis's
# tie order) is the fallback order.
COMMIT_STEPS = """
local cap, ttl, ettl, counting = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1'
local writes = (#ARGV - 4) / 4
local sources = #KEYS - 1 - writes
local meta, applied, engaged = KEYS[1], 0, 0
for k = 0, writes - 1 do
  local a = 5 + 4 * k
  local hist, evs = KEYS[1 + tonumber(ARGV[a])], KEYS[2 + sources + k]
  local w, n, entry = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), ARGV[a + 3]
  local entries = redis.call('LRANGE', hist, 0, -1)
  local at, before = nil, nil
  for j = #entries, 1, -1 do
    local ew = struct.unpack('<I3', entries[j])
    if ew == w then at = j break end
    if ew < w then before = j break end
  end
  local ok
  local open = redis.call('EXISTS', evs) == 1
  if open then
    ok = tonumber(redis.call('HGET', evs, '') or '-1') <= n
  else
    ok = at == nil  -- an entry whose event set is gone is final
  end
  if ok then
    if at then
      redis.call('LSET', hist, at - 1, entry)
    elseif before then
      redis.call('LINSERT', hist, 'AFTER', entries[before], entry)
    else
      redis.call('LPUSH', hist, entry)
    end
    if counting and not at then engaged = engaged + n end
    redis.call('LTRIM', hist, -cap, -1)
    redis.call('EXPIRE', hist, ttl)
    -- the batch job opens no event set: its windows' events are not in Redis, so the stream could not rebuild
    -- them, and a count per window for days would cost more memory than the histories
    if open or not counting then
      redis.call('HSET', evs, '', n)
      redis.call('EXPIRE', evs, ettl)
    end
    applied = applied + 1
  end
end
if engaged > 0 then redis.call('HINCRBY', meta, 'x', engaged) end
if applied == 0 then return {0, '', '', 0, 0} end
local parts = {}
for i = 2, sources + 1 do
  local tokens = {}
  for _, e in ipairs(redis.call('LRANGE', KEYS[i], 0, -1)) do tokens[#tokens + 1] = string.sub(e, 1, -2) end
  parts[#parts + 1] = table.concat(tokens)
end
local old = redis.call('HGET', meta, 'd') or ''
local digest = string.sub(redis.sha1hex(table.concat(parts, '|')), 1, 16)
redis.call('HSET', meta, 'd', digest)
redis.call('EXPIRE', meta, ttl)
local x = tonumber(redis.call('HGET', meta, 'x') or '0')
return {applied, digest, old, x, redis.call('HEXISTS', meta, 'f')}
"""


def lua_function(name: str, steps: str) -> str:
    """A script's steps as a local Lua function of (KEYS, ARGV), so that one script can run another's steps."""
    return f"local function {name}(KEYS, ARGV)\n{steps}\nend\n"


INGEST = lua_function("ingest", INGEST_STEPS) + "return ingest(KEYS, ARGV)"
COMMIT = lua_function("commit", COMMIT_STEPS) + "return commit(KEYS, ARGV)"

# INGEST and COMMIT in one call for windows the request's own events may make whole: the frontend tokenized them
# from the request's events alone, before knowing whether the window held events already (service/ingest.py).
# A write holds only where that guess was right: INGEST says the window must be tokenized, and the window's event
# set now holds exactly the request's events (every one accepted, none stored before), so the codes were computed
# from what the window holds. The other groups come back as INGEST answers them, to be tokenized from their stored
# events and committed as usual.
# KEYS = INGEST's keys, then COMMIT's: the metadata, every source's history, and each guessed window's event set.
# ARGV = the number of INGEST's keys, of its args, and of sources; INGEST's args; COMMIT's 4 leading args; then per
# guessed window: its group (1-based, in INGEST's order), its number of events in the request, and COMMIT's 4
# args of its write.
# -> {INGEST's answer, whose must-tokenize flag is 2 for windows written here, COMMIT's answer}
INGEST_COMMIT = (
    lua_function("ingest", INGEST_STEPS)
    + lua_function("commit", COMMIT_STEPS)
    + """
local nk, na, ns = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ik, ia = {}, {}
for i = 1, nk do ik[i] = KEYS[i] end
for i = 1, na do ia[i] = ARGV[3 + i] end
local out = ingest(ik, ia)
local ck, ca = {}, {}
for i = 1, ns + 1 do ck[i] = KEYS[nk + i] end
local at = 3 + na
for i = 1, 4 do ca[i] = ARGV[at + i] end
local guess = 0
for i = at + 5, #ARGV, 6 do
  guess = guess + 1
  local r, m = out[tonumber(ARGV[i])], tonumber(ARGV[i + 1])
  local exact = r[1] == 1 and r[2] == m
  for _, status in ipairs(r[3]) do
    if status ~= 1 then exact = false end
  end
  if exact then
    ck[#ck + 1] = KEYS[nk + ns + 1 + guess]
    for j = 2, 5 do ca[#ca + 1] = ARGV[i + j] end
    r[1], r[4] = 2, {}
  end
end
local committed = {0, '', '', 0, 0}
if #ca > 4 then committed = commit(ck, ca) end
return {out, committed}
"""
)


# One command per user instead of one LRANGE per source: the read path is the hot one, and a client-side
# pipeline object costs more than the reads themselves.
READ = """
local out = {}
for i = 1, #KEYS - 1 do out[i] = redis.call('LRANGE', KEYS[i], 0, -1) end
out[#KEYS] = redis.call('HGET', KEYS[#KEYS], 'f') or '0'
return out
"""

# One call per user: KEYS = the user's histories asked about; ARGV = for each window its history's position in
# KEYS (1-based) and its window index. -> per window the event count its stored entry was built from, or -1.
STORED = """
local lists, out = {}, {}
for i = 1, #ARGV, 2 do
  local k, w = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  lists[k] = lists[k] or redis.call('LRANGE', KEYS[k], 0, -1)
  local n = -1
  for j = #lists[k], 1, -1 do
    local e = lists[k][j]
    local ew = struct.unpack('<I3', e)
    if ew == w then n = string.byte(e, -1) break end
    if ew < w then break end
  end
  out[#out + 1] = n
end
return out
"""

# per-event outcomes of INGEST
DUPLICATE, ACCEPTED, CLOSED, FULL, EXPIRED = 0, 1, 2, 3, 4


@dataclass
class IngestResult:
    statuses: list[int]  # per event: DUPLICATE, ACCEPTED, CLOSED, FULL or EXPIRED
    event_count: int  # events now stored for the window
    events: list[dict] | None  # all of the window's events when it must be (re)tokenized, else None
    newest: int  # the newest window index stored for the user and source (-1: none)
    committed: bool = False  # its entry was written by the same script, from the codes guessed for it


class TokenHistoryStore:
    def __init__(
        self,
        redis: Redis,
        prefix: str,
        model_version: str,
        levels: int,
        codebook_size: int,
        period_s: int,
        history_days: int,
        ttl_days: int,
        late_windows: int,
        max_events_per_window: int = 255,
    ):
        self.redis, self.prefix, self.model_version = redis, prefix, model_version
        self.pipeline = CoalescingPipeline(redis)  # every write, and batch reads, go through it
        self.period_s, self.late_windows, self.max_events_per_window = period_s, late_windows, max_events_per_window
        self.entries = PackedEntries(levels, codebook_size)
        self.max_entries = windows_in(history_days, period_s)
        self.ttl_s = ttl_days * 86400
        # an open window's events are kept while late events may still arrive for it
        self.events_ttl_s = (late_windows + 2) * period_s

    def history_key(self, user: str, source: str) -> str:
        return f"{self.prefix}:{{{user}}}:c:{self.model_version}:{source}"

    def events_key(self, user: str, source: str, window: int) -> str:
        return f"{self.prefix}:{{{user}}}:e:{self.model_version}:{source}:{window}"

    def meta_key(self, user: str) -> str:
        return f"{self.prefix}:{{{user}}}:m:{self.model_version}"

    def collision_set(self, digest: str) -> str:
        return f"{self.prefix}:fb:{self.model_version}:{digest}"

    async def refresh_fallback(self, moves: dict[str, tuple[str, str, int, bool]]) -> None:
        """moves: user -> (digest now, digest before, engagement, has a fallback index), as COMMIT returned them.
        Re-files each user under their history's digest and re-ranks the collision sets that hold more than one
        user after the move. Each member's rank is written into its own metadata, which READ returns with the
        history, so reads pay nothing. Without collisions (the common case) this is one round trip."""
        commands: list[tuple] = []
        sizes: list[tuple[str, str | None, int]] = []  # (digest, user, members needed to re-rank)
        for user, (digest, old, engagement, _) in moves.items():
            if old and old != digest:
                commands += [("ZREM", self.collision_set(old), user), ("ZCARD", self.collision_set(old))]
                sizes.append((old, None, 1))  # whoever is left may hold a rank that is now wrong
            commands += [
                ("ZADD", self.collision_set(digest), -float(engagement), user),
                ("EXPIRE", self.collision_set(digest), self.ttl_s),
                ("ZCARD", self.collision_set(digest)),
            ]
            sizes.append((digest, user, 2))
        replies = iter(await self.pipeline.execute(commands))
        crowded, alone = set(), []
        for digest, user, needed in sizes:
            if user is None:
                next(replies)  # ZREM
            else:
                next(replies), next(replies)  # ZADD, EXPIRE
            if next(replies) >= needed:
                crowded.add(digest)
            elif user is not None and moves[user][3]:
                alone.append(user)  # collided before, alone now: its old rank must go
        if alone:
            await self.pipeline.execute([("HDEL", self.meta_key(user), "f") for user in alone])
        if crowded:
            await self._rank(sorted(crowded))

    async def _rank(self, digests: list[str]) -> None:
        """Writes each live member's rank (or clears it when alone) for all `digests` in three round trips,
        however many sets a request touched; members whose digest moved on are dropped from the set."""
        replies = await self.pipeline.execute([("ZRANGE", self.collision_set(d), 0, -1) for d in digests])
        members = [[_text(m) for m in ms] for ms in replies]
        # one HGET per user: users span cluster slots
        current = iter(await self.pipeline.execute([("HGET", self.meta_key(m), "d") for ms in members for m in ms]))
        commands: list[tuple] = []
        for digest, ms in zip(digests, members, strict=True):
            now = [_text(next(current) or b"") for _ in ms]
            live = [m for m, d in zip(ms, now, strict=True) if d == digest]
            stale = [m for m, d in zip(ms, now, strict=True) if d != digest]
            if stale:
                commands.append(("ZREM", self.collision_set(digest), *stale))
            for rank, m in enumerate(live, 1):
                if len(live) > 1:
                    commands.append(("HSET", self.meta_key(m), "f", rank))
                else:
                    commands.append(("HDEL", self.meta_key(m), "f"))
        await self.pipeline.execute(commands)

    async def ingest(self, groups: list[tuple[str, str, int, list[tuple[str, dict]]]]) -> list[IngestResult]:
        """groups: (user, source, window index, [(event_id, event)]) -> one result per group, in order. One
        script per user, however many of the user's windows the call touches."""
        return (await self.ingest_guessed(groups, {}, []))[0]

    async def ingest_guessed(
        self,
        groups: list[tuple[str, str, int, list[tuple[str, dict]]]],
        guesses: dict[int, np.ndarray],
        sources: list[str],
    ) -> tuple[list[IngestResult], dict[str, tuple[str, str, int, bool]]]:
        """ingest(), and for the groups in `guesses` (group position -> codes [levels] tokenized from the group's
        own events in this call) their entries written in the same script where the guess holds: the window held
        none of its events before (INGEST_COMMIT). -> (results, where `committed` says which were written;
        commit()'s moves of the users whose history those writes changed). `sources`: every source name."""
        by_user = _positions_by_user(groups)
        packed = None
        if guesses:
            at = list(guesses)
            packed = dict(
                zip(
                    at,
                    self.entries.pack(
                        np.array([groups[i][2] for i in at]),
                        np.stack([guesses[i] for i in at]),
                        np.array([len(groups[i][3]) for i in at]),
                    ),
                    strict=True,
                )
            )
        commands, guessing = [], []
        for user, members in by_user.items():
            keys, args = [], [self.late_windows, self.events_ttl_s, self.ttl_s, self.max_events_per_window]
            for i in members:
                _, source, window, events = groups[i]
                keys += [self.history_key(user, source), self.events_key(user, source, window)]
                args += [window, len(events)]
                for event_id, event in events:
                    args += [event_id, orjson.dumps(event)]
            keys.append(self.meta_key(user))
            guessed = [(g, i) for g, i in enumerate(members, 1) if i in guesses]
            guessing.append(bool(guessed))
            if not guessed:
                commands.append(evalsha(INGEST, keys, args))
                continue
            commit_keys, commit_args, each = self._commit_call(
                user, [(*groups[i][1:3], len(groups[i][3]), packed[i]) for _, i in guessed], sources
            )
            for (g, i), write in zip(guessed, each, strict=True):
                commit_args += [g, len(groups[i][3]), *write]
            commands.append(
                evalsha(
                    INGEST_COMMIT,
                    keys + commit_keys,
                    [len(keys), len(args), len(sources), *args, *commit_args],
                )
            )
        results: list[IngestResult | None] = [None] * len(groups)
        moves = {}
        replies = await self.pipeline.execute(commands)
        for (user, members), reply, guessed in zip(by_user.items(), replies, guessing, strict=True):
            if guessed:
                reply, committed = reply
                if committed[0]:
                    moves[user] = _move(committed)
            for i, (need, n, statuses, flat, newest) in zip(members, reply, strict=True):
                events = None
                if need == 1:
                    pairs = sorted((k, v) for k, v in zip(flat[0::2], flat[1::2], strict=True) if k)
                    events = sorted(
                        (orjson.loads(v) | {"event_id": k.decode()} for k, v in pairs),
                        key=lambda e: (e["ts"], e["event_id"]),
                    )
                results[i] = IngestResult([int(s) for s in statuses], int(n), events, int(newest), need == 2)
        return results, moves

    async def commit(
        self, writes: list[tuple[str, str, int, int, np.ndarray]], sources: list[str]
    ) -> dict[str, tuple[str, str, int, bool]]:
        """writes: (user, source, window index, event count, codes [levels]); `sources`: every source name.
        -> user: (history digest now, digest before this call, engagement, has a fallback index) for users
        whose history changed, what refresh_fallback takes. One script per user: the digest is hashed once
        per user and call, not once per window."""
        return (await self.commit_counted(writes, sources))[0]

    async def commit_counted(
        self, writes: list[tuple[str, str, int, int, np.ndarray]], sources: list[str], engagement: bool = False
    ) -> tuple[dict[str, tuple[str, str, int, bool]], int]:
        """commit(), also -> how many windows were written. engagement: count the events of windows this call
        adds to a history (`u2qt batch`, whose events do not pass INGEST)."""
        if not writes:
            return {}, 0
        packed = self.entries.pack(
            np.array([w[2] for w in writes]), np.stack([w[4] for w in writes]), np.array([w[3] for w in writes])
        )
        by_user = _positions_by_user(writes)
        commands = []
        for user, members in by_user.items():
            keys, args, each = self._commit_call(user, [(*writes[i][1:4], packed[i]) for i in members], sources)
            args[3] = int(engagement)
            commands.append(evalsha(COMMIT, keys, args + [a for write in each for a in write]))
        replies = await self.pipeline.execute(commands)
        moves = {user: _move(reply) for user, reply in zip(by_user, replies, strict=True) if reply[0]}
        return moves, sum(int(r[0]) for r in replies)

    def _commit_call(self, user: str, writes: list[tuple[str, int, int, bytes]], sources: list[str]):
        """COMMIT's layout for one user's writes (source, window index, event count, packed entry), one place for
        COMMIT and INGEST_COMMIT: -> (keys, its 4 leading args with engagement 0 as the online path writes, each
        write's 4 args)."""
        keys = [self.meta_key(user)] + [self.history_key(user, s) for s in sources]
        keys += [self.events_key(user, source, window) for source, window, _, _ in writes]
        each = [[sources.index(source) + 1, window, n, entry] for source, window, n, entry in writes]
        return keys, [self.max_entries, self.ttl_s, self.events_ttl_s, 0], each

    async def stored_counts(self, windows: list[tuple[str, str, int]]) -> list[int]:
        """(user, source, window index) -> the event count its stored entry was built from, or -1 (none). One
        script per user."""
        by_user = _positions_by_user(windows)
        commands = []
        for user, members in by_user.items():
            keys: dict[str, int] = {}
            args = []
            for i in members:
                key = self.history_key(user, windows[i][1])
                args += [keys.setdefault(key, len(keys) + 1), windows[i][2]]
            commands.append(evalsha(STORED, list(keys), args))
        out = [-1] * len(windows)
        for members, reply in zip(by_user.values(), await self.pipeline.execute(commands), strict=True):
            for i, n in zip(members, reply, strict=True):
                out[i] = int(n)
        return out

    async def read(self, users: list[str], sources: list[str]) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
        """-> ({user: {source: structured array of entries (window, codes)}}, {user: fallback index}) in one
        round trip."""

        def keys(user):
            return [self.history_key(user, s) for s in sources] + [self.meta_key(user)]

        if len(users) == 1:  # the hot read: one command, no pipeline object, no wait for a loop turn
            replies = [await run_script(self.redis, evalsha(READ, keys(users[0])))]
        else:  # one script per user: its keys share a Redis Cluster slot
            replies = await self.pipeline.execute([evalsha(READ, keys(user)) for user in users])
        # one unpack for every list of the call, then split: per-list numpy calls would dominate a batch read
        lists = [entries for r in replies for entries in r[:-1]]
        decoded = self.entries.unpack(b"".join(e for entries in lists for e in entries))
        parts = iter(np.split(decoded, np.cumsum([len(entries) for entries in lists])[:-1]))
        histories = {user: {s: next(parts) for s in sources} for user in users}
        return histories, {user: int(r[-1]) for user, r in zip(users, replies, strict=True)}


def _positions_by_user(rows: list[tuple]) -> dict[str, list[int]]:
    """user (each row's first field) -> the positions of that user's rows, in order: one script per user."""
    by_user: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_user.setdefault(row[0], []).append(i)
    return by_user


def _move(reply) -> tuple[str, str, int, bool]:
    """COMMIT's answer {applied, digest, digest before, engagement, has a fallback index} -> a move for
    refresh_fallback."""
    _, digest, old, engaged, ranked = reply
    return _text(digest), _text(old), int(engaged), bool(ranked)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
