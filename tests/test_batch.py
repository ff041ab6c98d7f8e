"""`u2qt batch` (service/batch_*.py) on a real Complete Journey slice, against real Redis: the same bytes as
POST /tokenize, re-runs and a resumed killed run that leave one clean run's histories, the online path and the
daily job meeting under one rule, a new model version backfilled beside the old, a Redis Cluster, and Ray Data."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
import redis

from u2qt.service.batch_job import BatchJob, run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def slice_events(cj_events, tmp_path_factory):
    """12 households, their first 8 weeks: canonical events as a Parquet file, and as the API takes them."""
    events, _ = cj_events
    users = sorted(events["user_id"].unique())[:12]
    ev = events[events["user_id"].isin(users)]
    ev = ev[ev["ts"] < ev["ts"].min() + 8 * 7 * 86400].sort_values(["user_id", "ts", "event_id"])
    path = tmp_path_factory.mktemp("batch") / "events.parquet"
    ev.to_parquet(path, index=False)
    return ev, path


def api_events(ev) -> dict[str, list[dict]]:
    """user -> the user's events as POST /tokenize takes them, in time order."""
    out: dict[str, list[dict]] = {}
    for r in ev.itertuples(index=False):
        e = {"event_id": r.event_id, "user_id": r.user_id, "source": r.source, "ts": r.ts}
        if r.source == "visits":
            e["attributes"] = {a: getattr(r, a) for a in ("spend", "lines", "discount", "hour", "weekend")}
        else:
            e["text"] = r.text
            if r.amount == r.amount:  # not NaN
                e["amount"] = r.amount
        out.setdefault(r.user_id, []).append(e)
    return out


def dump(ports: list[int], prefix: str, kinds: str = "cem") -> dict:
    """Every key under `prefix` (across a cluster's masters) with its value, the prefix left out: lists as their
    entries, hashes as dicts. `kinds`: which of the layout's key kinds (c histories, e event sets, m metadata)."""
    out = {}
    for port in ports:
        r = redis.Redis(port=port)
        for key in r.scan_iter(match=f"{prefix}:*", count=1000):
            k = key.decode()[len(prefix) :]
            kind = k.split("}:", 1)[1][0] if "}:" in k else "fb"
            if kind not in kinds:
                continue
            t = r.type(key).decode()
            out[k] = r.lrange(key, 0, -1) if t == "list" else r.hgetall(key) if t == "hash" else r.zrange(key, 0, -1)
    return out


def batch(trained, path, url, monkeypatch, prefix, **kw) -> dict:
    monkeypatch.setenv("U2QT_KEY_PREFIX", prefix)
    job = BatchJob(artifacts=trained, events=[str(path)], redis_url=url, progress=False, **kw)
    return run(job.model_copy(update={"report": Path(os.devnull)}))


def test_batch_writes_the_same_bytes_as_the_online_path(
    trained_dir, slice_events, serve, redis_server, monkeypatch, request
):
    ev, path = slice_events
    mode = request.node.callspec.id  # in-process or frontends: each run its own keys on the shared Redis
    base, _ = serve(key_prefix=f"online-{mode}")
    with httpx.Client(timeout=120) as client:
        for events in api_events(ev).values():
            r = client.post(f"{base}/tokenize", json={"events": events})
            assert r.status_code == 200, r.text
            assert r.json()["accepted"] == len(events)
    report = batch(trained_dir[0], path, redis_server.url, monkeypatch, f"bulk-{mode}")
    online, bulk = dump([redis_server.port], f"online-{mode}", "cm"), dump([redis_server.port], f"bulk-{mode}", "cm")
    assert report["windows"] == report["windows written"] > 50
    assert len([k for k in bulk if ":c:" in k]) == len(ev.groupby(["user_id", "source"]))
    assert bulk == online  # every history entry and every user's digest and engagement, byte for byte


def test_running_the_same_day_twice_changes_nothing(trained_dir, slice_events, redis_server, monkeypatch):
    _, path = slice_events
    first = batch(trained_dir[0], path, redis_server.url, monkeypatch, "twice")
    once = dump([redis_server.port], "twice")
    assert not [k for k in once if ":e:" in k]  # the job keeps no per-window event set (memory): only histories
    again = batch(trained_dir[0], path, redis_server.url, monkeypatch, "twice")
    assert dump([redis_server.port], "twice") == once
    assert again["windows written"] == 0 and again["windows kept"] == first["windows written"]
    resumed = batch(trained_dir[0], path, redis_server.url, monkeypatch, "twice", resume=True)
    assert resumed["windows skipped (resume)"] == first["windows"] and resumed["windows written"] == 0
    assert dump([redis_server.port], "twice") == once


