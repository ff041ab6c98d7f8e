"""`u2qt batch` over all of The Complete Journey (2,469 households, all of 2017), against the raw batch stages.

    python3 benchmarks/batch_full_year.py --artifacts artifacts/cj --engine ray --redis cluster [--sample 4000]

Writes every household's events of 2017 as one Parquet file, then, in one run:
  raw stages   a random sample of the year's windows (formed with the engines' Arrow stages), tokenized and encoded
               in batches of 256 (runtime.tokenize_texts + encode_windows): the encoder + quantizer alone;
               measured before and after the job, the mean of the two taken as the machine's raw rate;
  the job      `u2qt batch --engine ENGINE` end to end into a fresh standalone redis-server or 3-master Redis
               Cluster (ray: its start-up apart, every other second counted, the shuffle included).
Prints windows/s and the ratio to the raw stages, the job's report, Redis CPU per window and bytes per token, and
for a cluster how the users spread over its masters. With enough windows Ray's fixed costs (its Data actors, the
shuffle barrier, the encoder actor loading the model) are a small part of the run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.batch_throughput import raw_rate, run_into  # noqa: E402
from benchmarks.harness import RedisClusterProcess, RedisProcess, recorded  # noqa: E402
from u2qt.model.manifest import Manifest  # noqa: E402
from u2qt.model.runtime import TokenizerRuntime  # noqa: E402
from u2qt.service import batch_stages as stages  # noqa: E402
from u2qt.service.batch_job import read_events  # noqa: E402


def users_per_master(ports: list[int], prefix: str) -> list[int]:
    """Distinct users whose history keys live on each master (SCAN of each node)."""
    out = []
    for p in ports:
        users = {k.split(b"{", 1)[1].split(b"}", 1)[0] for k in redis.Redis(port=p).scan_iter(f"{prefix}:{{*", 10_000)}
        out.append(len(users))
    return out


@recorded
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/cj"))
    p.add_argument("--engine", choices=["local", "ray"], default="ray")
    p.add_argument("--redis", choices=["standalone", "cluster"], default="cluster")
    p.add_argument("--sample", type=int, default=4000, help="windows the raw stages are timed on, before and after")
    p.add_argument("--events", type=Path, help="the year's events as Parquet (None: written from the package)")
    args = p.parse_args()
    print(
        f"command: python3 benchmarks/batch_full_year.py --artifacts {args.artifacts} --engine {args.engine} "
        f"--redis {args.redis} --sample {args.sample}",
        flush=True,
    )
    events = args.events
    if events is None:
        from u2qt.training.completejourney import load_events, sources_config
        from u2qt.training.events import normalize_events

        events = Path(tempfile.mkdtemp(prefix="u2qt-full-year-")) / "cj-events.parquet"
        normalize_events(load_events(), sources_config()).to_parquet(events, index=False)
    manifest = Manifest.load(args.artifacts)
    runtime = TokenizerRuntime(args.artifacts, manifest, "cpu")
    prepared, _ = stages.prepare(read_events([str(events)], None, None), manifest, time.time())
    windows = stages.form_windows(stages.sort_events(prepared), manifest, 255)
    pick = np.sort(np.random.default_rng(0).choice(windows.num_rows, min(args.sample, windows.num_rows), replace=False))
    sample = stages.rendered(windows.take(pick))
    print(f"{prepared.num_rows:,} events, {windows.num_rows:,} windows, {os.cpu_count()} cores", flush=True)
    before = raw_rate(runtime, sample)
    print(f"raw stages before the job: {before:,.0f} windows/s ({len(sample):,} sampled windows)", flush=True)

    store = RedisClusterProcess(masters=3).start() if args.redis == "cluster" else RedisProcess().start()
    ports = store.ports if args.redis == "cluster" else [store.port]
    try:
        report = run_into(args.artifacts, events, store.url, ports, args.engine, runtime.vocabulary.levels)
        spread = users_per_master(ports, os.environ.get("U2QT_KEY_PREFIX", "u2qt")) if args.redis == "cluster" else []
    finally:
        store.stop()
    after = raw_rate(runtime, sample)
    raw = (before + after) / 2
    print(f"raw stages after the job: {after:,.0f} windows/s")
    print()
    print("| path | windows | users | windows/s | × raw stages | start-up s | Redis CPU ms / window | bytes / token |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| raw stages (mean of before and after) | {len(sample):,} | – | {raw:,.0f} | 1.00 | – | – | – |")
    print(
        f"| `u2qt batch --engine {args.engine}`, {args.redis} Redis | {report['windows']:,} | {report['users']:,} | "
        f"{report['windows_per_s']:,.0f} | {report['windows_per_s'] / raw:.2f} | {report['startup_s']:.1f} | "
        f"{report['redis_cpu_ms_per_window']:.3f} | {report['redis_bytes_per_token']:.1f} |"
    )
    print(
        f"job: {report['events read']:,} events read, refused {report['events refused']}, "
        f"{report['windows written']:,} windows written, {report['scripts']:,} Redis scripts, "
        f"steady {report['steady_s']:,.0f} s; stage seconds {report['stage_s']}"
    )
    if spread:
        print(f"users per master: {spread}")


if __name__ == "__main__":
    main()
