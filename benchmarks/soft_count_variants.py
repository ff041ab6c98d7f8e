"""Soft-count readers that were measured and kept less than the served one (model.decoded.SoftCounts), kept to
reproduce their rows of docs/eval/levers.md ("Pooling beyond the mean"): `benchmarks/eval_pooling.py --fire-rates
… --whiten … --per-source`. Nothing exports or serves them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from u2qt.model.decoded import SoftCounts


@dataclass(frozen=True)
class SoftCountVariant(SoftCounts):
    """SoftCounts whose mean and scale may be per source ([sources, dim]) and whose features may be offset."""

    offset: np.ndarray | None = None  # [features], cut before the ReLU; None: 0, each fires on about half the windows

    @classmethod
    def fit(
        cls,
        vectors: np.ndarray,
        features: int,
        seed: int = 0,
        fire_rate: float | None = None,
        whiten: float | None = None,
        source: np.ndarray | None = None,
        n_sources: int = 0,
    ) -> SoftCountVariant:
        """As SoftCounts.fit, and: with `fire_rate`, each feature's offset is the quantile of the training windows'
        projections above which that share of them lies (a rarer feature counts windows of a smaller region, closer
        to what a count of one item is). With `whiten` (λ), the projection is drawn in the whitened space, every
        principal direction of the standardized windows at equal weight, their variances shrunk by λ
        (x (s + λ)^-1/2): a direction few windows take is then as likely to be counted as the dominant ones. With
        `source` (each vector's, of `n_sources`), each source is standardized by its own windows, so that every
        feature splits each source's windows, not the sources (a source without windows: mean 0, scale 1)."""
        vectors = np.asarray(vectors, dtype=np.float64)
        dim = vectors.shape[1]
        projection = np.random.default_rng(seed).standard_normal((dim, features)) / np.sqrt(dim)  # SoftCounts.fit's
        if source is None:
            mean, scale = vectors.mean(0), vectors.std(0) + 1e-6
            standardized = (vectors - mean) / scale
        else:
            mean, scale = np.zeros((n_sources, dim)), np.ones((n_sources, dim))
            for s in np.unique(source):
                mean[s], scale[s] = vectors[source == s].mean(0), vectors[source == s].std(0) + 1e-6
            standardized = (vectors - mean[source]) / scale[source]
        if whiten is not None:
            variances, axes = np.linalg.eigh(np.cov(standardized, rowvar=False))
            projection = (axes / np.sqrt(np.maximum(variances, 0.0) + whiten)) @ axes.T @ projection
        offset = None
        if fire_rate is not None:
            offset = np.quantile(standardized @ projection, 1.0 - fire_rate, axis=0).astype(np.float32)
        return cls(mean.astype(np.float32), scale.astype(np.float32), projection.astype(np.float32), offset)

    def __call__(self, vectors: np.ndarray, source: np.ndarray | None = None) -> np.ndarray:
        """[N, dim] (and each one's source, where each source has its own standardization) -> [N, features]"""
        mean, scale = (self.mean, self.scale) if self.mean.ndim == 1 else (self.mean[source], self.scale[source])
        projected = ((np.asarray(vectors, dtype=np.float32) - mean) / scale) @ self.projection
        return np.maximum(projected if self.offset is None else projected - self.offset, 0.0)
