"""ONNX Runtime on a small CPU box: the service's batch stages with three session layouts, then with text-encoder
runs of several widths, each alternated in one run.

    python3 benchmarks/ort_threads.py --artifacts artifacts/cj [--seconds 10] [--repeat 3] [--neighbour 0.5]
        [--sections layouts,widths,batches]

- one pool per session: every session (text encoder, quantizer, tabular MLPs) with ONNX Runtime's default
  pool, one thread per core (ONNX Runtime's default, which the small sessions' pools spinning on the encoder's
  cores make slower);
- small sessions single-threaded: the quantizer and tabular MLPs on one thread, the encoder one run at a time
  on its pool of every core (what model.runtime does);
- ... and the encoder's pool not spinning either.
An idle pool spins for a while after each run, on the cores another session is using, and a pool's threads wait
for each other after every operator. Then the encoder's run width within a 64-window batch (MicroBatcher's
text_chunk, U2QT_ENCODER_BATCH): windows sorted by length, so narrower runs pad less. Throughput is windows/s of
the batch stages (harness.batch_stage_throughput) on real Complete Journey windows, batches of 64. Last, the
micro-batch size itself (what the service's batches hold depends on how it forms them): windows/s and CPU per
window for batches of 1 (batching off) to 64 windows: the most that batching can win on this machine.

`--neighbour F` runs all of it beside a process that keeps one core busy a fraction F of the time (2 ms bursts),
as the service's event loop, Redis and the load generator do in service_bench: it shows what each layout loses
when it does not have the cores to itself.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import batch_stage_throughput, recorded  # noqa: E402
from benchmarks.service_bench import requests_by_user_week, window_jobs  # noqa: E402
from u2qt.model.manifest import Manifest  # noqa: E402
from u2qt.model.runtime import TokenizerRuntime, session_options  # noqa: E402


def runtime(artifacts: Path, manifest: Manifest, layout: str) -> TokenizerRuntime:
    rt = TokenizerRuntime(artifacts, manifest, providers="cpu")
    if layout == "one pool per session":
        so = session_options(None)
        rt.quantizer = ort.InferenceSession(str(artifacts / manifest.quantizer.file), so, providers=rt.providers)
        rt.tabular = {
            n: ort.InferenceSession(str(artifacts / t.file), so, providers=rt.providers)
            for n, t in manifest.tabular.items()
        }
    if layout.endswith("not spinning"):
        rt.text.session = ort.InferenceSession(
            str(artifacts / manifest.encoder.file), session_options(None, spinning=False), providers=rt.providers
        )
    return rt


def busy(fraction: float, stop) -> None:
    """Keeps one core busy `fraction` of the time, in 2 ms bursts."""
    burst = 0.002
    while not stop.is_set():
        t = time.perf_counter()
        while time.perf_counter() - t < burst:
            pass
        time.sleep(burst * (1 - fraction) / fraction)


@recorded
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--artifacts", default="artifacts/cj", type=Path)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--neighbour", type=float, default=0.0, help="a busy process beside it: fraction of one core")
    p.add_argument("--sections", default="layouts,widths,batches", help="which of layouts,widths,batches to run")
    args = p.parse_args()
    stop = multiprocessing.Event()
    if args.neighbour > 0:
        multiprocessing.Process(target=busy, args=(args.neighbour, stop), daemon=True).start()
    try:
        measure(args)
    finally:
        stop.set()


def measure(args: argparse.Namespace) -> None:
    manifest = Manifest.load(args.artifacts)
    jobs = window_jobs(manifest, requests_by_user_week(400)[:400])
    sections = args.sections.split(",")
    print(
        f"command: python3 benchmarks/ort_threads.py --artifacts {args.artifacts} --seconds {args.seconds:g} "
        f"--repeat {args.repeat}"
        + (f" --neighbour {args.neighbour:g}" if args.neighbour else "")
        + (f" --sections {args.sections}" if sections != ["layouts", "widths", "batches"] else "")
    )
    print(
        f"machine: {os.cpu_count()} cores, onnxruntime {ort.__version__}, CPU; batch stages, 64 windows per batch"
        + (f"; beside a process busy {args.neighbour:.0%} of one core" if args.neighbour else "")
    )
    if "layouts" in sections:
        layouts = ["one pool per session", "small sessions single-threaded", "... and the encoder not spinning"]
        rates: dict[str, list[float]] = {k: [] for k in layouts}
        for _ in range(args.repeat):
            for layout in layouts:
                rt = runtime(args.artifacts, manifest, layout)
                rates[layout].append(batch_stage_throughput(rt, jobs, 64, args.seconds).windows_s)
        report(rates)
    rt = TokenizerRuntime(args.artifacts, manifest, providers="cpu")
    if "widths" in sections:
        widths = [1, 4, 8, 16, 32, 64]
        by_width: dict[str, list[float]] = {f"encoder runs of {w}": [] for w in widths}
        for _ in range(args.repeat):
            for w in widths:
                run = batch_stage_throughput(rt, jobs, 64, args.seconds, text_chunk=w, max_padding=math.inf)
                by_width[f"encoder runs of {w}"].append(run.windows_s)
        print("with the layout model.runtime uses, by encoder run width (fixed):")
        report(by_width)
    if "batches" in sections:
        # the batcher's rule (runs of similar length, at most 8 wide, cut at 25% padding) beside fixed runs of 4
        runs = {"fixed runs of 4": dict(text_chunk=4, max_padding=math.inf), "length runs (default)": {}}
        rates: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}
        for _ in range(args.repeat):
            for b in [1, 8, 13, 32, 64]:
                for name, kw in runs.items():
                    run = batch_stage_throughput(rt, jobs, b, args.seconds, **kw)
                    rates.setdefault(f"batches of {b}, {name}", []).append(run.windows_s)
                    cpu.setdefault(f"batches of {b}, {name}", []).append(run.cpu_ms_per_window)
        print("with the layout model.runtime uses, by windows per micro-batch and encoder runs:")
        report(rates)
        for name, ms in cpu.items():
            print(f"  {name:40s} CPU per window, median {np.median(ms):5.2f} ms ({', '.join(f'{x:.2f}' for x in ms)})")


def report(rates: dict[str, list[float]]) -> None:
    base = np.median(next(iter(rates.values())))
    for name, r in rates.items():
        print(
            f"  {name:40s} median {np.median(r):6.1f} windows/s ({', '.join(f'{x:.1f}' for x in r)})"
            f"  x{np.median(r) / base:.2f}"
        )


if __name__ == "__main__":
    main()
