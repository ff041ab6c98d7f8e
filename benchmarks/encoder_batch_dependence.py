"""Does a window's embedding (and so its tokens) depend on what else is in its batch?

    python3 benchmarks/encoder_batch_dependence.py --artifacts artifacts/cj [--windows 400]

Exports the default text model at fp32 and at int8 (dynamic quantization) into a temporary directory, embeds
real Complete Journey text windows one at a time and in shuffled batches of 32 with the raw ONNX sessions (no
u2qt batching rule in between), and quantizes both with the artifacts' quantizer.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import recorded  # noqa: E402


@recorded
def main() -> None:
    from u2qt.model.runtime import OnnxTextEncoder, TokenizerRuntime
    from u2qt.training.completejourney import load_events
    from u2qt.training.config import EncoderConfig
    from u2qt.training.corpus import build_corpus
    from u2qt.training.events import keep_users, normalize_events
    from u2qt.training.text_encoder import export_text_encoder

    p = argparse.ArgumentParser()
    p.add_argument("--artifacts", default="artifacts/cj", type=Path)
    p.add_argument("--windows", type=int, default=400)
    args = p.parse_args()
    rt = TokenizerRuntime(args.artifacts, providers="cpu")
    sources = rt.manifest.sources  # the windows the model was trained on (its period)
    corpus = build_corpus(keep_users(normalize_events(load_events(), sources), 30, seed=3), sources, progress=False)
    w = corpus.windows[corpus.windows["text"] != ""].head(args.windows)
    print(f"command: python3 benchmarks/encoder_batch_dependence.py --artifacts {args.artifacts} --windows {len(w)}")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "int8"):
            info = export_text_encoder(EncoderConfig(precision=precision), Path(tmp) / precision)
            enc = OnnxTextEncoder(Path(tmp) / precision, info, ["CPUExecutionProvider"])
            ids = [chunks[0] for chunks in enc.tokenizer.encode(w["text"].tolist())]  # first chunks

            def run(batch, enc=enc):  # the bare session: padding and one call for the whole batch
                input_ids, mask = enc.tokenizer.pad(batch)
                return enc.session.run(None, {"input_ids": input_ids, "attention_mask": mask})[0]

            alone = np.concatenate([run([x]) for x in ids])
            batched = np.zeros_like(alone)
            perm = rng.permutation(len(ids))
            for k in range(0, len(perm), 32):
                batched[perm[k : k + 32]] = run([ids[i] for i in perm[k : k + 32]])
            src = w["source_index"].to_numpy()
            changed = (rt.quantize(alone, src)[0] != rt.quantize(batched, src)[0]).any(1).mean()
            print(
                f"{precision}: max |alone - batched| {np.abs(alone - batched).max():.1e}; windows whose codes "
                f"change with their batch-mates: {changed:.1%}"
            )


if __name__ == "__main__":
    main()
