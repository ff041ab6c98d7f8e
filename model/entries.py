"""A window's tokens as the token store keeps them: packed bytes, and back (service/store.py stores them in
Redis lists; training/evaluation.py counts their bytes)."""

from __future__ import annotations

import numpy as np

# An entry: the window index in WINDOW_BYTES (little endian; the Lua scripts read it as struct '<I3'), the codes,
# then how many events the window's tokens were built from in COUNT_BYTES. The service takes at most
# MAX_WINDOW_EVENTS events per window, so the count is exact. Both widths keep a 180-entry history of 4 codes of
# 1,024 in a Redis allocation of 2,048 bytes: one byte more per entry costs half a byte per token
# (benchmarks/redis_memory.py).
WINDOW_BYTES = 3
MAX_WINDOWS = 2 ** (8 * WINDOW_BYTES)  # window indices 0 .. MAX_WINDOWS - 1: 1,914 years of 1-hour windows
COUNT_BYTES = 1
MAX_WINDOW_EVENTS = 2 ** (8 * COUNT_BYTES) - 1


class PackedEntries:
    """History entries as Redis stores them, and back: the window index (3 bytes, little endian), the levels'
    codes bit-packed most significant bit first and zero-padded to a whole byte, then the window's event count
    (one byte): 9 bytes for 4 codes of a 1,024-code codebook. A 180-day history of one source is 180 list
    entries, and Redis spends 1 + entry size + 1 bytes on each."""

    def __init__(self, levels: int, codebook_size: int):
        self.levels, self.bits = levels, max(1, (codebook_size - 1).bit_length())
        if self.bits > 16:
            raise ValueError(f"codebook size {codebook_size} needs more than 16 bits per code")
        code_bytes = -(-levels * self.bits // 8)
        self.stored = np.dtype([("window", "u1", (WINDOW_BYTES,)), ("codes", "u1", (code_bytes,)), ("count", "u1")])
        self.decoded = np.dtype([("window", "<u4"), ("codes", "<u2", (levels,)), ("count", "u1")])
        self.size = self.stored.itemsize
        self._shifts = np.arange(self.bits - 1, -1, -1)
        self._window_shifts = 8 * np.arange(WINDOW_BYTES)

    def pack(self, windows: np.ndarray, codes: np.ndarray, counts: np.ndarray | None = None) -> list[bytes]:
        """windows [N] (< MAX_WINDOWS), codes [N, levels], event counts [N] (None: 0; above MAX_WINDOW_EVENTS:
        that) -> N entries."""
        windows = np.asarray(windows, dtype=np.int64)
        if len(windows) and (windows.min() < 0 or windows.max() >= MAX_WINDOWS):
            raise ValueError(f"window indices must lie in [0, {MAX_WINDOWS})")
        codes = np.asarray(codes, dtype=np.int64).reshape(len(windows), self.levels)
        bits = ((codes[:, :, None] >> self._shifts) & 1).astype(np.uint8).reshape(len(codes), -1)
        arr = np.zeros(len(codes), self.stored)
        arr["window"] = (windows[:, None] >> self._window_shifts) & 0xFF
        arr["codes"] = np.packbits(bits, axis=1)
        if counts is not None:
            arr["count"] = np.clip(np.asarray(counts, dtype=np.int64), 0, MAX_WINDOW_EVENTS)
        raw = arr.tobytes()
        return [raw[i : i + self.size] for i in range(0, len(raw), self.size)]

    def unpack(self, raw: bytes) -> np.ndarray:
        """Concatenated entries -> structured array (window uint32, codes uint16 [levels], count uint8)."""
        arr = np.frombuffer(raw, self.stored)
        bits = np.unpackbits(arr["codes"], axis=1)[:, : self.levels * self.bits]
        out = np.empty(len(arr), self.decoded)
        out["window"] = arr["window"].astype(np.int64) @ (1 << self._window_shifts)
        out["count"] = arr["count"]
        out["codes"] = bits.reshape(len(arr), self.levels, self.bits).astype(np.int64) @ (1 << self._shifts)
        return out
