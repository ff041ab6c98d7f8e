"""Where the raw baseline's edge over the pooled window vectors comes from, on The Complete Journey.

    python3 benchmarks/eval_readers.py --train-dir artifacts/cj300

The same data, span, users, tasks and probes as `u2qt eval` (training/evaluation.py: prepare, probe_all; the
tokenizers fitted as it fits its MRQ-VAE, on the pre-cut-off windows). Prints mean AUC and signal retention of:

1. the raw data in other forms than the baseline's log1p item counts: each source's item shares (counts over the
   user's total: what a mean of item vectors can at best give a linear probe), linear counts, shares beside
   shares x log1p(volume), and the activity and tabular sums alone (what every pooled representation also has);
2. the continuous window embeddings and the decoded tokens pooled as `GET /users/{id}/embedding?kind=tokens`
   pools them (model.decoded.pool_user), and the same with a volume-scaled copy of each source's mean beside it
   (the mean x log1p(the source's events));
3. the pooled means beside a count of the user's windows per cluster (log1p, as the baseline counts items): the
   decoded tokens beside the bag of MRQ-VAE tokens (each level's code is a cluster of windows), the continuous
   embeddings beside their k-means clusters (256 per source, fitted on the pre-cut-off windows);
4. a text window encoded as the mean of its events' text embeddings (each distinct event text embedded alone,
   weighted by log1p of its count in the window, unit norm) instead of one embedding of the rendered window, an
   MRQ-VAE fitted on those, and its continuous and decoded readings.

`--train-dir` gives the configuration, the text encoder and the embedding cache (a model trained on 300
households gives the same configuration as the full one: the eval refits its tokenizers on every household).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import recorded  # noqa: E402


def cluster_counts(values: np.ndarray, d, k: int = 256) -> np.ndarray:
    """Each user's windows in the span counted per k-means cluster of `values` (every corpus row; k clusters per
    source, fitted on its pre-cut-off windows), log1p, the clusters no user has left out."""
    from sklearn.cluster import MiniBatchKMeans

    source = d.corpus.windows["source_index"].to_numpy()
    cluster = np.zeros(len(source), np.int64)
    for s in range(len(d.names)):
        fit = d.pre_rows[source[d.pre_rows] == s]
        rows = np.flatnonzero(source == s)
        kmeans = MiniBatchKMeans(k, random_state=0, n_init=3, batch_size=4096).fit(values[fit])
        cluster[rows] = s * k + kmeans.predict(values[rows])
    x = np.zeros((len(d.users), len(d.names) * k), np.float32)
    for i, user in enumerate(d.users):
        np.add.at(x[i], cluster[d.by_user[user]], 1.0)
    x = np.log1p(x)
    return x[:, x.sum(0) > 0]


def volume_scaled(pooled: np.ndarray, n_sources: int, activity: tuple[str, ...]) -> np.ndarray:
    """pool_user's [users, sources x (dim + activity)] -> the same with each source's mean times log1p(its events)
    appended (`activity`: model.decoded.ACTIVITY, the names of the columns after each source's mean)."""
    blocks = pooled.reshape(len(pooled), n_sources, -1)
    mean, events = blocks[:, :, : -len(activity)], blocks[:, :, -len(activity) + activity.index("events")]
    return np.hstack([pooled, (mean * events[:, :, None]).reshape(len(pooled), -1)])


@recorded
def main() -> None:
    from u2qt.model.decoded import ACTIVITY
    from u2qt.model.sources import window_start
    from u2qt.training.embeddings import embed_texts_cached
    from u2qt.training.evaluation import (
        BASELINE,
        CONTINUOUS,
        DECODED,
        EvalConfig,
        fit_variant,
        prepare,
        probe_all,
        raw_baseline,
        signal_retention,
        token_representations,
    )

    p = argparse.ArgumentParser()
    p.add_argument("--train-dir", default="artifacts/cj300", type=Path)
    args = p.parse_args()
    started = time.perf_counter()
    cfg = EvalConfig(ablations=False)
    d = prepare(args.train_dir, cfg, None, None, progress=True)
    base = d.ck.train_config
    q = base.quantizer
    n_sources = len(d.names)

    def readings(label: str, beside: bool = True) -> dict[str, np.ndarray]:
        """The continuous embeddings and the decoded tokens, pooled, and (`beside`) the same with more beside."""
        mrq = fit_variant("MRQ-VAE", base, d.corpus, d.text_emb, d.pre_rows, d.names, q.shared_levels,
                          q.specific_levels, cfg.tokenizer_epochs, False)  # fmt: skip
        reps, src_emb = token_representations(d, {"MRQ-VAE": mrq})
        out = {}
        for key, name in ((CONTINUOUS, "continuous"), (DECODED, "decoded tokens")):
            out[f"{label}: {name}, pooled"] = reps[key]
            if beside:
                out[f"{label}: {name}, pooled + volume-scaled mean"] = volume_scaled(reps[key], n_sources, ACTIVITY)
        if not beside:
            return out
        bag = reps["bag of tokens: MRQ-VAE"]
        out[f"{label}: decoded tokens, pooled + bag of tokens"] = np.hstack([reps[DECODED], bag[:, bag.sum(0) > 0]])
        out[f"{label}: continuous, pooled + k-means cluster counts"] = np.hstack(
            [reps[CONTINUOUS], cluster_counts(src_emb, d)]
        )
        return out

    reps = {BASELINE: raw_baseline(d.events, d.sources, d.users, d.lo, d.hi)}
    ev = d.events[(d.events["ts"] >= d.lo) & (d.events["ts"] < d.hi) & d.events["user_id"].isin(d.users)]
    text = ev[ev["text"].notna()]
    counts = [
        pd.crosstab(t["user_id"], t["text"]).reindex(index=d.users, fill_value=0).to_numpy(np.float64)
        for _, t in text.groupby("source")
    ]
    rest = reps[BASELINE][:, text["text"].nunique() :]  # raw_baseline: the bag of texts, then tabular sums, activity
    shares = [c / np.maximum(c.sum(1, keepdims=True), 1.0) for c in counts]
    reps["raw: item shares per source + the rest"] = np.hstack([*shares, rest])
    reps["raw: item counts (linear) + the rest"] = np.hstack([*counts, rest])
    volume = [s * np.log1p(c.sum(1, keepdims=True)) for s, c in zip(shares, counts, strict=True)]
    reps["raw: item shares + shares x log1p(volume) + the rest"] = np.hstack([*shares, *volume, rest])
    reps["raw: the rest alone (tabular sums, activity)"] = rest
    reps.update(readings("rendered window"))

    # each text window as the log1p-count-weighted mean of its events' text embeddings
    w = d.corpus.windows
    # an event's window, keyed as build_corpus keys it: (user, source, window_start)
    row_of = {k: r for r, k in enumerate(zip(w["user_id"], w["source"], w["window_start"], strict=True))}
    events = d.events[d.events["text"].notna()]
    texts = sorted(events["text"].unique())
    emb, _ = embed_texts_cached(texts, args.train_dir / "encoder", d.ck.encoder, args.train_dir / "cache", 64, False)
    starts = window_start(events["ts"].to_numpy(), d.sources.period_s)
    rows = np.array([row_of[k] for k in zip(events["user_id"], events["source"], starts, strict=True)])
    item = events["text"].map({t: i for i, t in enumerate(texts)}).to_numpy()
    pair, n = np.unique(rows.astype(np.int64) * len(texts) + item, return_counts=True)
    weight = np.log1p(n)
    x = np.zeros((len(w), emb.shape[1]))
    np.add.at(x, pair // len(texts), emb[pair % len(texts)] * weight[:, None])
    has = np.bincount(pair // len(texts), weights=weight, minlength=len(w)) > 0
    d.text_emb = d.text_emb.copy()
    d.text_emb[has] = x[has] / np.linalg.norm(x[has], axis=1, keepdims=True)
    reps.update({k: v for k, v in readings("mean of event embeddings").items() if "volume" not in k and " + " not in k})

    results = probe_all(d, reps, cfg, progress=True)
    retention = signal_retention(results, BASELINE)
    print(f"command: python3 benchmarks/eval_readers.py --train-dir {args.train_dir}")
    print(
        f"The Complete Journey: {len(d.users)} users, span {cfg.history_days} days before {cfg.cutoff}, "
        f"{len(results)} tasks, probes as u2qt eval ({len(cfg.seeds)} seeds, C by 3-fold CV)"
    )
    print(f"{'representation':78s} | width | mean AUC | retention")
    for name, x in reps.items():
        auc = np.mean([results[t][name]["auc"] for t in results])
        print(f"{name:78s} | {x.shape[1]:5d} | {auc:8.4f} | {retention[name]:9.3f}")
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
