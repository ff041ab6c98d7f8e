"""A user's window vectors pooled by more than their mean: does a nonlinear pooling read what the raw logs' log
counts give a linear probe?

    python3 benchmarks/eval_pooling.py --train-dir artifacts/cj300
    python3 benchmarks/eval_pooling.py --train-dir artifacts/ml-100k --data data/ml-100k --cutoff 1998-03-01
    python3 benchmarks/eval_pooling.py --train-dir artifacts/cj300-1d --readers soft --soft-counts 256 1024
    python3 benchmarks/eval_pooling.py --train-dir artifacts/cj300-1d --readers texts

The raw baseline's edge on The Complete Journey is its per-item log counts, a nonlinearity no mean of window
vectors carries (docs/eval/levers.md, "Where the raw baseline's edge is"). A ranker could be served more than the
mean: per source, beside the mean and activity (model.decoded.pool_user without soft counts), the max of each dimension
over the user's windows (did any window go far along it), their standard deviation, or log1p of the sum of 256
random ReLU features of each window (model.decoded.SoftCounts: standardized, a fixed Gaussian projection, a soft
count of the user's windows per region of the space, as the baseline counts items; what `u2qt train` serves where
users have many windows). Prints mean AUC and signal retention of each, for the continuous window embeddings and
the decoded tokens, with the same users, span, tasks and probes as `u2qt eval` (training/evaluation.py: prepare,
fit_variant, token_representations, probe_all). `--readers` picks which of the three join the mean; `--soft-counts`
how many random features the soft counts have (a row for each number); `--fire-rates` adds, for each number, soft
counts whose features are offset to fire on that share of the training windows (0.5 is about the default's);
`--whiten λ …` soft counts whose projection is drawn in the whitened space, `--per-source` soft counts that
standardize each source by its own windows (the three: benchmarks/soft_count_variants.py). `texts` (`--readers
texts`) reads each window back into the raw baseline's vocabulary (training/event_texts.py: a ridge map from the
window to its counts of each event text, the `--texts` most frequent, cut at 0, summed over the user's windows,
log1p): from the continuous
embeddings (as counts and as presence) and from the tokens one-hot, beside the mean and beside the served reader;
`--texts-features N` adds a decoder of the continuous embeddings that reads N random ReLU features of each window
(SoftCounts) beside its vector.

`--data` takes a data set of `u2qt dataset` (events.parquet, labels.csv); without it, The Complete Journey.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import (  # noqa: E402
    add_eval_data_arguments,
    eval_data,
    fit_eval_mrq_vae,
    print_retention_table,
    recorded,
)
from benchmarks.soft_count_variants import SoftCountVariant  # noqa: E402

READERS = ("max", "std", "soft", "texts")


def per_source(values: np.ndarray, d, reduce) -> np.ndarray:
    """[users, sources x dim]: `reduce` over each source's windows of the user in the span (zeros: none)."""
    source = d.corpus.windows["source_index"].to_numpy()
    dim = values.shape[1]
    out = np.zeros((len(d.users), len(d.names) * dim), np.float32)
    for i, user in enumerate(d.users):
        rows = np.asarray(d.by_user[user])
        for s in range(len(d.names)):
            mine = rows[source[rows] == s]
            if len(mine):
                out[i, s * dim : (s + 1) * dim] = reduce(values[mine])
    return out


