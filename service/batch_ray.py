"""`u2qt batch --engine ray`: the stages of batch_stages.py on Ray Data.

    read_parquet -> prepare (CPU tasks: validate, window index, a user bucket)
      -> groupby(bucket).map_groups: sort in Arrow, form windows (one call per bucket of many users, never per
         window: a bucket holds every event of its users, so no window is split)
      -> tokenize (CPU tasks) -> encode + quantize (an actor pool: `--encoders` actors, `--gpus-per-encoder` each)
      -> RedisHistorySink (write tasks that COMMIT with the store's own scripts)

Every stage is idempotent: a retried task re-forms the same windows and re-COMMITs the same bytes, which the
store's rule (an entry built from more events wins; equal counts rewrite the same entry) leaves as they were.
"""

from __future__ import annotations

import asyncio
import functools
import time

import numpy as np
import pyarrow as pa

from u2qt.model.manifest import Manifest
from u2qt.model.runtime import TokenizerRuntime
from u2qt.service import batch_stages as stages
from u2qt.service.batch_job import BatchJob, open_store, report_of

TIMING = ("s_form", "s_tokenize", "s_encode")


def user_bucket(user_id: pa.Array, buckets: int) -> np.ndarray:
    """A stable bucket per user (the same on every worker and run), vectorized."""
    import pandas as pd

    return (pd.util.hash_array(np.asarray(user_id.to_numpy(zero_copy_only=False), dtype=object)) % buckets).astype(
        np.int64
    )


@functools.lru_cache(maxsize=4)
def _manifest(artifacts: str) -> Manifest:
    return Manifest.load(artifacts)


@functools.lru_cache(maxsize=4)
def _cpu_runtime(artifacts: str) -> TokenizerRuntime:
    """One per worker process and artifact directory: loaded once, not once per batch."""
    return TokenizerRuntime(artifacts, _manifest(artifacts), providers="cpu", threads=1)


def _with_count(table: pa.Table, name: str, value: float, dtype: pa.DataType = pa.float64()) -> pa.Table:  # noqa: B008
    """A per-batch figure (a stage's seconds, refused events) carried to the sink in the batch's first row."""
    column = np.zeros(table.num_rows)
    if table.num_rows:
        column[0] = value
    return table.append_column(name, pa.array(column, dtype))


def prepare(table: pa.Table, job: BatchJob, latest: float, buckets: int) -> pa.Table:
    if table.num_rows == 0:  # an empty block (Ray makes some) has nothing to do
        return table
    ts = stages.to_seconds(table["ts"]).to_numpy(zero_copy_only=False)
    keep = np.ones(len(ts), bool)
    if job.since is not None:
        keep &= ts >= job.since
    if job.until is not None:
        keep &= ts < job.until
    prepared, refused = stages.prepare(table.filter(pa.array(keep)), _manifest(str(job.artifacts)), latest)
    prepared = prepared.append_column("bucket", pa.array(user_bucket(prepared["user_id"], buckets)))
    return _with_count(prepared, "refused", sum(refused.values()), pa.int64())


def form_windows(events: pa.Table, job: BatchJob, max_events: int) -> pa.Table:
    if events.num_rows == 0:  # an empty block (Ray makes some) has nothing to do
        return events
    t = time.perf_counter()
    refused = int(np.asarray(events["refused"]).sum())
    sorted_events = stages.sort_events(events.drop_columns(["bucket", "refused"]))
    windows = stages.form_windows(sorted_events, _manifest(str(job.artifacts)), max_events)
    windows = _with_count(windows, "refused", refused, pa.int64())
    return _with_count(windows, "s_form", time.perf_counter() - t)


def drop_stored(windows: pa.Table, job: BatchJob) -> pa.Table:
    if windows.num_rows == 0:  # an empty block (Ray makes some) has nothing to do
        return windows

    async def run():
        client, store = open_store(job, _manifest(str(job.artifacts)))
        try:
            return await stages.drop_stored(windows, store)
        finally:
            await client.aclose()

    return asyncio.run(run())


def tokenize(windows: pa.Table, job: BatchJob) -> pa.Table:
    if windows.num_rows == 0:  # an empty block (Ray makes some) has nothing to do
        return windows
    t = time.perf_counter()
    out = stages.tokenize(windows, _cpu_runtime(str(job.artifacts)))
    return _with_count(out, "s_tokenize", time.perf_counter() - t)


class Encode:
    """One per actor: the encoder and quantizer sessions stay loaded (on its GPU when it has one)."""

    def __init__(self, job: BatchJob, threads: int):
        self.runtime = TokenizerRuntime(job.artifacts, providers=job.providers, threads=threads)

    def __call__(self, windows: pa.Table) -> pa.Table:
        if windows.num_rows == 0:
            return windows
        t = time.perf_counter()
        out = stages.encode(windows, self.runtime)
        return _with_count(out, "s_encode", time.perf_counter() - t)


