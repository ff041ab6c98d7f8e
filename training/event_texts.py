"""Window vectors decoded to the raw data's vocabulary: a ridge map from each window's vector to its counts of
each event text (product categories, campaign types, titles), its predictions cut at 0 and summed over a user's
windows, then log1p, as the raw-data baseline counts the same texts per user (training/evaluation.py:
raw_baseline). A mean of window vectors cannot carry a per-text log count; this reads it back
(docs/eval/levers.md, "Window vectors decoded to event texts")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from u2qt.model.decoded import TokenTexts
from u2qt.model.sources import window_start

# λ per fitted window, chosen on a held-out fifth of them
RIDGE_SHRINKS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def window_text_counts(events: pd.DataFrame, windows: pd.DataFrame, period_s: int, before_s: float, top: int):
    """-> ([len(windows), texts] sparse counts of each window's events per text, the texts): the `top` texts most
    frequent among the events before `before_s` that fall in one of `windows` (user_id, source, window_start)."""
    ev = events[events["text"].notna()] if "text" in events else events.iloc[:0].assign(text=[])
    key = pd.MultiIndex.from_arrays([windows["user_id"], windows["source"], windows["window_start"]])
    starts = window_start(ev["ts"].to_numpy(), period_s)
    rows = key.get_indexer(pd.MultiIndex.from_arrays([ev["user_id"], ev["source"], starts]))
    texts = ev["text"][(rows >= 0) & (ev["ts"].to_numpy() < before_s)].value_counts().index[:top]
    col = pd.Index(texts).get_indexer(ev["text"])
    keep = (rows >= 0) & (col >= 0)
    counts = sparse.csr_matrix((np.ones(keep.sum()), (rows[keep], col[keep])), shape=(len(windows), len(texts)))
    return counts, list(texts)


WINDOW_TEXTS_FILE = "window_texts.npz"  # in a training directory: each window's counts of the texts, for export


def save_window_texts(path, counts, texts: list[str]) -> None:
    c = sparse.csr_matrix(counts)
    np.savez_compressed(path, data=c.data, indices=c.indices, indptr=c.indptr, shape=c.shape, texts=np.array(texts))


def load_window_texts(path):
    """-> ([windows, texts] sparse counts, the texts), as save_window_texts kept them"""
    f = np.load(path)
    return sparse.csr_matrix((f["data"], f["indices"], f["indptr"]), shape=tuple(f["shape"])), f["texts"].tolist()


def _dense(m) -> np.ndarray:
    return m.toarray() if sparse.issparse(m) else np.asarray(m)


@dataclass(frozen=True)
class TextDecoder:
    coef: np.ndarray  # [design dim, texts]
    intercept: np.ndarray  # [texts]
    shrink: float  # the λ chosen
    mean: np.ndarray | None = None  # a dense design is standardized by the fitted rows first
    scale: np.ndarray | None = None

    @classmethod
    def fit(cls, x, counts, rows: np.ndarray, shrinks=RIDGE_SHRINKS, seed: int = 0) -> TextDecoder:
        """x [N, dim] (dense vectors, standardized by `rows`; or sparse, such as each window's tokens one-hot),
        counts [N, texts] sparse; fitted on `rows`, λ (times the rows fitted) chosen by the squared error on a
        random fifth of them."""
        mean = scale = None
        if not sparse.issparse(x):
            mean, scale = x[rows].mean(0), x[rows].std(0) + 1e-6
            x = ((x - mean) / scale).astype(np.float32)
        if len(rows) == 0 or counts.shape[1] == 0:
            raise ValueError("nothing to decode: no fitted window holds one of the texts")
        held = np.random.default_rng(seed).random(len(rows)) < 0.2

        def ridge(fit: np.ndarray, shrink: float) -> TextDecoder:
            xr, y, n = x[fit], counts[fit], len(fit)
            x_mean, y_mean = np.asarray(xr.mean(0)).ravel(), np.asarray(y.mean(0)).ravel()
            if n < len(x_mean):
                # fewer windows than columns (a vocabulary of 4 + 4 levels of 1,024 is 16,385 tokens): the same
                # solution from the n x n system of the centered windows, X'(XX' + λn)^-1 Y, not the columns' one
                xm = _dense(xr @ x_mean).ravel()
                kernel = _dense(xr @ xr.T) - xm[:, None] - xm[None, :] + x_mean @ x_mean
                dual = np.linalg.solve(kernel + shrink * n * np.eye(n), _dense(y) - y_mean)
                coef = _dense(xr.T @ dual) - np.outer(x_mean, dual.sum(0))
            else:
                gram = _dense(xr.T @ xr) - n * np.outer(x_mean, x_mean)
                cross = _dense(xr.T @ y) - n * np.outer(x_mean, y_mean)
                coef = np.linalg.solve(gram + shrink * n * np.eye(len(x_mean)), cross)
            return cls(coef.astype(np.float32), (y_mean - x_mean @ coef).astype(np.float32), shrink)

        def held_error(shrink: float) -> float:
            pred = ridge(rows[~held], shrink).predict(x[rows[held]])
            return float(((pred - counts[rows[held]].toarray()) ** 2).sum())

        choose = held.any() and not held.all()  # a handful of windows: no fifth to choose λ on, the middle one
        best = ridge(rows, min(shrinks, key=held_error) if choose else shrinks[len(shrinks) // 2])
        return cls(best.coef, best.intercept, best.shrink, mean, scale)

    def predict(self, x) -> np.ndarray:
        if self.mean is not None:
            x = (x - self.mean) / self.scale
        return _dense(x @ self.coef) + self.intercept

    def user_counts(self, x, by_user: list[np.ndarray]) -> np.ndarray:
        """[users, texts]: log1p of the sum of each user's windows' predicted counts, negatives cut at 0."""
        out = np.zeros((len(by_user), len(self.intercept)), np.float32)
        for i, rows in enumerate(by_user):
            if len(rows):
                out[i] = np.log1p(np.maximum(self.predict(x[rows]), 0.0).sum(0))
        return out


def token_one_hot(ids: np.ndarray, vocabulary_size: int):
    """ids [N, levels] (vocabulary ids) -> [N, vocabulary size] sparse: each window's tokens one-hot."""
    rows = np.repeat(np.arange(len(ids)), ids.shape[1])
    data = np.ones(ids.size, np.float32)
    return sparse.csr_matrix((data, (rows, np.asarray(ids).reshape(-1))), shape=(len(ids), vocabulary_size))


def fit_token_texts(
    ids: np.ndarray, source: np.ndarray, counts, rows: np.ndarray, vocabulary_size: int, n_sources: int
) -> TokenTexts:
    """The served decoder of tokens to event texts: ridge (TextDecoder) from each window's one-hot tokens to its
    `counts` of each text, fitted on those of `rows` that hold one of the texts; the sources with such a window
    are the ones it decodes. ids [N, levels], source [N], counts [N, texts] sparse."""
    has_text = np.asarray(counts.getnnz(axis=1) > 0)
    rows = np.asarray(rows)[has_text[rows]]
    decoder = TextDecoder.fit(token_one_hot(ids, vocabulary_size), counts, rows)
    sources = np.zeros(n_sources, np.float32)
    sources[np.unique(np.asarray(source)[rows])] = 1.0
    return TokenTexts(decoder.coef, decoder.intercept, sources)
