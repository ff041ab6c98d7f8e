"""`u2qt eval` end to end on the small real slice: every table of the report is produced from real probes."""

import json

import numpy as np
import pytest

from u2qt.training.config import AlignConfig
from u2qt.training.eval_report import BASELINE, CONTINUOUS_TEXTS, DECODED
from u2qt.training.evaluation import EvalConfig, run_eval
from u2qt.training.probes import ks_statistic


def test_ks_statistic_is_the_largest_gap_between_score_distributions():
    y = np.array([0, 0, 1, 1])
    assert ks_statistic(y, np.array([0.1, 0.2, 0.8, 0.9])) == pytest.approx(1.0)
    assert ks_statistic(y, np.array([0.9, 0.8, 0.2, 0.1])) == pytest.approx(0.0)
    assert ks_statistic(y, np.array([0.1, 0.6, 0.5, 0.9])) == pytest.approx(0.5)


@pytest.mark.slow
def test_eval_writes_every_table_from_real_probes(trained_dir, cj_events, tmp_path):
    events, _ = cj_events
    cfg = EvalConfig(
        seeds=[0, 1],
        tokenizer_epochs=2,
        align=AlignConfig(epochs=1, min_steps=0, crop_every_days=56),
        min_users=20,
        ctr_categories=20,
    )
    report = run_eval(trained_dir[0], tmp_path, cfg, events=events, progress=False)
    md = (tmp_path / "report.md").read_text()
    for heading in ("Table 3", "Table 4", "Table 5", "Table 6", "Collisions", "Targets from the paper"):
        assert heading in md
    assert (tmp_path / "utilization.png").stat().st_size > 10_000
    assert (tmp_path / "source_embeddings.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "report.json").read_text())["users"] == report["users"]
    reps = next(iter(report["results"].values()))
    for name in (
        "bag of tokens: MRQ-VAE",
        "bag of tokens: RQ-VAE, shared levels only",
        "bag of tokens: specific levels only",
        "bag of tokens: MRQ-VAE without visits",
        "history model: S+T+W",
    ):
        assert name in reps
    for r in report["results"].values():
        for score in r.values():
            assert 0.0 <= score["auc"] <= 1.0 and 0.0 <= score["ks"] <= 1.0
            assert min(cfg.probe_cs) <= score["c"] <= max(cfg.probe_cs)
    assert "cross-validated AUC on the training users" in md
    st = report["storage_bytes_per_user"]
    assert next(v for k, v in st.items() if k.startswith("tokens")) < next(
        v for k, v in st.items() if k.startswith("continuous")
    )
    assert report["collisions"]["after fallback"] == 0.0
    assert set(report["retention"]) == set(reps) and "signal retention" in md
    assert report["retention"][BASELINE] == pytest.approx(1.0)
    assert DECODED in reps and "best token-based representation" in md
    # the continuous embeddings are also read with their windows decoded to event texts, and judged by the better
    assert CONTINUOUS_TEXTS in reps and CONTINUOUS_TEXTS in md and "continuous window embeddings retain" in md
    # the decoded tokens are pooled with the reader the service serves for these weekly shoppers
    assert report["reader"]["soft_counts"] == 256 and "256 random ReLU features" in md


def test_signal_retention_is_the_share_of_the_baselines_signal_above_chance():
    from u2qt.training.probes import signal_retention

    results = {
        "a": {"raw": {"auc": 0.7}, "tokens": {"auc": 0.6}, "dense": {"auc": 0.75}},
        "b": {"raw": {"auc": 0.8}, "tokens": {"auc": 0.8}, "dense": {"auc": 0.65}},
        "at chance": {"raw": {"auc": 0.5}, "tokens": {"auc": 0.9}, "dense": {"auc": 0.4}},  # says nothing
    }
    got = signal_retention(results, "raw")
    assert got["raw"] == pytest.approx(1.0)
    assert got["tokens"] == pytest.approx((0.5 + 1.0) / 2)
    assert got["dense"] == pytest.approx((1.25 + 0.5) / 2)


def test_probe_chooses_c_by_cross_validated_auc_on_the_training_users_alone():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from u2qt.training.probes import probe

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    x = np.outer(y - 0.5, rng.normal(size=200)) * 0.1 + rng.normal(size=(300, 200))
    grid = (0.0001, 0.01, 1.0)
    auc, _, c = probe(x, y, seed=3, cs=grid)
    xtr, _, ytr, _ = train_test_split(x, y, test_size=0.3, random_state=3, stratify=y)
    folds = StratifiedKFold(3, shuffle=True, random_state=3)
    head = {g: make_pipeline(StandardScaler(), LogisticRegression(C=g, max_iter=2000)) for g in grid}
    cv_auc = {g: cross_val_score(head[g], xtr, ytr, cv=folds, scoring="roc_auc").mean() for g in grid}
    assert c == max(cv_auc, key=cv_auc.get)
    assert probe(x, y, seed=3, cs=(0.5,))[2] == 0.5, "one C is used as given"
    assert 0.5 < auc <= 1.0


def test_soft_counts_with_a_fire_rate_count_each_feature_on_that_share_of_the_training_windows(tmp_path):
    """SoftCountVariant.fit(fire_rate=r) offsets every feature so that it is positive on a share r of the windows it
    was fitted on (a smaller region of the space for a smaller r); without it the variant is the served reader, which
    fires each feature on about half the windows and exports its three tensors."""
    from benchmarks.soft_count_variants import SoftCountVariant
    from u2qt.model.decoded import CODEBOOKS_FILE, SoftCounts, load_soft_counts, save_codebooks

    x = np.random.default_rng(0).normal(size=(4000, 16)) * np.linspace(0.5, 3, 16) + 2.0
    for rate in (0.5, 0.1, 0.02):
        fired = (SoftCountVariant.fit(x, 32, fire_rate=rate)(x) > 0).mean(0)
        np.testing.assert_allclose(fired, rate, atol=1.5 / len(x))
    plain = SoftCounts.fit(x, 32)
    assert 0.4 < (plain(x) > 0).mean() < 0.6
    np.testing.assert_array_equal(SoftCountVariant.fit(x, 32)(x), plain(x))
    assert set(plain.tensors()) == {"soft_counts_mean", "soft_counts_scale", "soft_counts_projection"}
    save_codebooks(tmp_path / CODEBOOKS_FILE, [np.zeros((4, 16), np.float32)], plain)
    np.testing.assert_array_equal(load_soft_counts(tmp_path)(x), plain(x))


def test_whitened_soft_counts_weigh_every_principal_direction_equally():
    """SoftCountVariant.fit(whiten=λ) draws the seed's Gaussian projection R in the whitened space of the standardized
    windows: their projections then have covariance R^T R, whatever the correlations between the inputs (without
    it, the dominant directions dominate every feature), and with λ large the reader is the plain one, scaled."""
    from benchmarks.soft_count_variants import SoftCountVariant
    from u2qt.model.decoded import SoftCounts

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 12)) @ rng.normal(size=(12, 12)) * 3.0 + 1.0
    r = np.random.default_rng(7).standard_normal((12, 40)) / np.sqrt(12)
    white = SoftCountVariant.fit(x, 40, seed=7, whiten=1e-9)
    standardized = (x - white.mean) / white.scale
    np.testing.assert_allclose(np.cov(standardized @ white.projection, rowvar=False), r.T @ r, atol=1e-3)
    plain = SoftCounts.fit(x, 40, seed=7)
    assert np.abs(np.cov(standardized @ plain.projection, rowvar=False) - r.T @ r).max() > 0.5
    shrunk = SoftCountVariant.fit(x, 40, seed=7, whiten=1e6)
    np.testing.assert_allclose(shrunk.projection * 1e3, plain.projection, rtol=1e-3)


