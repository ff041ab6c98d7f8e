"""The same tokens read level by level: is a window's codeword *sum* what loses the signal?

    python3 benchmarks/eval_level_readers.py --train-dir artifacts/ml-100k --data data/ml-100k --cutoff 1998-03-01
    python3 benchmarks/eval_level_readers.py --train-dir artifacts/cj300

The decoded tokens `GET /users/{id}/embedding?kind=tokens` serves are each window's codeword sum (the quantized
latent, code_dim floats), pooled per source. A sum is one linear map of the window's codewords side by side, so a
linear probe on the pooled codewords of each level, side by side, can read everything the sum gives it and what
the sum cancels out. Prints mean AUC and signal retention, with the same users, span, tasks and probes as
`u2qt eval` (training/evaluation.py: prepare, fit_variant, token_representations, probe_all), of:

1. the codeword sums, pooled (as served), the latent z and the continuous embeddings (what the tokens approximate);
2. each level's codeword, pooled, the levels side by side (levels x code_dim floats a source);
3. the shared levels' sum beside the specific levels' sum (2 x code_dim): the MRQ-VAE's two halves;
4. the running sums after each level (the reconstruction at every depth), side by side.

`--data` takes a data set of `u2qt dataset` (events.parquet, labels.csv); without it, The Complete Journey.
"""

from __future__ import annotations

import argparse
import sys
import time
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


def level_codewords(tok, n_rows: int) -> np.ndarray:
    """Each window's codeword of every level, [n_rows, levels, code_dim] (zeros where the tokenizer has no
    window): the terms model.decoded.codeword_sums adds up."""
    q = tok.model.quantizer
    out = np.zeros((n_rows, len(q.codebooks), q.dim), np.float32)
    for level, cb in enumerate(q.codebooks):
        table = cb.detach().numpy()
        block = tok.source_index if level >= q.shared_levels else 0
        out[tok.rows, level] = table[block * q.codebook_size + tok.codes[:, level]]
    return out


@recorded
def main() -> None:
    from u2qt.training.evaluation import (
        BASELINE,
        CONTINUOUS,
        DECODED,
        LATENT,
        pooled,
        probe_all,
        token_representations,
    )

    p = argparse.ArgumentParser()
    add_eval_data_arguments(p, "artifacts/cj300")
    args = p.parse_args()
    started = time.perf_counter()
    cfg, d = eval_data(args)
    q = d.ck.train_config.quantizer
    mrq = fit_eval_mrq_vae(cfg, d)
    every, _ = token_representations(d, {"MRQ-VAE": mrq})
    per_level = level_codewords(mrq, len(d.corpus))
    n, levels, dim = per_level.shape
    shared = mrq.model.quantizer.shared_levels
    reps = {k: every[k] for k in (BASELINE, CONTINUOUS, LATENT, DECODED)}
    reps["each level's codeword, pooled, side by side"] = pooled(per_level.reshape(n, levels * dim), d)
    halves = np.hstack([per_level[:, :shared].sum(1), per_level[:, shared:].sum(1)])
    reps["shared levels' sum beside specific levels' sum, pooled"] = pooled(halves, d)
    reps["running sums after each level, pooled, side by side"] = pooled(np.cumsum(per_level, 1).reshape(n, -1), d)
    results = probe_all(d, reps, cfg, progress=False)
    print(f"command: python3 {' '.join(sys.argv)}")
    print(f"{len(d.users)} users, {len(results)} tasks, {levels} levels ({shared} shared) of {q.codebook_size} codes")
    print_retention_table(reps, results, BASELINE)
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
