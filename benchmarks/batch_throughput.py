"""`u2qt batch` against the raw batch stages, side by side in one run, and Redis cost standalone vs cluster.

    python3 benchmarks/batch_throughput.py --artifacts artifacts/cj [--households 600] [--weeks 52] [--ray]

On the same Complete Journey events (the first N households, their first W weeks of 2017), in one process:
  raw stages   the windows already formed and rendered, then only runtime.tokenize_texts + encode_windows in
               batches of 256: the encoder + quantizer alone, what the batch path cannot beat;
  local        `u2qt batch --engine local` end to end (read, prepare, sort, form, tokenize, encode, COMMIT), into
               a standalone redis-server and, again, into a 3-master Redis Cluster;
  ray          `u2qt batch --engine ray` (with --ray) into standalone Redis: steady state, start-up apart.
Windows/s of each, the ratio to the raw stages, Redis CPU (used_cpu_user + sys of every master) per written
window, and Redis memory per stored token, standalone vs cluster.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import RedisClusterProcess, RedisProcess, recorded  # noqa: E402
from u2qt.model.manifest import Manifest  # noqa: E402
from u2qt.model.runtime import TokenizerRuntime  # noqa: E402
from u2qt.service import batch_stages as stages  # noqa: E402
from u2qt.service.batch_job import BatchJob, read_events, run  # noqa: E402


def redis_cpu(ports: list[int]) -> float:
    total = 0.0
    for p in ports:
        info = redis.Redis(port=p).info("cpu")
        total += info["used_cpu_user"] + info["used_cpu_sys"]
    return total


def redis_memory(ports: list[int]) -> int:
    return sum(redis.Redis(port=p).info("memory")["used_memory"] for p in ports)


def raw_rate(runtime: TokenizerRuntime, rendered: list) -> float:
    """Windows/s of the encoder + quantizer alone (tokenize_texts + encode_windows) in batches of 256."""
    t = time.perf_counter()
    for s in range(0, len(rendered), 256):
        part = rendered[s : s + 256]
        runtime.encode_windows(part, runtime.tokenize_texts(part))
    return len(rendered) / (time.perf_counter() - t)


def run_into(
    artifacts: Path, events: Path, url: str, ports: list[int], engine: str, levels: int, encoders: int = 1
) -> dict:
    cpu0, mem0 = redis_cpu(ports), redis_memory(ports)
    report = run(
        BatchJob(
            artifacts=artifacts,
            events=[str(events)],
            redis_url=url,
            engine=engine,
            encoders=encoders,
            progress=False,
            report=Path(os.devnull),
            providers="cpu",
        )
    )
    report["redis_cpu_ms_per_window"] = 1000 * (redis_cpu(ports) - cpu0) / max(report["windows written"], 1)
    report["redis_bytes_per_token"] = (redis_memory(ports) - mem0) / max(report["windows written"] * levels, 1)
    return report


@recorded
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/cj"))
    p.add_argument("--households", type=int, default=600)
    p.add_argument("--weeks", type=int, default=52)
    p.add_argument("--ray", action="store_true", help="also the Ray engine (tens of seconds to start on 2 cores)")
    p.add_argument("--ray-encoders", default="1", help="Ray runs, one per encoder actor count (comma-separated)")
    args = p.parse_args()
    print(
        f"command: python3 benchmarks/batch_throughput.py --artifacts {args.artifacts} --households "
        f"{args.households} --weeks {args.weeks}" + (f" --ray --ray-encoders {args.ray_encoders}" if args.ray else "")
    )
    from u2qt.training.completejourney import load_events, sources_config
    from u2qt.training.events import keep_users, normalize_events

    manifest = Manifest.load(args.artifacts)
    ev = keep_users(normalize_events(load_events(), sources_config()), args.households, seed=0)
    ev = ev[ev["ts"] < ev["ts"].min() + args.weeks * 7 * 86400]
    tmp = Path(tempfile.mkdtemp(prefix="u2qt-batch-bench-"))
    path = tmp / "events.parquet"
    ev.to_parquet(path, index=False)
    households = ev["user_id"].nunique()
    print(f"{len(ev):,} events of {households:,} households, {args.weeks} weeks, {os.cpu_count()} cores")

    # forming windows: the Arrow sort + group boundaries the engines use, against a pandas groupby-apply
    runtime = TokenizerRuntime(args.artifacts, manifest, "cpu")
    prepared, _ = stages.prepare(read_events([str(path)], None, None), manifest, time.time())
    t = time.perf_counter()
    windows = stages.form_windows(stages.sort_events(prepared), manifest, 255)
    arrow_s = time.perf_counter() - t
    frame = prepared.to_pandas()
    t = time.perf_counter()
    for _, g in frame.groupby(["user_id", "source", "window"], sort=True):  # one Python call per group
        stages.form_windows(stages.sort_events(pa.Table.from_pandas(g, preserve_index=False)), manifest, 255)
    pandas_s = time.perf_counter() - t
    print(
        f"forming {windows.num_rows:,} windows: Arrow sort + boundaries {arrow_s:.2f} s, pandas groupby-apply "
        f"{pandas_s:.2f} s ({pandas_s / arrow_s:.1f}x)"
    )
    rendered = stages.rendered(windows)
    raw = raw_rate(runtime, rendered)
    raw_s = len(rendered) / raw
    levels = runtime.vocabulary.levels
    print(
        f"raw stages (tokenize + encode + quantize): {len(rendered):,} windows in {raw_s:.1f} s = {raw:,.0f} windows/s"
    )

    rows = [("raw stages", raw, None)]
    standalone = RedisProcess().start()
    cluster = RedisClusterProcess(masters=3).start()
    try:
        local = run_into(args.artifacts, path, standalone.url, [standalone.port], "local", levels)
        rows.append(("local engine, standalone Redis", local["windows_per_s"], local))
        clus = run_into(args.artifacts, path, cluster.url, cluster.ports, "local", levels)
        rows.append(("local engine, 3-master Redis Cluster", clus["windows_per_s"], clus))
        for n in [int(x) for x in args.ray_encoders.split(",")] if args.ray else []:
            standalone_ray = RedisProcess().start()
            try:
                r = run_into(args.artifacts, path, standalone_ray.url, [standalone_ray.port], "ray", levels, n)
            finally:
                standalone_ray.stop()
            threads = max(1, (os.cpu_count() or 1) // n)
            rows.append(
                (f"ray engine (steady), {n} encoder(s) x {threads} thread(s), standalone Redis", r["windows_per_s"], r)
            )
    finally:
        standalone.stop()
        cluster.stop()

    print()
    print("| path | windows/s | × raw stages | Redis CPU ms / window | Redis bytes / token | start-up s |")
    print("|---|---|---|---|---|---|")
    for name, wps, r in rows:
        extra = (
            f"{r['redis_cpu_ms_per_window']:.3f} | {r['redis_bytes_per_token']:.1f} | {r['startup_s']:.1f}"
            if r
            else "– | – | –"
        )
        print(f"| {name} | {wps:,.0f} | {wps / raw:.2f} | {extra} |")
    for name, _, r in rows[1:]:
        print(f"{name}: stages (s) {r['stage_s']}")
    print("(Redis bytes per token: used_memory growth over the run / tokens written, every key included: histories,")
    print(" the event sets' counts while they live, metadata, collision sets)")
    ratios = [wps / raw for _, wps, _ in rows[1:]]
    print(f"median ratio to the raw stages: {np.median(ratios):.2f}")


if __name__ == "__main__":
    main()