def test_soft_counts_standardized_per_source_split_each_sources_windows():
    """SoftCountVariant.fit(source=..., n_sources=...) standardizes each source by its own windows: where sources lie
    apart, a shared standardization leaves features that fire on all of one source's windows or on none (they count
    windows of a source, which the activity already does); per source, every feature fires on about half of each
    source's windows. pool_user hands each window's source to the reader."""
    from benchmarks.soft_count_variants import SoftCountVariant
    from u2qt.model.decoded import SoftCounts, pool_user

    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(size=(3000, 16)) + 5.0, rng.normal(size=(1000, 16)) * 3.0 - 4.0])
    src = np.repeat([0, 1], [3000, 1000])
    shared, own = SoftCounts.fit(x, 64), SoftCountVariant.fit(x, 64, source=src, n_sources=3)
    assert own.mean.shape == (3, 16) and (own.mean[2] == 0).all() and (own.scale[2] == 1).all()
    for s in (0, 1):
        mine = src == s
        np.testing.assert_allclose(own.mean[s], x[mine].mean(0), atol=1e-5)
        assert (shared(x[mine]) > 0).mean(0).std() > 0.3
        np.testing.assert_allclose((own(x[mine], src[mine]) > 0).mean(0), 0.5, atol=0.06)

    user = slice(2990, 3010)  # ten windows of each source
    pooled = pool_user(x[user], src[user], np.ones(20), np.arange(20), 2, 20, 30, own).reshape(2, -1)
    for s in (0, 1):
        mine = src[user] == s
        np.testing.assert_allclose(pooled[s, -64:], np.log1p(own(x[user][mine], src[user][mine]).sum(0)), rtol=1e-5)
