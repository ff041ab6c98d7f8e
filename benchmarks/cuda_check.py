"""The CUDA execution provider against the CPU one, on the same artifacts and real Complete Journey windows.

    python3 benchmarks/cuda_check.py --artifacts artifacts/cj [--windows 2000] [--seconds 5]

1. parity: a window's codes from ONNX Runtime on CUDA vs on the CPU, each window embedded alone; and on CUDA
   alone vs in length runs of 64 chunks (does a window's tokens depend on its batch-mates on a GPU?);
2. throughput of the service's batch stages (subword tokenizer + encoder + quantizer, MicroBatcher._run) by
   batch size on CUDA and on the CPU, side by side in one run.
Needs onnxruntime-gpu and a GPU; prints what it finds and stops otherwise.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import recorded  # noqa: E402


@recorded
def main() -> None:
    import onnxruntime as ort

    from benchmarks.harness import batch_stage_throughput as throughput
    from u2qt.model.runtime import TokenizerRuntime
    from u2qt.service.batcher import WindowJob
    from u2qt.training.completejourney import load_events
    from u2qt.training.corpus import build_corpus
    from u2qt.training.events import keep_users, normalize_events

    p = argparse.ArgumentParser()
    p.add_argument("--artifacts", default="artifacts/cj", type=Path)
    p.add_argument("--windows", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--batches", default="1,8,32,64,128,256")
    args = p.parse_args()
    print(
        f"command: python3 benchmarks/cuda_check.py --artifacts {args.artifacts} --windows {args.windows} "
        f"--seconds {args.seconds:g} --batches {args.batches}"
    )
    print(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}, {os.cpu_count()} cores")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        sys.exit("no CUDA execution provider in this onnxruntime build: install onnxruntime-gpu")
    query = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
    smi = subprocess.run(query, capture_output=True)
    print(f"GPU: {smi.stdout.decode().strip()}")
    gpu = TokenizerRuntime(args.artifacts, providers="cuda")
    cpu = TokenizerRuntime(args.artifacts, providers="cpu")
    print(f"session providers: CUDA run {gpu.text.session.get_providers()}, CPU run {cpu.text.session.get_providers()}")

    sources = gpu.manifest.sources  # the windows the model was trained on (its period)
    corpus = build_corpus(keep_users(normalize_events(load_events(), sources), 120, seed=5), sources, progress=False)
    w = corpus.windows[corpus.windows["text"] != ""].head(args.windows)
    texts, src = w["text"].tolist(), w["source_index"].to_numpy()
    chunks = gpu.text.tokenizer.encode(texts)
    ids = [c for cs in chunks for c in cs]
    mean_len = np.mean([len(x) for x in ids])
    print(f"{len(texts)} text windows, {len(ids)} chunks of {mean_len:.0f} subword tokens on average")

    def codes(rt, emb):
        return rt.quantize(emb, src)[0]

    # a window's embedding as the service makes it (its chunks pooled): each chunk run alone (width 1), and on
    # CUDA in length runs of 64 chunks with other windows' chunks (the order shuffled first)
    alone_gpu, alone_cpu = gpu.text.embed_ids(chunks, 1), cpu.text.embed_ids(chunks, 1)
    batched_gpu = np.zeros_like(alone_gpu)
    perm = np.random.default_rng(0).permutation(len(chunks))
    batched_gpu[perm] = gpu.text.embed_ids([chunks[i] for i in perm], 64)
    c_cpu, c_gpu, c_gpu_b = codes(cpu, alone_cpu), codes(gpu, alone_gpu), codes(gpu, batched_gpu)
    print(
        f"parity CUDA vs CPU (alone): max |emb diff| {np.abs(alone_gpu - alone_cpu).max():.1e}; windows with any "
        f"code different {(c_gpu != c_cpu).any(1).mean():.2%}; codes different {(c_gpu != c_cpu).mean():.3%}"
    )
    print(
        f"parity CUDA alone vs CUDA in runs of 64: max |emb diff| "
        f"{np.abs(alone_gpu - batched_gpu).max():.1e}; windows with any code different "
        f"{(c_gpu != c_gpu_b).any(1).mean():.2%}"
    )

    jobs = [WindowJob(int(s), text=t) for s, t in zip(src, texts, strict=True)]
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        g = throughput(gpu, jobs, batch, args.seconds).windows_s
        c = throughput(cpu, jobs, batch, args.seconds).windows_s if batch <= 64 else float("nan")
        rows.append((batch, g, c))
        print(f"batch {batch:4d}: CUDA {g:9.1f} windows/s   CPU {c:8.1f} windows/s", flush=True)
    base = rows[0][1]
    print("CUDA speed-up over batch 1: " + ", ".join(f"{b}: {g / base:.1f}x" for b, g, _ in rows))


if __name__ == "__main__":
    main()
