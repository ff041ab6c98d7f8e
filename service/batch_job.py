"""`u2qt batch`: tokenize an event archive (a day, or all of it) into the same Redis histories POST /tokenize
writes, with the local engine (one process) or Ray Data. What a run is told (BatchJob), how its input is read,
and the report both engines end with; the stages themselves are in batch_stages.py."""

from __future__ import annotations

import asyncio
import glob
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.dataset as pads
from pydantic import BaseModel, ConfigDict, Field

from u2qt.model.manifest import Manifest
from u2qt.model.runtime import TokenizerRuntime
from u2qt.service import batch_stages as stages
from u2qt.service.redis_client import check_eviction, connect
from u2qt.service.settings import ServiceSettings
from u2qt.service.store import TokenHistoryStore


class BatchJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    artifacts: Path
    events: list[str] = Field(min_length=1, description="Parquet files, directories, globs or URLs")
    since: float | None = None  # unix seconds: events at or after it
    until: float | None = None  # unix seconds: events before it
    redis_url: str | None = None  # None: the settings' (REDIS_URL / U2QT_REDIS_URL)
    redis_cluster: bool = False
    engine: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    encoders: int = Field(1, ge=1, description="encoder actors (Ray)")
    gpus_per_encoder: float = Field(0, ge=0)
    encoder_threads: int | None = Field(None, ge=1, description="ONNX Runtime threads per encoder actor (Ray)")
    resume: bool = False  # skip windows whose stored entry was built from exactly these events
    rows_per_batch: int = Field(20_000, ge=1, description="events per batch, cut on window boundaries")
    windows_per_encode: int = Field(256, ge=1, description="windows per encoder call")
    providers: Literal["auto", "cpu", "cuda"] = "auto"
    report: Path | None = None  # the report as JSON (default: batch-report.json in the working directory)
    progress: bool = True
    # The store's settings, read once from the environment by the driver (ServiceSettings: U2QT_KEY_PREFIX, ...)
    # and carried to every worker with the job, so a worker's own environment cannot change a key or a rule.
    store: dict | None = None


STORE_SETTINGS = ("key_prefix", "history_days", "ttl_days", "late_windows", "max_events_per_window")


def resolved(job: BatchJob) -> BatchJob:
    """The job with its Redis URL and store settings taken from the environment where it does not name them.
    Raises EvictingRedis for a Redis that may evict keys (unless U2QT_REDIS_ALLOW_EVICTION)."""
    settings = ServiceSettings()
    url = job.redis_url or settings.redis_url
    if not url:
        raise ValueError("u2qt batch needs a Redis: --redis URL, or REDIS_URL")
    check_eviction(url, job.redis_cluster or settings.redis_cluster, settings.redis_allow_eviction)
    store = {k: getattr(settings, k) for k in STORE_SETTINGS} | (job.store or {})
    store["latest_ts"] = time.time() + settings.max_future_skew  # later event times are refused, as online
    return job.model_copy(
        update={"redis_url": url, "redis_cluster": job.redis_cluster or settings.redis_cluster, "store": store}
    )


