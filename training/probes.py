"""Linear probes scored by AUC and KS (paper 5.1.4), repeated over seeds."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def ks_statistic(y: np.ndarray, score: np.ndarray) -> float:
    """Kolmogorov-Smirnov: the largest gap between the score distributions of positives and negatives."""
    fpr, tpr, _ = roc_curve(y, score)
    return float(np.max(tpr - fpr))


PROBE_CS = (0.0001, 0.001, 0.01, 0.1, 1.0)


def probe(
    x: np.ndarray, y: np.ndarray, seed: int, cs: tuple[float, ...] = PROBE_CS, test_size: float = 0.3
) -> tuple[float, float, float]:
    """Logistic regression on standardized features, a stratified user split per seed -> (AUC, KS) on the test
    users and the C used. With several Cs, C is chosen by 3-fold cross-validated AUC on the training users alone,
    from the same grid for every representation: a fixed C suits some widths and over-fits others (a 1,161-d
    pooled embedding then scores below the 201-d linear map of itself), so every representation gets the same
    tuning, not the same C."""
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    if len(cs) == 1:
        head = LogisticRegression(C=cs[0], max_iter=2000)
    else:
        folds = StratifiedKFold(3, shuffle=True, random_state=seed)
        head = LogisticRegressionCV(
            Cs=list(cs), l1_ratios=(0.0,), cv=folds, scoring="roc_auc", max_iter=2000, use_legacy_attributes=False
        )
    clf = make_pipeline(StandardScaler(), head)
    clf.fit(xtr, ytr)
    s = clf.predict_proba(xte)[:, 1]
    c = float(head.C_) if len(cs) > 1 else cs[0]
    return float(roc_auc_score(yte, s)), ks_statistic(yte, s), c


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


def probe_seeds(x: np.ndarray, y: np.ndarray, seeds: list[int], cs: tuple[float, ...] = PROBE_CS) -> dict:
    scores = np.array([probe(x, y, s, cs) for s in seeds])
    return {
        "auc": float(scores[:, 0].mean()),
        "auc_std": float(scores[:, 0].std()),
        "ks": float(scores[:, 1].mean()),
        "ks_std": float(scores[:, 1].std()),
        "c": float(np.median(scores[:, 2])),
    }