@recorded
def main() -> None:
    from u2qt.model.decoded import SoftCounts
    from u2qt.training.eval_report import CONTINUOUS, CONTINUOUS_TEXTS, DECODED
    from u2qt.training.evaluation import (
        BASELINE,
        BASELINE_TEXTS,
        decoded_event_texts,
        decoded_token_texts,
        decoded_tokens,
        decoded_window_texts,
        pooled,
        probe_all,
        token_representations,
    )

    p = argparse.ArgumentParser()
    add_eval_data_arguments(p, "artifacts/cj300")
    p.add_argument("--readers", nargs="+", choices=READERS, default=list(READERS), help="besides the mean")
    p.add_argument("--soft-counts", nargs="+", type=int, default=[256], help="random features of each soft reader")
    p.add_argument(
        "--fire-rates",
        nargs="+",
        type=float,
        default=[],
        help="also soft readers whose features each fire on this share of the training windows (SoftCountVariant)",
    )
    p.add_argument(
        "--per-source",
        action="store_true",
        help="also soft readers that standardize each source by its own windows (SoftCountVariant)",
    )
    p.add_argument(
        "--whiten",
        nargs="+",
        type=float,
        default=[],
        help="also soft readers whose projection is drawn in the whitened space, variances shrunk by this",
    )
    p.add_argument("--texts", type=int, default=1000, help="event texts the texts reader decodes to (top by count)")
    p.add_argument(
        "--texts-features",
        nargs="+",
        type=int,
        default=[],
        help="also decode the continuous embeddings from the vector beside this many random ReLU features of it",
    )
    args = p.parse_args()
    started = time.perf_counter()
    cfg, d = eval_data(args)
    mrq = fit_eval_mrq_vae(cfg, d)
    every, src_emb = token_representations(d, {"MRQ-VAE": mrq})
    reps = {BASELINE: every[BASELINE]}
    # SoftCountVariant.fit's options, each a row beside the plain reader (the served one)
    soft_variants = [("", {})]
    soft_variants += [(f" firing on {rate:g}", {"fire_rate": rate}) for rate in args.fire_rates]
    if args.per_source:
        source = d.corpus.windows["source_index"].to_numpy()[d.pre_rows]
        soft_variants += [(", standardized per source", {"source": source, "n_sources": len(d.names)})]
    soft_variants += [(f", whitened (λ {shrink:g})", {"whiten": shrink}) for shrink in args.whiten]
    readings = (("continuous", src_emb), ("decoded tokens", decoded_tokens(mrq, len(d.corpus))))
    counts = None
    if "texts" in args.readers:
        from u2qt.training.event_texts import window_text_counts

        counts, _ = window_text_counts(d.events, d.corpus.windows, d.sources.period_s, d.cut_s, args.texts)
    for label, values in readings:
        mean = pooled(values, d, soft_counts=0)
        reps[f"{label}: mean (served where users have few windows)"] = mean
        if "max" in args.readers:
            reps[f"{label}: mean + max"] = np.hstack([mean, per_source(values, d, lambda x: x.max(0))])
        if "std" in args.readers:
            reps[f"{label}: mean + standard deviation"] = np.hstack([mean, per_source(values, d, lambda x: x.std(0))])
        for features in args.soft_counts if "soft" in args.readers else ():
            # model.decoded.SoftCounts, as pool_user serves them where users have many windows (u2qt train: 256)
            for suffix, options in soft_variants:
                fit = partial(SoftCountVariant.fit, **options) if options else SoftCounts.fit
                reps[f"{label}: mean + soft counts, {features} features{suffix}"] = pooled(
                    values, d, soft_counts=features, fit_soft_counts=fit
                )
        if "texts" in args.readers:
            # the checkpoint's soft counts (or the mean alone), before the decoded texts the served reader appends
            reps[f"{label}: mean + soft counts as served, no texts"] = pooled(values, d)
            if label != "continuous":  # decoded tokens: decoded from their one-hot, below (a row of the map per token)
                continue
            if args.texts == d.ck.train_config.reader.texts:
                reps[f"{label}: read as the served reader (soft counts + texts decoded from the vector)"] = every[
                    CONTINUOUS
                ]
            same = args.texts == BASELINE_TEXTS and CONTINUOUS_TEXTS in every  # u2qt eval's row: not fitted twice
            texts = every[CONTINUOUS_TEXTS][:, mean.shape[1] :] if same else decoded_event_texts(values, d, counts)
            reps[f"{label}: mean + decoded event texts"] = np.hstack([mean, texts])
            reps[f"{label}: mean + decoded event texts, as presence"] = np.hstack(
                [mean, decoded_event_texts(values, d, counts.sign())]
            )
            for features in args.texts_features:  # a nonlinear decoder: the vector and its soft-count features
                relu = SoftCounts.fit(values[d.pre_rows], features)
                design = np.hstack([values, relu(values)]).astype(np.float32)
                reps[f"{label}: mean + event texts decoded from the vector and {features} ReLU features"] = np.hstack(
                    [mean, decoded_event_texts(design, d, counts)]
                )
    if "texts" in args.readers:
        # model.decoded.TokenTexts, fitted as u2qt export fits it: a row of the map per token
        texts = decoded_token_texts(mrq, d, counts)
        tokens = dict(readings)["decoded tokens"]
        reps["decoded tokens: mean + event texts decoded from the tokens one-hot"] = pooled(
            tokens, d, soft_counts=0, texts=texts
        )
        # the linear alternative a codeword-sum decoder would be: a map of the 64 floats, no row per token
        reps["decoded tokens: mean + event texts decoded from the codeword sums"] = pooled(
            tokens, d, soft_counts=0, texts=decoded_window_texts(tokens, d, counts)
        )
        reps["decoded tokens: served reader (soft counts as the checkpoint's, texts decoded from the one-hot)"] = (
            every[DECODED] if args.texts == d.ck.train_config.reader.texts else pooled(tokens, d, texts=texts)
        )
    results = probe_all(d, reps, cfg, progress=True)
    print(f"command: python3 {' '.join(sys.argv)}")
    print(f"{len(d.users)} users, {len(results)} tasks; probes as u2qt eval ({len(cfg.seeds)} seeds, C by 3-fold CV)")
    print_retention_table(reps, results, BASELINE)
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
