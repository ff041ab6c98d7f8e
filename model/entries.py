"""A window's tokens as the token store keeps them: packed bytes, and back (service/store.py stores them in
Redis lists; training/evaluation.py counts their bytes)."""

from __future__ import annotations

import numpy as np


class PackedEntries:
    """History entries as Redis stores them, and back. Bit-packed codes: a 180-day history of one source is
    180 list entries, and Redis spends 1 + entry size + 1 bytes on each (benchmarks/redis_memory.py)."""

    def __init__(self, levels: int, codebook_size: int):
        self.levels, self.bits = levels, max(1, (codebook_size - 1).bit_length())
        if self.bits > 16:
            raise ValueError(f"codebook size {codebook_size} needs more than 16 bits per code")
        self.stored = np.dtype([("window", "<u4"), ("codes", "u1", (-(-levels * self.bits // 8),))])
        self.decoded = np.dtype([("window", "<u4"), ("codes", "<u2", (levels,))])
        self.size = self.stored.itemsize
        self._shifts = np.arange(self.bits - 1, -1, -1)

    def pack(self, windows: np.ndarray, codes: np.ndarray) -> list[bytes]:
        """windows [N], codes [N, levels] -> N entries."""
        codes = np.asarray(codes, dtype=np.int64).reshape(len(windows), self.levels)
        bits = ((codes[:, :, None] >> self._shifts) & 1).astype(np.uint8).reshape(len(codes), -1)
        arr = np.zeros(len(codes), self.stored)
        arr["window"], arr["codes"] = windows, np.packbits(bits, axis=1)
        raw = arr.tobytes()
        return [raw[i : i + self.size] for i in range(0, len(raw), self.size)]

    def unpack(self, raw: bytes) -> np.ndarray:
        """Concatenated entries -> structured array (window uint32, codes uint16 [levels])."""
        arr = np.frombuffer(raw, self.stored)
        bits = np.unpackbits(arr["codes"], axis=1)[:, : self.levels * self.bits]
        out = np.empty(len(arr), self.decoded)
        out["window"] = arr["window"]
        out["codes"] = bits.reshape(len(arr), self.levels, self.bits).astype(np.int64) @ (1 << self._shifts)
        return out
