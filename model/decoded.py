"""A user embedding read from stored tokens alone: each window's codes decoded back to the sum of their
codewords (the quantized latent z_hat the MRQ-VAE reconstructs from), pooled per source by `pool_user`, the
sources side by side. `u2qt eval` reports it as "decoded tokens" (and pools the continuous window embeddings the
same way); the service serves it as GET /users/{id}/embedding?kind=tokens, from the codebooks `u2qt export`
writes (codebooks.safetensors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CODEBOOKS_FILE = "codebooks.safetensors"


def codeword_sums(
    codebooks: list[np.ndarray], shared_levels: int, codebook_size: int, codes: np.ndarray, source: np.ndarray
) -> np.ndarray:
    """codes [N, L] (per-level indices within the window's block), source [N] -> z_hat [N, dim]. A shared level's
    table is one block; a specific level's holds one block per source (model/quantizer.py)."""
    source = np.asarray(source, dtype=np.int64)
    out = np.zeros((len(codes), codebooks[0].shape[1]), dtype=np.float32)
    for level, table in enumerate(codebooks):
        block = source if level >= shared_levels else 0
        out += table[block * codebook_size + np.asarray(codes)[:, level]]
    return out


# per source, after its pooled vector: log1p of each (docs/eval/levers.md, "The reader")
ACTIVITY = ("windows", "events", "windows since the newest")


def pooled_width(n_sources: int, code_dim: int) -> int:
    """The length of pool_user's vector: what the manifest's decoded.dim promises a ranker."""
    return n_sources * (code_dim + len(ACTIVITY))


def pool_user(
    vectors: np.ndarray,
    source: np.ndarray,
    counts: np.ndarray,
    windows: np.ndarray,
    n_sources: int,
    now: int,
    horizon: int,
) -> np.ndarray:
    """One user's window vectors [N, dim] -> [n_sources * (dim + 3)]: per source, the mean of its windows weighted
    by their event counts, then its activity (ACTIVITY: log1p of its windows, of their events, and of the windows
    from its newest to window `now`, at most `horizon`, which is also what a source without windows gets); zeros
    and `horizon` for a source the user has none of; the sources in their order.

    Weighted by events because a busy window holds more of what the user did than a quiet one, and the activity
    because a mean forgets how much and how lately: on MovieLens the two lift what a linear probe reads from the
    continuous window embeddings from 0.83 to 0.98 of the raw data's signal (docs/eval/levers.md)."""
    source = np.asarray(source, dtype=np.int64)
    weight = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)  # an entry stored without its count: one event
    sums = np.zeros((n_sources, vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, source, np.asarray(vectors, dtype=np.float64) * weight[:, None])
    events = np.bincount(source, weights=weight, minlength=n_sources)
    n_windows = np.bincount(source, minlength=n_sources)
    newest = np.full(n_sources, -np.inf)
    np.maximum.at(newest, source, np.asarray(windows, dtype=np.float64))
    since = np.where(n_windows > 0, np.clip(now - newest, 0, horizon), horizon)
    activity = np.log1p(np.stack([n_windows, events, since], axis=1))
    return np.hstack([sums / np.maximum(events, 1.0)[:, None], activity]).astype(np.float32).reshape(-1)


def load_codebooks(directory: Path, levels: int) -> list[np.ndarray]:
    from safetensors.numpy import load_file

    tables = load_file(str(Path(directory) / CODEBOOKS_FILE))
    return [tables[f"level_{i}"] for i in range(levels)]


def save_codebooks(path: Path, codebooks: list[np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file({f"level_{i}": np.ascontiguousarray(t, dtype=np.float32) for i, t in enumerate(codebooks)}, str(path))