def make_sink(job: BatchJob):
    from ray.data import Datasink

    class RedisHistorySink(Datasink):
        """Writes windows with the store's COMMIT script (and the collision fallback's re-filing), one write task
        per block; reports what it wrote."""

        def __init__(self):
            self.result: dict = {}

        def write(self, blocks, ctx) -> dict:
            async def run():
                m = Manifest.load(job.artifacts)
                client, store = open_store(job, m)
                names = [s.name for s in m.sources.sources]
                totals = {
                    "windows written": 0,
                    "windows kept": 0,
                    "scripts": 0,
                    "windows": 0,
                    "refused": 0,
                    "s_write": 0.0,
                    **dict.fromkeys(TIMING, 0.0),
                }
                users: set[str] = set()
                try:
                    for block in blocks:
                        table = block if isinstance(block, pa.Table) else pa.Table.from_pandas(block)
                        if table.num_rows == 0:  # Ray may hand over empty blocks, without a schema
                            continue
                        for k in TIMING:
                            if k in table.column_names:
                                totals[k] += float(np.asarray(table[k]).sum())
                        if "refused" in table.column_names:
                            totals["refused"] += int(np.asarray(table["refused"]).sum())
                        totals["windows"] += table.num_rows
                        users.update(table["user_id"].to_pylist())
                        t = time.perf_counter()
                        stats = await stages.write(table, store, names)
                        totals["s_write"] += time.perf_counter() - t
                        for k, val in stats.items():
                            totals[k] += val
                finally:
                    await client.aclose()
                totals["users"] = sorted(users)
                return totals

            return asyncio.run(run())

        def on_write_complete(self, write_result) -> None:
            merged: dict = {}
            users: set[str] = set()
            for r in write_result.write_returns:
                for k, val in r.items():
                    if k == "users":
                        users.update(val)
                    else:
                        merged[k] = merged.get(k, 0) + val
            merged["users"] = len(users)
            self.result = merged

    return RedisHistorySink()


def run_ray(job: BatchJob, paths: list[str]) -> dict:
    import ray

    t0 = time.perf_counter()
    if not ray.is_initialized():
        ray.init(address=job.ray_address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = job.progress
    startup_s = time.perf_counter() - t0

    manifest = Manifest.load(job.artifacts)
    latest = job.store["latest_ts"]
    started = time.perf_counter()
    ds = ray.data.read_parquet(paths)
    events = ds.count()  # what was read; Ray Data caches nothing, so this is one extra pass over the metadata
    # a bucket is formed, encoded and written as one block: enough buckets that each holds about rows_per_batch
    # events, so windows stream to the encoders and to Redis instead of arriving in a few huge blocks
    buckets = max(2 * int(ray.cluster_resources().get("CPU", 2)), -(-events // job.rows_per_batch))
    ds = ds.map_batches(prepare, fn_kwargs=dict(job=job, latest=latest, buckets=buckets), batch_format="pyarrow")
    # one shuffle partition per bucket: Ray's default (200) would run a reduce task per empty partition
    ds = ds.groupby("bucket", num_partitions=buckets).map_groups(
        form_windows, fn_kwargs=dict(job=job, max_events=job.store["max_events_per_window"]), batch_format="pyarrow"
    )
    if job.resume:
        ds = ds.map_batches(drop_stored, fn_kwargs=dict(job=job), batch_format="pyarrow")
    ds = ds.map_batches(tokenize, fn_kwargs=dict(job=job), batch_format="pyarrow", batch_size=job.windows_per_encode)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    ds = ds.map_batches(
        Encode,
        # each actor's ONNX Runtime threads: by default its share of the machine's cores
        fn_constructor_args=(job, job.encoder_threads or max(1, cpus // job.encoders)),
        batch_format="pyarrow",
        batch_size=job.windows_per_encode,
        concurrency=job.encoders,
        # the actors together reserve at most all CPUs but one, which the CPU tasks (prepare, form, tokenize,
        # write) need to be scheduled at all; they are light, so they run beside the encoders on the same cores
        num_cpus=min(1.0, max(cpus - 1, 0.5) / job.encoders),
        num_gpus=job.gpus_per_encoder or None,
    )
    sink = make_sink(job)
    ds.write_datasink(sink)
    steady_s = time.perf_counter() - started
    r = sink.result
    clock = stages.StageClock(
        seconds={
            "form windows": r.get("s_form", 0.0),
            "tokenize": r.get("s_tokenize", 0.0),
            "encode + quantize": r.get("s_encode", 0.0),
            "write (COMMIT)": r.get("s_write", 0.0),
        },
        rows={"windows": r.get("windows", 0)},
    )
    totals = {k: r.get(k, 0) for k in ("windows written", "windows kept", "scripts")}
    return report_of(
        "ray",
        manifest,
        events,
        {"refused (all reasons)": r.get("refused", 0)},
        r.get("windows", 0),
        r.get("users", 0),
        totals,
        clock,
        steady_s,
        startup_s,
    )