def test_a_run_killed_half_way_and_resumed_leaves_one_clean_runs_histories(
    trained_dir, slice_events, redis_server, monkeypatch
):
    _, path = slice_events
    batch(trained_dir[0], path, redis_server.url, monkeypatch, "clean")
    clean = dump([redis_server.port], "clean")
    histories = len([k for k in clean if ":c:" in k])
    env = dict(os.environ, U2QT_KEY_PREFIX="killed", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "u2qt.service.cli", "batch", "--artifacts", str(trained_dir[0]), "--events"]
    cmd += [str(path), "--redis", redis_server.url, "--rows-per-batch", "100", "--quiet", "--report", os.devnull]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    written = 0
    while time.time() < deadline and proc.poll() is None:
        written = len([k for k in dump([redis_server.port], "killed", "c")])
        if written >= histories // 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < written < histories, "killed half-way: some histories written, not all"
    assert dump([redis_server.port], "killed") != {k: v for k, v in clean.items()}
    report = batch(trained_dir[0], path, redis_server.url, monkeypatch, "killed", resume=True)
    assert report["windows skipped (resume)"] > 0
    assert dump([redis_server.port], "killed") == clean


def test_online_and_batch_meet_under_one_rule_the_entry_from_more_events_wins(
    trained_dir, slice_events, serve, redis_server, monkeypatch, tmp_path, request
):
    ev, _ = slice_events
    prefix = f"meet-{request.node.callspec.id}"
    purchases = ev[ev["source"] == "purchases"]
    week = purchases["ts"] // (7 * 86400)
    busy = purchases.groupby(["user_id", week]).size()
    busy = busy[busy >= 4]
    user = busy.groupby(level=0).size().idxmax()  # a household with at least two weeks of 4+ purchases
    mine = purchases[purchases["user_id"] == user]
    w1, w2 = sorted(busy[user].index)[:2]
    first = mine[mine["ts"] // (7 * 86400) == w1]
    second = mine[mine["ts"] // (7 * 86400) == w2]
    base, _ = serve(key_prefix=prefix)
    online = list(api_events(first.head(2)).values())[0] + list(api_events(second).values())[0]
    with httpx.Client(timeout=60) as client:
        assert client.post(f"{base}/tokenize", json={"events": online}).status_code == 200
    daily = tmp_path / "daily.parquet"
    pd.concat([first, second.head(2)]).to_parquet(daily, index=False)  # all of w1, 2 events of w2
    batch(trained_dir[0], daily, redis_server.url, monkeypatch, prefix)
    with httpx.Client(timeout=60) as client:
        got = client.get(f"{base}/users/{user}/tokens", params={"sources": "purchases"}).json()
    counts = [w["event_count"] for w in got["windows"]]
    assert counts == [len(first), len(second)]  # the batch's fuller w1 replaced the online entry; w2 stayed


def test_backfill_builds_a_new_versions_histories_beside_the_old(
    trained_dir, slice_events, redis_server, monkeypatch, tmp_path
):
    _, path = slice_events
    batch(trained_dir[0], path, redis_server.url, monkeypatch, "backfill-upgrade")
    old = dump([redis_server.port], "backfill-upgrade")
    v2 = tmp_path / "v2"
    shutil.copytree(trained_dir[0], v2, ignore=shutil.ignore_patterns("cache", "checkpoint"))
    manifest = json.loads((v2 / "manifest.json").read_text())
    manifest["model_version"] = "backfill2"
    (v2 / "manifest.json").write_text(json.dumps(manifest))
    batch(v2, path, redis_server.url, monkeypatch, "backfill-upgrade")
    both = dump([redis_server.port], "backfill-upgrade")
    new = {k: v for k, v in both.items() if "backfill2" in k}
    assert {k: v for k, v in both.items() if k not in new} == old  # the serving version's keys untouched
    assert len(new) == len(old) and all(":backfill2" in k for k in new)


def test_batch_into_a_redis_cluster_gives_the_standalone_histories(
    trained_dir, slice_events, redis_server, redis_cluster, monkeypatch
):
    _, path = slice_events
    batch(trained_dir[0], path, redis_server.url, monkeypatch, "shards")
    report = batch(trained_dir[0], path, redis_cluster.url, monkeypatch, "shards")
    assert report["windows written"] == report["windows"]
    assert dump(redis_cluster.ports, "shards") == dump([redis_server.port], "shards")
    per_master = [len(dump([p], "shards", "c")) for p in redis_cluster.ports]
    assert all(n > 0 for n in per_master), per_master


@pytest.mark.slow
def test_the_ray_engine_writes_what_the_local_engine_writes(trained_dir, slice_events, redis_server, monkeypatch):
    import ray

    _, path = slice_events
    batch(trained_dir[0], path, redis_server.url, monkeypatch, "local-engine")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = batch(trained_dir[0], path, redis_server.url, monkeypatch, "ray-engine", engine="ray")
    finally:
        ray.shutdown()
    assert report["engine"] == "ray" and report["windows written"] == report["windows"] > 50
    assert dump([redis_server.port], "ray-engine") == dump([redis_server.port], "local-engine")
    assert report["stage_s"]["encode + quantize"] > 0 and report["startup_s"] >= 0
