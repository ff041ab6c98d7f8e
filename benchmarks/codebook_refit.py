"""Codebooks refitted to the trained encoder (training/train.py: refit_codebooks) against the codebooks gradient
descent left, on windows the tokenizer saw and on windows of users it did not:

    python3 benchmarks/codebook_refit.py --train-dir artifacts/ml-100k --data data/ml-100k --cutoff 1998-03-01
    python3 benchmarks/codebook_refit.py --train-dir artifacts/cj300

An MRQ-VAE is fitted as `u2qt eval` fits its tokenizers (training/evaluation.py: fit_variant, the pre-cut-off
windows, its epochs), but on the windows of 80% of the users only, without the refit; then a copy of it gets its
codebooks refitted on the same windows. For each: the quantization error (|z - z_hat|^2 over |z|^2, mean over
windows) on the fitted users' windows and on the held-out users' windows, the share of each level's codes in
use (mean over levels), and the signal retention of the decoded tokens of every user (the held-out fifth coded
out of sample), beside the latent z they approximate, with `u2qt eval`'s probes and raw-data baseline.

`--data` takes a data set of `u2qt dataset` (events.parquet, labels.csv); without it, The Complete Journey.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import add_eval_data_arguments, eval_data, recorded  # noqa: E402


@recorded
def main() -> None:
    import torch

    from u2qt.training.evaluation import (
        BASELINE,
        LATENT,
        Tokenized,
        decoded_tokens,
        fit_variant,
        pooled,
        probe_all,
        raw_baseline,
        signal_retention,
    )
    from u2qt.training.train import corpus_tensors, refit_codebooks

    p = argparse.ArgumentParser()
    add_eval_data_arguments(p, "artifacts/cj300")
    p.add_argument("--code-dim", type=int, help="the latent's width (default: the checkpoint's)")
    p.add_argument("--held-out", type=float, default=0.2, help="share of users whose windows the tokenizer never sees")
    args = p.parse_args()
    started = time.perf_counter()
    cfg, d = eval_data(args)
    base = d.ck.train_config
    if args.code_dim:
        base = base.model_copy(update={"quantizer": base.quantizer.model_copy(update={"code_dim": args.code_dim})})
    q = base.quantizer
    no_refit = base.model_copy(update={"optim": base.optim.model_copy(update={"codebook_refit": False})})

    uid = d.corpus.windows["user_id"].to_numpy()
    users = np.unique(uid[d.pre_rows])
    n_held = int(len(users) * args.held_out)
    held = np.isin(uid, np.random.default_rng(0).choice(users, n_held, replace=False))
    fit_rows, held_rows = d.pre_rows[~held[d.pre_rows]], d.pre_rows[held[d.pre_rows]]
    trained = fit_variant("MRQ-VAE", no_refit, d.corpus, d.text_emb, fit_rows, d.names, q.shared_levels,
                          q.specific_levels, cfg.tokenizer_epochs, False)  # fmt: skip
    e, s, f = corpus_tensors(d.corpus, d.text_emb)
    refitted = copy.deepcopy(trained.model)
    refit_codebooks(refitted, e, s, f, torch.from_numpy(fit_rows), base.optim.seed)
    with torch.no_grad():
        z = trained.model.encoder(trained.model.source_embedding(e, s, f))

    reps = {BASELINE: raw_baseline(d.events, d.sources, d.users, d.lo, d.hi), LATENT: pooled(z.numpy(), d)}
    errors = {}
    for name, model in (("trained codebooks", trained.model), ("refitted codebooks", refitted)):
        codes, zhat = model.quantizer.encode(z[torch.from_numpy(d.pre_rows)], s[torch.from_numpy(d.pre_rows)])
        err = ((zhat - z[torch.from_numpy(d.pre_rows)]) ** 2).sum(-1) / (z[torch.from_numpy(d.pre_rows)] ** 2).sum(-1)
        fitted = ~held[d.pre_rows]
        use = []
        for level in range(codes.shape[1]):
            blocks = model.quantizer.blocks(level)  # a specific level: one block of codes per source
            flat = codes[:, level].numpy() + q.codebook_size * (s.numpy()[d.pre_rows] if blocks > 1 else 0)
            use.append(len(np.unique(flat)) / (blocks * q.codebook_size))
        use = float(np.mean(use))
        errors[name] = (float(err[torch.from_numpy(fitted)].mean()), float(err[torch.from_numpy(~fitted)].mean()), use)
        tok = Tokenized(name, trained.vocabulary, codes.numpy(), d.pre_rows, s.numpy()[d.pre_rows], model)
        reps[f"decoded tokens, {name}, pooled"] = pooled(decoded_tokens(tok, len(d.corpus)), d)
    results = probe_all(d, reps, cfg, progress=False)
    retention = signal_retention(results, BASELINE)

    print(f"command: python3 {' '.join(sys.argv)}")
    print(
        f"{len(d.users)} users; tokenizer fitted on {len(fit_rows):,} windows of {len(users) - n_held} users, "
        f"{len(held_rows):,} windows held out; {q.shared_levels} shared + {q.specific_levels} specific levels of "
        f"{q.codebook_size} codes, code_dim {q.code_dim}, {cfg.tokenizer_epochs} epochs"
    )
    print(f"{'codebooks':20s} {'quantization error, fitted':>27s} {'held out':>9s} {'codebook use':>13s}")
    for name, (fit_err, held_err, use) in errors.items():
        print(f"{name:20s} {fit_err:27.4f} {held_err:9.4f} {use:13.1%}")
    print(f"\n{'representation':62s} {'AUC':>6}  retention")
    for name in reps:
        auc = float(np.mean([results[t][name]["auc"] for t in results]))
        print(f"{name:62s} {auc:.4f}  {retention[name]:.3f}")
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
