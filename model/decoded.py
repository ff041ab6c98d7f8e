"""A user embedding read from stored tokens alone: each window's codes decoded back to the sum of their
codewords (the quantized latent z_hat the MRQ-VAE reconstructs from), pooled per source by `pool_user`, the
sources side by side. `u2qt eval` reports it as "decoded tokens" (and pools the continuous window embeddings the
same way); the service serves it as GET /users/{id}/embedding?kind=tokens, from the codebooks, the soft-count
features and the event-text decoder `u2qt export` writes (codebooks.safetensors)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

CODEBOOKS_FILE = "codebooks.safetensors"
SOFT_COUNTS_TENSORS = ("soft_counts_mean", "soft_counts_scale", "soft_counts_projection")
TOKEN_TEXTS_TENSORS = ("texts_table", "texts_intercept", "texts_sources")


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


def pooled_width(n_sources: int, code_dim: int, soft_counts: int = 0, texts: int = 0) -> int:
    """The length of pool_user's vector: what the manifest's decoded.dim promises a ranker."""
    return n_sources * (code_dim + len(ACTIVITY) + soft_counts) + texts


@dataclass(frozen=True)
class TokenTexts:
    """A window's tokens decoded to its count of each of the training data's most frequent event texts (product
    categories, campaign types, titles): a linear map of the window's one-hot tokens, so a row per vocabulary id
    summed over the window's tokens, plus an intercept; zero for a window of a source without texts. Summed over
    a user's windows (negatives cut) and log1p'd they are the per-text log counts a raw-data baseline is built
    from, which no mean of window vectors carries: on The Complete Journey they take the decoded tokens from 0.91
    to 0.93 of the raw signal (docs/eval/levers.md, "Window vectors decoded to event texts"). Fitted by
    training/event_texts.py: fit_token_texts."""

    table: np.ndarray  # [vocabulary size, texts]
    intercept: np.ndarray  # [texts]
    sources: np.ndarray  # [n_sources] 1 where the source's windows hold texts

    def __call__(self, ids: np.ndarray, source: np.ndarray) -> np.ndarray:
        """ids [N, levels] (vocabulary ids, model/vocabulary.py), source [N] -> predicted counts [N, texts]"""
        ids = np.asarray(ids)
        out = np.broadcast_to(self.intercept, (len(ids), len(self.intercept))).copy()
        for level in ids.T:  # level by level: a [N, texts] sum, not a [N, levels, texts] gather
            out += self.table[level]
        return out * (self.sources[np.asarray(source, dtype=np.int64)] > 0)[:, None]

    def tensors(self) -> dict[str, np.ndarray]:
        return dict(zip(TOKEN_TEXTS_TENSORS, (self.table, self.intercept, self.sources), strict=True))


@dataclass(frozen=True)
class SoftCounts:
    """Random ReLU features of a window vector: standardized, through a fixed Gaussian projection, negatives cut.
    Summed over a source's windows they count the user's windows per region of the space, softly, the way the
    raw logs' per-item counts do, which no mean of window vectors carries: on The Complete Journey (a median of 30
    weekly or 42 daily windows a household) log1p of those sums beside the mean lift the decoded tokens from 0.85
    to 0.88 of the raw signal with weekly windows and from 0.86 to 0.91 with daily ones; on MovieLens (a median of
    one window) they cost 0.06, so `u2qt train` chooses them from the data (docs/eval/levers.md, "Pooling beyond
    the mean")."""

    mean: np.ndarray  # [dim]
    scale: np.ndarray  # [dim]
    projection: np.ndarray  # [dim, features]

    @classmethod
    def fit(cls, vectors: np.ndarray, features: int, seed: int = 0) -> SoftCounts:
        """Standardized by `vectors` (the training windows'); the projection drawn from `seed`, so each feature
        fires on about half the windows. Rarer features, a whitened projection and a standardization per source
        were measured and kept less (benchmarks/soft_count_variants.py)."""
        vectors = np.asarray(vectors, dtype=np.float64)
        dim = vectors.shape[1]
        projection = np.random.default_rng(seed).standard_normal((dim, features)) / np.sqrt(dim)
        mean, scale = vectors.mean(0), vectors.std(0) + 1e-6
        return cls(mean.astype(np.float32), scale.astype(np.float32), projection.astype(np.float32))

    @property
    def features(self) -> int:
        return self.projection.shape[1]

    def __call__(self, vectors: np.ndarray, source: np.ndarray | None = None) -> np.ndarray:
        """[N, dim] -> [N, features]. `source` (each vector's) is pool_user's to give; this reader standardizes every
        source alike and does not read it."""
        return np.maximum(((np.asarray(vectors, dtype=np.float32) - self.mean) / self.scale) @ self.projection, 0.0)

    def tensors(self) -> dict[str, np.ndarray]:
        return dict(zip(SOFT_COUNTS_TENSORS, (self.mean, self.scale, self.projection), strict=True))


def pool_user(
    vectors: np.ndarray,
    source: np.ndarray,
    counts: np.ndarray,
    windows: np.ndarray,
    n_sources: int,
    now: int,
    horizon: int,
    soft_counts: SoftCounts | None = None,
    texts: np.ndarray | None = None,
) -> np.ndarray:
    """One user's window vectors [N, dim] -> [n_sources * (dim + 3 + soft-count features) + texts]: per source,
    the mean of its windows weighted by their event counts, then its activity (ACTIVITY: log1p of its windows, of
    their events, and of the windows from its newest to window `now`, at most `horizon`, which is also what a
    source without windows gets), then with `soft_counts` log1p of the sum of its windows' features (SoftCounts);
    zeros and `horizon` for a source the user has none of; the sources in their order; then, with `texts` (each
    window's predicted count of each event text, TokenTexts), log1p of their sums over all the windows, negatives
    cut.

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
    parts = [sums / np.maximum(events, 1.0)[:, None], activity]
    if soft_counts is not None:
        by_source = np.eye(n_sources)[source].T  # [n_sources, N]: which windows each source's sum takes
        parts.append(np.log1p(by_source @ soft_counts(vectors, source)))
    pooled = np.hstack(parts).astype(np.float32).reshape(-1)
    if texts is None:
        return pooled
    return np.concatenate([pooled, np.log1p(np.maximum(texts, 0.0).sum(0)).astype(np.float32)])


def _exported_tables(directory: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(Path(directory) / CODEBOOKS_FILE))


def load_codebooks(directory: Path, levels: int) -> list[np.ndarray]:
    tables = _exported_tables(directory)
    return [tables[f"level_{i}"] for i in range(levels)]


def load_soft_counts(directory: Path) -> SoftCounts:
    tables = _exported_tables(directory)
    return SoftCounts(*(tables[name] for name in SOFT_COUNTS_TENSORS))


def load_token_texts(directory: Path) -> TokenTexts:
    tables = _exported_tables(directory)
    return TokenTexts(*(tables[name] for name in TOKEN_TEXTS_TENSORS))


def save_codebooks(
    path: Path, codebooks: list[np.ndarray], soft_counts: SoftCounts | None = None, texts: TokenTexts | None = None
) -> None:
    from safetensors.numpy import save_file

    tables = {f"level_{i}": t for i, t in enumerate(codebooks)} | (soft_counts.tensors() if soft_counts else {})
    tables |= texts.tensors() if texts else {}
    save_file({k: np.ascontiguousarray(t, dtype=np.float32) for k, t in tables.items()}, str(path))
