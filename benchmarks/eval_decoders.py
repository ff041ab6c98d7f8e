"""Two more readings of the same tokens, on a data set of `u2qt dataset` (events, labels, sources):

    python3 benchmarks/eval_decoders.py --train-dir artifacts/ml-100k --data data/ml-100k --cutoff 1998-03-01

1. each window's tokens decoded through the MRQ-VAE's own decoder of its source (codeword sum -> the standardized
   embedding it was trained to reconstruct: 384 floats a text window) and pooled as `pool_user` pools the
   codeword sums: a nonlinear expansion of each window before the mean, which a linear probe cannot build from
   the mean of the sums. The same from the latent z (no quantization) tells the decoder's loss from the codes';
2. the tokenizers refitted for 10 epochs (`u2qt eval`'s `--tokenizer-epochs`) and for 30 (`u2qt train`'s).

The same users, span, tasks and probes as `u2qt eval` (training/evaluation.py: prepare, token_representations,
probe_all). Prints mean AUC and signal retention per epochs and representation.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import recorded  # noqa: E402


def decoded_through(model, vectors: np.ndarray, source: np.ndarray, names: list[str], width: int) -> np.ndarray:
    """Window vectors in the latent space [N, code_dim] -> each through its source's decoder, zero-padded to
    `width` (a tabular source reconstructs fewer features than a text source)."""
    import torch

    out = np.zeros((len(vectors), width), np.float32)
    with torch.no_grad():
        for i, name in enumerate(names):
            rows = source == i
            if rows.any():
                r = model.decoders[name](torch.from_numpy(vectors[rows])).numpy()
                out[rows, : r.shape[1]] = r
    return out


@recorded
def main() -> None:
    import torch

    from u2qt.training.evaluation import (
        BASELINE,
        CONTINUOUS,
        DECODED,
        LATENT,
        EvalConfig,
        decoded_tokens,
        fit_variant,
        pooled,
        prepare,
        probe_all,
        signal_retention,
        token_representations,
    )
    from u2qt.training.events import normalize_events, read_events, read_labels
    from u2qt.training.train import load_checkpoint

    p = argparse.ArgumentParser()
    p.add_argument("--train-dir", default="artifacts/ml-100k", type=Path)
    p.add_argument("--data", default="data/ml-100k", type=Path, help="events.parquet and labels.csv")
    p.add_argument("--cutoff", default="1998-03-01")
    p.add_argument("--epochs", default="10,30")
    args = p.parse_args()
    started = time.perf_counter()
    sources = load_checkpoint(args.train_dir).train_config.sources
    events = normalize_events(read_events(args.data / "events.parquet"), sources)
    cfg = EvalConfig(cutoff=args.cutoff, ablations=False)
    d = prepare(args.train_dir, cfg, events, read_labels(args.data / "labels.csv"), progress=False)
    q = d.ck.train_config.quantizer
    src = d.corpus.windows["source_index"].to_numpy()
    rows = []
    for epochs in [int(x) for x in args.epochs.split(",")]:
        mrq = fit_variant("MRQ-VAE", d.ck.train_config, d.corpus, d.text_emb, d.pre_rows, d.names, q.shared_levels,
                          q.specific_levels, epochs, False)  # fmt: skip
        every, src_emb = token_representations(d, {"MRQ-VAE": mrq})
        with torch.no_grad():
            z = mrq.model.encoder(torch.from_numpy(src_emb)).numpy()
        zhat = decoded_tokens(mrq, len(d.corpus))
        width = src_emb.shape[1]
        reps = {k: every[k] for k in (BASELINE, CONTINUOUS, LATENT, DECODED)}
        reps["tokens through the decoders, pooled"] = pooled(decoded_through(mrq.model, zhat, src, d.names, width), d)
        reps["latent z through the decoders, pooled"] = pooled(decoded_through(mrq.model, z, src, d.names, width), d)
        results = probe_all(d, reps, cfg, progress=False)
        retention = signal_retention(results, BASELINE)
        for name, x in reps.items():
            auc = float(np.mean([results[t][name]["auc"] for t in results]))
            rows.append((epochs, name, x.shape[1], auc, retention[name]))
            print(f"{epochs:>6}  {name:75s} {x.shape[1]:>6}  {auc:.4f}  {retention[name]:.3f}", flush=True)
    print(f"\n{'epochs':>6}  {'representation':75s} {'width':>6}  AUC     retention")
    for epochs, name, width, auc, ret in rows:
        print(f"{epochs:>6}  {name:75s} {width:>6}  {auc:.4f}  {ret:.3f}")
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