def parse_time(text: str | None) -> float | None:
    """'2017-03-01', '2017-03-01T06:00:00Z' (no offset: UTC) or unix seconds -> unix seconds."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither unix seconds nor an ISO-8601 date or time") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def input_paths(events: list[str]) -> list[str]:
    """Local globs expanded; directories, files and URLs (s3://, gs://, ...) passed to pyarrow as they are."""
    out = []
    for p in events:
        if "://" not in p and any(c in p for c in "*?["):
            matched = sorted(glob.glob(p, recursive=True))
            if not matched:
                raise FileNotFoundError(f"--events {p}: matches no file")
            out += matched
        elif "://" not in p and not Path(p).exists():
            raise FileNotFoundError(f"--events {p}: no such file or directory")
        else:
            out.append(p)
    return out


def time_filter(schema: pa.Schema, since: float | None, until: float | None):
    """A pyarrow filter on `ts` for the range (pushed down to the Parquet row groups), whatever its type."""
    if since is None and until is None:
        return None
    ts = pads.field("ts")
    kind = schema.field("ts").type

    def scalar(x: float):
        if pa.types.is_timestamp(kind):
            return pa.scalar(int(x * 1e6), pa.timestamp("us", tz=kind.tz)).cast(kind)
        return pa.scalar(x, pa.float64())

    parts = ([ts >= scalar(since)] if since is not None else []) + ([ts < scalar(until)] if until is not None else [])
    return parts[0] if len(parts) == 1 else parts[0] & parts[1]


def read_events(paths: list[str], since: float | None, until: float | None) -> pa.Table:
    dataset = pads.dataset(paths, format="parquet")
    if "ts" not in dataset.schema.names:
        raise ValueError("the events have no `ts` column (the canonical schema: docs/training.md)")
    return dataset.to_table(filter=time_filter(dataset.schema, since, until))


def open_store(job: BatchJob, manifest: Manifest) -> tuple:
    """(client, TokenHistoryStore) of a resolved job: the service's key layout, history length, TTLs, lateness."""
    st = job.store
    v = manifest.token_vocabulary()
    client = connect(job.redis_url, job.redis_cluster, max_connections=16)
    store = TokenHistoryStore(
        client,
        st["key_prefix"],
        manifest.model_version,
        v.levels,
        v.codebook_size,
        manifest.sources.period_s,
        st["history_days"],
        st["ttl_days"],
        st["late_windows"],
        st["max_events_per_window"],
    )
    return client, store


def run(job: BatchJob) -> dict:
    started = time.perf_counter()
    job = resolved(job)
    paths = input_paths(job.events)
    if job.engine == "ray":
        from u2qt.service.batch_ray import run_ray

        report = run_ray(job, paths)
    else:
        report = asyncio.run(run_local(job, paths))
    report["wall_s"] = round(time.perf_counter() - started, 2)
    report["windows_per_s"] = round(report["windows"] / max(report["steady_s"], 1e-9), 1)
    out = job.report or Path("batch-report.json")
    out.write_text(json.dumps(report, indent=2))
    report["report_file"] = str(out)
    return report


async def run_local(job: BatchJob, paths: list[str]) -> dict:
    """The stages in one process: read, prepare and sort the whole input once (Arrow), then batches of about
    rows_per_batch events cut on window boundaries, each formed, tokenized, encoded and written in turn."""
    from tqdm.auto import tqdm

    manifest = Manifest.load(job.artifacts)
    runtime = TokenizerRuntime(job.artifacts, manifest, job.providers)
    client, store = open_store(job, manifest)
    names = [s.name for s in manifest.sources.sources]
    clock = stages.StageClock()
    totals = {"windows written": 0, "windows kept": 0, "scripts": 0, "windows skipped (resume)": 0}
    users: set[str] = set()
    try:
        t = time.perf_counter()
        table = read_events(paths, job.since, job.until)
        clock.add("read", t, table.num_rows)
        t = time.perf_counter()
        prepared, refused = stages.prepare(table, manifest, job.store["latest_ts"])
        events = stages.sort_events(prepared)
        clock.add("prepare + sort", t, table.num_rows)
        parts = stages.cut_on_groups(events, job.rows_per_batch)
        steady = time.perf_counter()
        windows_total = 0
        with tqdm(total=events.num_rows, desc="u2qt batch (local)", unit="event", disable=not job.progress) as bar:
            for part in parts:
                t = time.perf_counter()
                windows = stages.form_windows(part, manifest, store.max_events_per_window)
                clock.add("form windows", t, windows.num_rows)
                windows_total += windows.num_rows
                users.update(windows["user_id"].to_pylist())
                if job.resume:
                    t = time.perf_counter()
                    before = windows.num_rows
                    windows = await stages.drop_stored(windows, store)
                    totals["windows skipped (resume)"] += before - windows.num_rows
                    clock.add("resume check", t, before)
                for s in range(0, windows.num_rows, job.windows_per_encode):
                    chunk = windows.slice(s, job.windows_per_encode)
                    t = time.perf_counter()
                    chunk = stages.tokenize(chunk, runtime)
                    clock.add("tokenize", t, chunk.num_rows)
                    t = time.perf_counter()
                    chunk = stages.encode(chunk, runtime)
                    clock.add("encode + quantize", t, chunk.num_rows)
                    t = time.perf_counter()
                    stats = await stages.write(chunk, store, names)
                    clock.add("write (COMMIT)", t, chunk.num_rows)
                    for k, v in stats.items():
                        totals[k] += v
                bar.update(part.num_rows)
        steady_s = time.perf_counter() - steady
    finally:
        await client.aclose()
    return report_of("local", manifest, table.num_rows, refused, windows_total, len(users), totals, clock, steady_s)


def report_of(engine, manifest, events, refused, windows, users, totals, clock, steady_s, startup_s=0.0) -> dict:
    return {
        "engine": engine,
        "model_version": manifest.model_version,
        "events read": events,
        "events refused": refused,
        "windows": windows,
        "users": users,
        **totals,
        "startup_s": round(startup_s, 2),
        "steady_s": round(steady_s, 2),
        "stage_s": {k: round(v, 2) for k, v in clock.seconds.items()},
        "stage_rows": clock.rows,
    }
