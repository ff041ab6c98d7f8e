"""Linear probes scored by AUC and KS (paper 5.1.4), repeated over seeds."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def ks_statistic(y: np.ndarray, score: np.ndarray) -> float:
    """Kolmogorov-Smirnov: the largest gap between the score distributions of positives and negatives."""
    fpr, tpr, _ = roc_curve(y, score)
    return float(np.max(tpr - fpr))


def probe(x: np.ndarray, y: np.ndarray, seed: int, test_size: float = 0.3, c: float = 0.1) -> tuple[float, float]:
    """Logistic regression on standardized features, a stratified user split per seed -> (AUC, KS) on the test
    users. The same C for every representation, so no representation gets more tuning than another."""
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    clf.fit(xtr, ytr)
    s = clf.predict_proba(xte)[:, 1]
    return float(roc_auc_score(yte, s)), ks_statistic(yte, s)


def signal_retention(results: dict[str, dict[str, dict]], baseline: str) -> dict[str, float]:
    """results: task -> representation -> {"auc": ...}. -> representation -> signal retention: how much of the
    raw-data baseline's signal above chance it keeps, (AUC - 0.5) / (baseline AUC - 0.5), averaged over the tasks
    (tasks where the baseline itself is at chance, AUC <= 0.5, say nothing and are left out)."""
    reps = {r for by_rep in results.values() for r in by_rep}
    out = {}
    for rep in sorted(reps):
        ratios = [
            (by_rep[rep]["auc"] - 0.5) / (by_rep[baseline]["auc"] - 0.5)
            for by_rep in results.values()
            if rep in by_rep and baseline in by_rep and by_rep[baseline]["auc"] > 0.5
        ]
        out[rep] = float(np.mean(ratios)) if ratios else float("nan")
    return out


def probe_seeds(x: np.ndarray, y: np.ndarray, seeds: list[int]) -> dict:
    scores = np.array([probe(x, y, s) for s in seeds])
    return {
        "auc": float(scores[:, 0].mean()),
        "auc_std": float(scores[:, 0].std()),
        "ks": float(scores[:, 1].mean()),
        "ks_std": float(scores[:, 1].std()),
    }
