"""Codebook capacity on The Complete Journey, read with the tuned probes of `u2qt eval`.

    python3 benchmarks/eval_capacity.py --train-dir artifacts/cj300 [--fits 2]

`u2qt train` chooses 2 shared + 2 specific levels of 256 codes where users have many windows (training/config.py);
that rule was measured with one fixed probe C (docs/eval/levers.md). This fits the MRQ-VAE as `u2qt eval` fits it
(training/evaluation.py: fit_variant, on every household's pre-cut-off windows, codebooks refitted) at each
capacity, `--fits` times each (a refit moves the decoded tokens by about 0.01 AUC), and prints the mean AUC and
signal retention of the decoded tokens and the bag of MRQ-VAE tokens, with the raw baseline, the continuous
embeddings and the latent z beside them, and each capacity's storage against the continuous embeddings.

`--train-dir` gives the configuration, the text encoder and the embedding cache (a model trained on 300
households gives the same configuration as the full one: the eval refits its tokenizers on every household).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import recorded  # noqa: E402

CAPACITIES = {  # name -> (shared levels, specific levels, codes per level)
    "2 + 2 levels of 256 (the default here)": (2, 2, 256),
    "4 + 2 levels of 1,024 (the paper's Table 3)": (4, 2, 1024),
    "4 + 4 levels of 1,024 (the default where users have few windows)": (4, 4, 1024),
}


@recorded
def main() -> None:
    from u2qt.model.entries import PackedEntries
    from u2qt.training.evaluation import (
        BASELINE,
        CONTINUOUS,
        DECODED,
        LATENT,
        EvalConfig,
        fit_variant,
        prepare,
        probe_all,
        signal_retention,
        token_representations,
    )

    p = argparse.ArgumentParser()
    p.add_argument("--train-dir", default="artifacts/cj300", type=Path)
    p.add_argument("--fits", type=int, default=2, help="MRQ-VAE fits per capacity")
    args = p.parse_args()
    started = time.perf_counter()
    cfg = EvalConfig(ablations=False)
    d = prepare(args.train_dir, cfg, None, None, progress=True)
    base = d.ck.train_config
    width = d.text_emb.shape[1]

    reps: dict[str, np.ndarray] = {}
    storage: dict[str, str] = {}
    for name, (shared, specific, size) in CAPACITIES.items():
        config = base.model_copy(deep=True)
        config.quantizer.codebook_size = size
        for fit in range(1, args.fits + 1):
            print(f"fitting {name}, fit {fit} of {args.fits}", flush=True)
            mrq = fit_variant("MRQ-VAE", config, d.corpus, d.text_emb, d.pre_rows, d.names, shared, specific,
                              cfg.tokenizer_epochs, True)  # fmt: skip
            got, _ = token_representations(d, {"MRQ-VAE": mrq})
            if not reps:  # the same for every capacity: the baseline, and what the encoder and projection give
                reps.update({k: got[k] for k in (BASELINE, CONTINUOUS)})
            reps[f"{name}, fit {fit}: latent z"] = got[LATENT]
            reps[f"{name}, fit {fit}: decoded tokens"] = got[DECODED]
            reps[f"{name}, fit {fit}: bag of tokens"] = got["bag of tokens: MRQ-VAE"]
        storage[name] = f"{4 * width / PackedEntries(shared + specific, size).size:.0f}x"

    results = probe_all(d, reps, cfg, progress=True)
    retention = signal_retention(results, BASELINE)
    print(f"command: python3 benchmarks/eval_capacity.py --train-dir {args.train_dir} --fits {args.fits}")
    print(
        f"The Complete Journey: {len(d.users)} users, span {cfg.history_days} days before {cfg.cutoff}, "
        f"{len(results)} tasks, probes as u2qt eval ({len(cfg.seeds)} seeds, C by 3-fold CV); storage: float32 x "
        f"{width} continuous values per window over the bytes of a stored window"
    )
    print(f"{'representation':90s} | storage vs continuous | mean AUC | retention")
    for name in reps:
        auc = np.mean([results[t][name]["auc"] for t in results])
        capacity = next((c for c in storage if name.startswith(c)), None)
        kept = storage[capacity] if capacity and "latent" not in name else "-"
        print(f"{name:90s} | {kept:21s} | {auc:8.4f} | {retention[name]:9.3f}")
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
