"""A user's token history as the history model reads it: one implementation for training and serving.

Windows are ordered by time, then by source; each window contributes its tokens level by level. Every token
carries its level and its age (windows before the newest one in the sequence), so the model sees both the
hierarchy and the time gaps. The newest `max_tokens` tokens are kept; id 0 (`<pad>`) pads on the right.
"""

from __future__ import annotations

import numpy as np


def history_sequence(
    windows: np.ndarray, source_index: np.ndarray, token_ids: np.ndarray, max_tokens: int, max_age: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """windows [N] window indices, source_index [N], token_ids [N, L] -> (ids, level, age), each [max_tokens]."""
    ids = np.zeros(max_tokens, np.int64)
    level = np.zeros(max_tokens, np.int64)
    age = np.zeros(max_tokens, np.int64)
    if len(windows) == 0:
        return ids, level, age
    order = np.lexsort((source_index, windows))
    w, t = np.asarray(windows)[order], np.asarray(token_ids)[order]
    n_levels = t.shape[1]
    flat = t.reshape(-1)
    lv = np.tile(np.arange(n_levels), len(w))
    ag = np.repeat(np.clip(w.max() - w, 0, max_age), n_levels)
    keep = slice(max(0, len(flat) - max_tokens), len(flat))
    n = len(flat[keep])
    ids[:n], level[:n], age[:n] = flat[keep], lv[keep], ag[keep]
    return ids, level, age


def batch_sequences(items: list[tuple[np.ndarray, np.ndarray, np.ndarray]], max_tokens: int, max_age: int):
    """[(windows, source_index, token_ids)] -> ids, level, age arrays [B, max_tokens]."""
    out = [history_sequence(w, s, t, max_tokens, max_age) for w, s, t in items]
    return (
        tuple(np.stack(x) for x in zip(*out, strict=True))
        if out
        else tuple(np.zeros((0, max_tokens), np.int64) for _ in range(3))
    )
