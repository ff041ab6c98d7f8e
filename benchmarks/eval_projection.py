"""What a window's latent z keeps, by its width, against linear projections of the continuous embeddings:

    python3 benchmarks/eval_projection.py --train-dir artifacts/ml-100k --data data/ml-100k --cutoff 1998-03-01 \
        --code-dims 64 128 256 --seeds 0 1 2
    python3 benchmarks/eval_projection.py --train-dir artifacts/cj300-1d --code-dims 64 128 --seeds 0 1

The tokens approximate the latent z (`quantizer.code_dim` floats a window), which the MRQ-VAE's encoder learns to
project the continuous embeddings to. Where the latent keeps less than the continuous embeddings, is that its
width or the learned projection? Each window's continuous embedding projected on its first k principal components
(fitted on the windows before the cut-off) or on k random directions (`--widths`) is read by its mean, as is the
latent z and the decoded tokens (each window's codeword sum) of an MRQ-VAE fitted with each `--code-dims` width and
`--seeds` seed (with the checkpoint's served reader too, where it reads more than the mean). The same users, span,
tasks and probes as `u2qt eval` (training/evaluation.py: prepare, fit_variant, token_representations, probe_all).
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


@recorded
def main() -> None:
    from sklearn.decomposition import PCA

    from u2qt.training.eval_report import CONTINUOUS, DECODED, LATENT
    from u2qt.training.evaluation import BASELINE, decoded_tokens, pooled, probe_all, token_representations

    p = argparse.ArgumentParser()
    add_eval_data_arguments(p, "artifacts/cj300-1d")
    p.add_argument("--widths", nargs="+", type=int, default=[64, 128], help="k of each linear projection")
    p.add_argument("--code-dims", nargs="+", type=int, default=[], help="latent widths to fit (default: the model's)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="an MRQ-VAE fit per seed and latent width")
    args = p.parse_args()
    started = time.perf_counter()
    cfg, d = eval_data(args)
    served = bool(d.ck.train_config.reader.soft_counts or d.ck.train_config.reader.texts)
    reps: dict[str, np.ndarray] = {}
    for seed in args.seeds:
        for code_dim in args.code_dims or [d.ck.train_config.quantizer.code_dim]:
            mrq = fit_eval_mrq_vae(cfg, d, code_dim, seed)
            every, cont = token_representations(d, {"MRQ-VAE": mrq})
            fit = f"fit {seed}, code_dim {code_dim}"
            # each fit's continuous embeddings differ where a source is tabular (its encoder is fitted with it);
            # the linear projections are of the first fit's
            if not reps:
                reps[BASELINE] = every[BASELINE]
                reps[f"{fit}: continuous, mean"] = pooled(cont, d, soft_counts=0)
                if served:  # the served reader reads more than the mean: its rows too
                    reps[f"{fit}: continuous, {CONTINUOUS}"] = every[CONTINUOUS]
                centred = cont - cont[d.pre_rows].mean(0)
                for k in args.widths:
                    pca = PCA(k, random_state=0).fit(cont[d.pre_rows])
                    reps[f"{fit}: first {k} principal components of the continuous, mean"] = pooled(
                        pca.transform(cont).astype(np.float32), d, soft_counts=0
                    )
                    projection = np.random.default_rng(0).standard_normal((cont.shape[1], k)).astype(np.float32)
                    reps[f"{fit}: {k} random directions of the continuous, mean"] = pooled(
                        centred @ (projection / np.sqrt(cont.shape[1])), d, soft_counts=0
                    )
            else:
                reps[f"{fit}: continuous, mean"] = pooled(cont, d, soft_counts=0)
            reps[f"{fit}: latent z, mean"] = pooled(_latent(mrq, cont), d, soft_counts=0)
            reps[f"{fit}: decoded tokens, mean"] = pooled(decoded_tokens(mrq, len(d.corpus)), d, soft_counts=0)
            if served:
                reps[f"{fit}: {LATENT}"] = every[LATENT]
                reps[f"{fit}: {DECODED}"] = every[DECODED]
    results = probe_all(d, reps, cfg, progress=True)
    print(f"command: python3 {' '.join(sys.argv)}")
    print(f"{len(d.users)} users, {len(results)} tasks; probes as u2qt eval ({len(cfg.seeds)} seeds, C by 3-fold CV)")
    print_retention_table(reps, results, BASELINE)
    print(f"done in {time.perf_counter() - started:.0f} s")


def _latent(mrq, cont: np.ndarray, step: int = 8192) -> np.ndarray:
    """Every corpus row's latent z: the MRQ-VAE's encoder of its source embedding."""
    import torch

    with torch.no_grad():
        parts = [mrq.model.encoder(torch.from_numpy(cont[i : i + step])) for i in range(0, len(cont), step)]
    return torch.cat(parts).numpy()


if __name__ == "__main__":
    main()
