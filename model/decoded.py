"""A user embedding read from stored tokens alone: each window's codes decoded back to the sum of their
codewords (the quantized latent z_hat the MRQ-VAE reconstructs from), averaged over the user's windows per
source, the sources' means side by side. `u2qt eval` reports it as "decoded tokens"; the service serves it as
GET /users/{id}/embedding?kind=tokens, from the codebooks `u2qt export` writes (codebooks.safetensors)."""

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


def pool_by_source(vectors: np.ndarray, source: np.ndarray, n_sources: int) -> np.ndarray:
    """[N, dim] window vectors -> [n_sources * dim]: the mean of each source's windows (zeros for a source the
    user has none of), concatenated in the sources' order."""
    dim = vectors.shape[1]
    sums = np.zeros((n_sources, dim), dtype=np.float64)
    np.add.at(sums, np.asarray(source, dtype=np.int64), vectors)
    counts = np.bincount(source, minlength=n_sources).astype(np.float64)[:, None]
    return (sums / np.maximum(counts, 1)).astype(np.float32).reshape(-1)


def load_codebooks(directory: Path, levels: int) -> list[np.ndarray]:
    from safetensors.numpy import load_file

    tables = load_file(str(Path(directory) / CODEBOOKS_FILE))
    return [tables[f"level_{i}"] for i in range(levels)]


def save_codebooks(path: Path, codebooks: list[np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file({f"level_{i}": np.ascontiguousarray(t, dtype=np.float32) for i, t in enumerate(codebooks)}, str(path))
