import struct

import numpy as np
import pytest

from model.entries import PackedEntries


@pytest.mark.parametrize("levels,codebook_size", [(1, 2), (4, 1024), (4, 1000), (5, 1025), (6, 256), (3, 65536)])
def test_packed_entries_round_trip_every_code(levels, codebook_size):
    rng = np.random.default_rng(levels * codebook_size)
    codes = rng.integers(0, codebook_size, size=(500, levels))
    codes[0], codes[1] = 0, codebook_size - 1  # both ends of the codebook
    windows = rng.integers(0, 2**32, size=500, dtype=np.uint64)
    layout = PackedEntries(levels, codebook_size)
    entries = layout.pack(windows, codes)
    assert len(entries) == 500 and {len(e) for e in entries} == {layout.size}
    # the Lua scripts read the window index as the entry's first 4 bytes, little endian
    assert [struct.unpack("<I", e[:4])[0] for e in entries[:20]] == windows[:20].tolist()
    back = layout.unpack(b"".join(entries))
    assert np.array_equal(back["window"], windows) and np.array_equal(back["codes"], codes)


def test_packed_entry_is_nine_bytes_for_four_codes_of_1024():
    assert PackedEntries(4, 1024).size == 9  # uint32 window + 40 bits, where uint16 codes took 12
    assert PackedEntries(4, 1025).size == 10
    with pytest.raises(ValueError, match="16 bits"):
        PackedEntries(4, 2**16 + 1)


def test_coalescing_pipeline_shares_one_round_trip_and_keeps_each_callers_replies(redis_server):
    import asyncio

    import redis.asyncio as aioredis
    from redis.exceptions import ResponseError

    from service.coalescing import CoalescingPipeline

    async def scenario():
        client = aioredis.from_url(redis_server.url)
        pipeline = CoalescingPipeline(client)
        await client.delete("cp:n", "cp:s")
        await client.set("cp:s", "text")
        before = (await client.info("stats"))["total_connections_received"]
        callers = [pipeline.execute([("INCR", "cp:n"), ("GET", "cp:n")]) for _ in range(20)]
        callers.append(pipeline.execute([("INCR", "cp:s")]))  # not an integer: this caller alone fails
        replies = await asyncio.gather(*callers, return_exceptions=True)
        after = (await client.info("stats"))["total_connections_received"]
        await client.aclose()
        return replies, after - before

    replies, new_connections = asyncio.run(scenario())
    assert isinstance(replies[-1], ResponseError)
    # each caller sees its own replies, in order: INCR and the GET that followed it in the one pipeline
    assert sorted(r[0] for r in replies[:-1]) == list(range(1, 21))
    assert all(int(r[1]) == r[0] for r in replies[:-1])
    assert new_connections <= 1, "21 callers in one loop turn: one pipeline on one connection"
