"""The token service over HTTP, against a real Redis started by the test session."""

import concurrent.futures
import json
import os
import random
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import redis

from u2qt.model.manifest import MANIFEST_FILE, Manifest
from u2qt.model.runtime import TokenizerRuntime
from u2qt.model.sources import WINDOW_ORIGIN
from u2qt.training.corpus import build_corpus
from u2qt.training.events import to_service_events


def api_events(df, user_prefix=""):
    from u2qt.training.completejourney import sources_config

    return to_service_events(df, sources_config(), user_prefix)


@pytest.fixture(scope="module")
def one_user(cj_events):
    events, sources = cj_events
    user = events["user_id"].value_counts().index[5]
    return events[events["user_id"] == user].sort_values("ts"), sources


def post(base, events, **kw):
    return httpx.post(f"{base}/tokenize", json={"events": events}, timeout=60, **kw)


def test_round_trip_gives_the_tokens_training_would(serve_both, one_user, trained_dir):
    base, _ = serve_both()
    df, sources = one_user
    user = df["user_id"].iloc[0]
    r = post(base, api_events(df))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == len(df) and body["duplicates"] == 0 and body["late"] == 0
    hist = httpx.get(f"{base}/users/{user}/tokens", params={"format": "both"}).json()
    windows = hist["windows"]
    assert hist["model_version"] == body["model_version"]
    assert [w["window_start"] for w in windows] == sorted(w["window_start"] for w in windows)
    assert all(len(w["tokens"]) == 4 and w["token_strings"][0].startswith("<s1_") for w in windows)
    assert windows[0]["token_strings"][2].startswith(f"<{windows[0]['source']}1_")

    # what the offline pipeline (training's rendering + the same ONNX files) gives for these windows
    corpus = build_corpus(df, sources, progress=False)
    rt = TokenizerRuntime(trained_dir[0], providers="cpu")
    w = corpus.windows
    codes = rt.encode_windows(corpus.rendered())
    expected = {
        (s, int(t)): rt.vocabulary.ids(np.array([i]), c[None])[0].tolist()
        for s, t, i, c in zip(w["source"], w["window_start"], w["source_index"], codes, strict=True)
    }
    served = {
        (x["source"], int(np.datetime64(x["window_start"].rstrip("Z"), "s").astype(int))): x["tokens"] for x in windows
    }
    assert served == {k: expected[k] for k in served}
    # each window says how many events its tokens were built from, in reads as in the POST's answer
    from u2qt.model.sources import window_start

    counts = df.assign(w=window_start(df["ts"].to_numpy(), sources.period_s)).groupby(["source", "w"]).size()
    served_counts = {
        (x["source"], int(np.datetime64(x["window_start"].rstrip("Z"), "s").astype(int))): x["event_count"]
        for x in windows
    }
    assert served_counts == {k: int(counts[k]) for k in served_counts}
    for source in {k[0] for k in expected}:  # the newest 180 days (26 weekly windows) of each source are kept
        newest = sorted(k for k in expected if k[0] == source)[-26:]
        assert sorted(k for k in served if k[0] == source) == newest


def test_replay_changes_nothing_and_late_events_are_refused(serve_both, one_user):
    base, _ = serve_both()
    df, _ = one_user
    user = df["user_id"].iloc[0]
    events = api_events(df)
    assert post(base, events).status_code == 200
    before = httpx.get(f"{base}/users/{user}/tokens").json()
    replay = post(base, events).json()
    assert replay["accepted"] == 0 and replay["duplicates"] == len(events) and replay["windows"] == []
    assert httpx.get(f"{base}/users/{user}/tokens").json() == before

    old = dict(events[0], event_id="late-1")  # the first week, long closed
    r = post(base, [old]).json()
    assert r["late"] == 1 and r["events"][0]["status"] == "late" and "closed" in r["events"][0]["reason"]
    assert httpx.get(f"{base}/users/{user}/tokens").json() == before
    metrics = httpx.get(f"{base}/metrics").text
    assert 'u2qt_events_total{outcome="late"} 1.0' in metrics
    assert f'u2qt_events_total{{outcome="duplicate"}} {float(len(events))}' in metrics


def test_a_late_arrival_in_an_open_window_replaces_its_tokens(serve, one_user):
    base, _ = serve()
    df, _ = one_user
    user = df["user_id"].iloc[0]
    purchases = [e for e in api_events(df) if e["source"] == "purchases"]
    last_ts = purchases[-1]["ts"]
    first = post(base, purchases[:-1]).json()
    n_windows = len(httpx.get(f"{base}/users/{user}/tokens", params={"sources": "purchases"}).json()["windows"])
    extra = dict(purchases[-1], event_id="extra-1", text="premium seafood", amount=99.0, ts=last_ts)
    r = post(base, [purchases[-1], extra]).json()
    assert r["accepted"] == 2 and len(r["windows"]) == 1
    hist = httpx.get(f"{base}/users/{user}/tokens", params={"sources": "purchases"}).json()["windows"]
    assert len(hist) in (n_windows, n_windows + 1)  # the last event may open a new week
    assert hist[-1]["tokens"] == r["windows"][0]["tokens"]
    assert len({w["window_start"] for w in hist}) == len(hist), "one entry per window"
    assert first["windows"]


def busiest_purchase_window(df, period_s: int) -> list[dict]:
    """The API events of the user's purchase window that holds the most of them."""
    from u2qt.model.sources import window_start

    purchases = [e for e in api_events(df) if e["source"] == "purchases"]
    starts = window_start(np.array([e["ts"] for e in purchases]), period_s).tolist()
    busiest = max(set(starts), key=starts.count)
    return [e for e, start in zip(purchases, starts, strict=True) if start == busiest]


def test_a_new_window_is_one_script_with_the_tokens_of_the_usual_path(serve, one_user, trained_dir, redis_server):
    """A window the frontend has not seen lately is tokenized from the request's own events, and its codes are
    written by the script that ingests them: one Redis script per user for a new window, where INGEST and COMMIT
    were two. The tokens are those of the window tokenized from its stored events."""
    base, _ = serve()
    df, _ = one_user
    window = busiest_purchase_window(df, Manifest.load(trained_dir[0]).sources.period_s)
    assert len(window) >= 2

    def scripts_run() -> int:
        stats = redis.Redis(port=redis_server.port).info("commandstats")
        return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("eval", "evalsha"))

    post(base, [dict(window[0], user_id="warm-up", event_id="warm-up")])  # the scripts' first EVAL (NOSCRIPT)
    before = scripts_run()
    guessed = post(base, window).json()
    assert scripts_run() - before == 1, "a new window: INGEST and COMMIT in one script"
    # the same window again, under another user, as one event and then the rest: the usual path (INGEST, then
    # the window's stored events tokenized, then COMMIT) builds its tokens from all of them
    other = [dict(e, user_id=e["user_id"] + "-b") for e in window]
    post(base, other[:1])
    usual = post(base, other[1:]).json()
    assert guessed["windows"][0]["event_count"] == usual["windows"][0]["event_count"] == len(window)
    assert guessed["windows"][0]["tokens"] == usual["windows"][0]["tokens"]
    user = window[0]["user_id"]
    stored = httpx.get(f"{base}/users/{user}/tokens", params={"sources": "purchases"}).json()["windows"]
    assert [w["tokens"] for w in stored] == [guessed["windows"][0]["tokens"]]
    metrics = httpx.get(f"{base}/metrics").text
    assert 'u2qt_window_guesses_total{outcome="stored"} 3.0' in metrics  # warm-up, the window, the first of other
    assert 'u2qt_window_guesses_total{outcome="wasted"} 0.0' in metrics


def test_a_window_another_frontend_opened_is_tokenized_from_all_of_its_events(serve, one_user, trained_dir):
    """A frontend that has not seen a window guesses it is new; where another frontend (or this one before a
    restart) already stored events of it, the guess is wrong, and the window is tokenized from all of its stored
    events, as one frontend that had received them all would tokenize it."""
    base_a, settings = serve()
    base_b, _ = serve(key_prefix=settings.key_prefix)  # a second frontend on the same store
    df, _ = one_user
    window = busiest_purchase_window(df, Manifest.load(trained_dir[0]).sources.period_s)
    half = len(window) // 2
    assert post(base_a, window[:half]).status_code == 200
    split = post(base_b, window[half:]).json()
    whole = post(base_a, [dict(e, user_id=e["user_id"] + "-whole") for e in window]).json()
    assert split["accepted"] == len(window) - half
    assert split["windows"][0]["event_count"] == whole["windows"][0]["event_count"] == len(window)
    assert split["windows"][0]["tokens"] == whole["windows"][0]["tokens"]
    user = window[0]["user_id"]
    for base in (base_a, base_b):
        stored = httpx.get(f"{base}/users/{user}/tokens", params={"sources": "purchases"}).json()["windows"]
        assert [w["tokens"] for w in stored] == [whole["windows"][0]["tokens"]]
    assert 'u2qt_window_guesses_total{outcome="wasted"} 1.0' in httpx.get(f"{base_b}/metrics").text


def test_concurrent_writers_converge_to_the_serial_history(serve_both, cj_events):
    base, _ = serve_both(max_batch_size=16)
    events, _ = cj_events
    users = events["user_id"].unique()[:4]
    sub = events[events["user_id"].isin(users)].sort_values("ts")
    serial = api_events(sub, "s-")
    assert post(base, serial).status_code == 200

    # six producers replay the same time-ordered stream at once (at-least-once delivery), each with its own
    # chunking into whole weeks and its own order inside a chunk
    weeks: dict[int, list] = {}
    for e in api_events(sub, "c-"):
        weeks.setdefault(int(e["ts"] - 4 * 86400) // (7 * 86400), []).append(e)
    ordered = [weeks[w] for w in sorted(weeks)]

    def producer(seed):
        rng, i, codes = random.Random(seed), 0, []
        while i < len(ordered):
            n = rng.randint(1, 3)
            chunk = [e for week in ordered[i : i + n] for e in week]
            rng.shuffle(chunk)
            r = post(base, chunk)
            while r.status_code == 429:  # an at-least-once upstream retries what was refused
                time.sleep(0.05)
                r = post(base, chunk)
            codes.append(r.status_code)
            i += n
        return codes

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        codes = [c for cs in pool.map(producer, range(6)) for c in cs]
    assert set(codes) == {200}
    got = httpx.post(f"{base}/users/tokens", json={"user_ids": [f"c-{u}" for u in users]}).json()["users"]
    want = httpx.post(f"{base}/users/tokens", json={"user_ids": [f"s-{u}" for u in users]}).json()["users"]
    assert [got[f"c-{u}"] for u in users] == [want[f"s-{u}"] for u in users]


def test_filters_and_batch_read(serve_both, one_user):
    base, _ = serve_both()
    df, _ = one_user
    user = df["user_id"].iloc[0]
    post(base, api_events(df))
    full = httpx.get(f"{base}/users/{user}/tokens").json()["windows"]
    assert {w["source"] for w in full} == {"purchases", "visits"} | ({"promotions"} & set(df["source"]))
    last3 = httpx.get(f"{base}/users/{user}/tokens", params={"limit": 3}).json()["windows"]
    assert last3 == full[-3:]
    mid = full[len(full) // 2]["window_start"]
    assert [w["window_start"] for w in full] == sorted(w["window_start"] for w in full)  # ISO-8601: sorts as time
    since = httpx.get(f"{base}/users/{user}/tokens", params={"since": mid}).json()["windows"]
    assert since and since == [w for w in full if w["window_start"] >= mid]
    until = httpx.get(f"{base}/users/{user}/tokens", params={"until": mid, "limit": 2}).json()["windows"]
    assert until == [w for w in full if w["window_start"] <= mid][-2:]
    strings = httpx.get(f"{base}/users/{user}/tokens", params={"sources": "visits", "format": "strings"}).json()
    assert all("tokens" not in w and w["token_strings"][3].startswith("<visits2_") for w in strings["windows"])
    batch = httpx.post(f"{base}/users/tokens", json={"user_ids": [user, "nobody"], "limit": 2}).json()
    assert batch["users"][user] == full[-2:] and batch["users"]["nobody"] == []
    both = httpx.get(f"{base}/users/{user}/tokens", params=[("sources", "visits"), ("sources", "purchases")]).json()
    assert both["windows"] == [w for w in full if w["source"] in ("visits", "purchases")]
    for params, loc in [
        ({"limit": 0}, ["query", "limit"]),
        ({"format": "xml"}, ["query", "format"]),
        ({"since": "yesterday"}, ["query", "since"]),
    ]:
        r = httpx.get(f"{base}/users/{user}/tokens", params=params)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == loc, r.text
    r = httpx.get(f"{base}/users/{{x}}/tokens")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "user_id"], r.text


def test_history_is_capped_and_expires(serve, one_user, redis_server):
    base, settings = serve(history_days=21, ttl_days=30)  # weekly windows: at most 3 entries
    df, _ = one_user
    user = df["user_id"].iloc[0]
    post(base, api_events(df[df["source"] == "visits"]))
    hist = httpx.get(f"{base}/users/{user}/tokens").json()["windows"]
    assert len(hist) == 3
    keys = redis.Redis(port=redis_server.port).keys(f"{settings.key_prefix}:{{{user}}}:c:*")
    assert len(keys) == 1, redis.Redis(port=redis_server.port).keys(f"{settings.key_prefix}*")[:5]
    ttl = redis.Redis(port=redis_server.port).ttl(keys[0])
    assert 29 * 86400 < ttl <= 30 * 86400


@pytest.mark.parametrize(
    "event,field",
    [
        ({"source": "clicks", "text": "x"}, "source"),
        ({"source": "purchases"}, "text"),
        ({"source": "visits", "attributes": {"spend": 1, "colour": 2}}, "attributes"),
        ({"source": "purchases", "text": "milk", "ts": "not a time"}, "ts"),
        ({"source": "purchases", "text": "milk", "user_id": "{evil}"}, "user_id"),
        ({"source": "purchases", "text": "milk", "amount": "NaN"}, "amount"),
    ],
)
def test_invalid_events_get_422_naming_the_field(serve, event, field):
    base, _ = serve()
    e = {"event_id": "e1", "user_id": "u1", "ts": 1489060406, **event}
    good = {"event_id": "ok", "user_id": "u-ok", "source": "purchases", "ts": 1489060406, "text": "milk"}
    r = post(base, [good, e])
    assert r.status_code == 422, r.text
    assert any(d["loc"][:3] == ["body", "events", 1] and field in d["loc"] for d in r.json()["detail"]), r.text
    assert httpx.get(f"{base}/users/u-ok/tokens").json()["windows"] == [], "nothing of a refused request is kept"


def test_limits_auth_and_overload(serve):
    base, _ = serve(max_body_bytes=4096, max_queue_windows=1, writer_keys=["w-secret"], reader_keys=["r-secret"])
    ev = [
        {"event_id": f"e{i}", "user_id": f"u{i}", "source": "purchases", "ts": 1489060406, "text": "milk"}
        for i in range(2)
    ]
    assert post(base, ev).status_code == 401
    assert post(base, ev, headers={"X-API-Key": "r-secret"}).status_code == 401
    r = post(base, ev, headers={"X-API-Key": "w-secret"})  # two windows never fit a queue of one
    assert r.status_code == 413 and "U2QT_MAX_QUEUE_WINDOWS" in r.json()["detail"]
    assert post(base, ev[:1], headers={"Authorization": "Bearer w-secret"}).status_code == 200
    big = [dict(ev[0], event_id=f"b{i}", text="x" * 500) for i in range(20)]
    assert post(base, big, headers={"X-API-Key": "w-secret"}).status_code == 413
    assert httpx.get(f"{base}/users/u0/tokens").status_code == 401
    assert httpx.get(f"{base}/users/u0/tokens", headers={"X-API-Key": "r-secret"}).status_code == 200
    assert (
        httpx.get(f"{base}/users/u0/tokens", params={"sources": "nope"}, headers={"X-API-Key": "r-secret"}).status_code
        == 422
    )


def test_redis_outage_gives_503_and_the_service_recovers(serve, tmp_path):
    from tests.conftest import RedisServer

    store = RedisServer().start()
    try:
        base, _ = serve(redis_url=store.url)
        ev = {"event_id": "a", "user_id": "u1", "source": "purchases", "ts": 1489060406, "text": "milk"}
        assert post(base, [ev]).status_code == 200
        store.stop()
        r = post(base, [dict(ev, event_id="b")])
        assert r.status_code == 503 and r.headers["Retry-After"]
        assert httpx.get(f"{base}/users/u1/tokens").status_code == 503
        assert httpx.get(f"{base}/readyz").status_code == 503
        assert httpx.get(f"{base}/healthz").status_code == 200
        store.start()  # an empty Redis on the same port: the service reconnects by itself
        assert httpx.get(f"{base}/readyz").status_code == 200
        r = post(base, [dict(ev, event_id="b")])
        assert r.status_code == 200 and r.json()["accepted"] == 1
        assert len(httpx.get(f"{base}/users/u1/tokens").json()["windows"]) == 1
    finally:
        store.stop()


def test_ops_endpoints(serve):
    base, _ = serve()
    assert httpx.get(f"{base}/healthz").json() == {"status": "alive"}
    ready = httpx.get(f"{base}/readyz").json()
    assert ready["status"] == "ready" and ready["providers"] == ["CPUExecutionProvider"]
    text = httpx.get(f"{base}/metrics").text
    for name in (
        "u2qt_http_requests_total",
        "u2qt_batch_windows_bucket",
        "u2qt_inference_duration_seconds",
        "u2qt_queue_windows",
        "u2qt_model_info",
    ):
        assert name in text
    spec = httpx.get(f"{base}/openapi.json").json()
    assert {"/tokenize", "/users/{user_id}/tokens", "/users/tokens"} <= set(spec["paths"])


def test_service_imports_without_torch():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any import of torch now fails\n"
        "import u2qt.service.app\n"
        "from u2qt.service.app import create_app\n"
        "from u2qt.service.cli import build_parser\n"
        "build_parser().parse_args(['serve'])\n"
        "print('ok')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_embedding_endpoint_round_trip_matches_the_history_model_offline(serve, one_user, trained_dir):
    import torch

    from u2qt.model.sequence import history_sequence
    from u2qt.model.sources import window_index
    from u2qt.training.alignment import load_history_model

    base, _ = serve()
    df, _ = one_user
    user = df["user_id"].iloc[0]
    assert post(base, api_events(df)).status_code == 200
    got = httpx.get(f"{base}/users/{user}/embedding").json()
    hist = httpx.get(f"{base}/users/{user}/tokens").json()

    rt = TokenizerRuntime(trained_dir[0], providers="cpu")
    names = [s.name for s in rt.manifest.sources.sources]
    starts = np.array([int(np.datetime64(w["window_start"].rstrip("Z"), "s").astype(int)) for w in hist["windows"]])
    seq = history_sequence(
        window_index(starts, rt.manifest.sources.period_s),
        np.array([names.index(w["source"]) for w in hist["windows"]]),
        np.array([w["tokens"] for w in hist["windows"]]),
        rt.manifest.history.max_tokens,
        rt.manifest.history.max_age,
    )
    offline = rt.embed_histories(*(x[None] for x in seq))[0]
    with torch.no_grad():
        reference = load_history_model(trained_dir[0] / "checkpoint")(*(torch.from_numpy(x[None]) for x in seq))[0]
    served = np.array(got["embedding"])
    assert got["windows"] == len(hist["windows"]) and got["model_version"] == hist["model_version"]
    assert len(served) == rt.manifest.history.dim and np.linalg.norm(served) == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(served, offline, atol=1e-5)
    np.testing.assert_allclose(served, reference.numpy(), atol=1e-4)  # ONNX Runtime vs PyTorch

    nobody = httpx.get(f"{base}/users/nobody/embedding")  # no history is no error, as for tokens
    assert nobody.status_code == 200 and (nobody.json()["windows"], nobody.json()["embedding"]) == (0, None)
    many = httpx.post(f"{base}/users/embeddings", json={"user_ids": [user, "nobody"]}).json()["users"]
    assert many["nobody"] is None
    np.testing.assert_allclose(many[user]["embedding"], served, atol=1e-6)


def test_tokens_embedding_is_the_decoded_tokens_reader_of_u2qt_eval(serve, one_user, trained_dir):
    """kind=tokens: each stored window's codes decoded to their codeword sum by the checkpoint's own quantizer
    (PyTorch), averaged per source weighted by the windows' event counts and followed by the source's activity
    (log1p of windows, events, windows since the newest) and its soft counts (log1p of the sum over its windows of
    ReLU((z - mean) / scale @ projection), with the exported standardization and projection), the sources side by
    side, then log1p of the sum over the windows of texts sources of each text's predicted count (the window's
    tokens' rows of the exported table plus its intercept, negatives cut): eval's "decoded tokens" for this user's
    history."""
    import torch
    from safetensors.numpy import load_file

    from u2qt.training.train import load_checkpoint

    base, _ = serve()
    df, _ = one_user
    user = df["user_id"].iloc[0]
    assert post(base, api_events(df)).status_code == 200
    got = httpx.get(f"{base}/users/{user}/embedding", params={"kind": "tokens"}).json()
    hist = httpx.get(f"{base}/users/{user}/tokens").json()["windows"]
    ck = load_checkpoint(trained_dir[0])
    q, names = ck.model.quantizer, ck.model.config.sources
    vocab = TokenizerRuntime(trained_dir[0], providers="cpu").vocabulary
    src = torch.tensor([names.index(w["source"]) for w in hist])
    offsets = [vocab.ids(np.array([i]), np.zeros((1, q.levels), np.int64))[0] for i in range(len(names))]
    codes = torch.tensor([np.array(w["tokens"]) - offsets[names.index(w["source"])] for w in hist])
    z = q.decode(codes, src).numpy()
    events = np.array([w["event_count"] for w in hist], np.float64)
    period = ck.train_config.sources.period_s
    index = np.array(
        [(np.datetime64(w["window_start"].rstrip("Z"), "s").astype(int) - WINDOW_ORIGIN) // period for w in hist]
    )
    horizon = -(-180 * 86400 // period)  # U2QT_HISTORY_DAYS' default, in windows
    now = (time.time() - WINDOW_ORIGIN) // period
    exported = load_file(str(trained_dir[0] / "codebooks.safetensors"))
    scaled = (z - exported["soft_counts_mean"]) / exported["soft_counts_scale"]
    features = np.maximum(scaled @ exported["soft_counts_projection"], 0)
    expected = []
    for i in range(len(names)):
        mine = src.numpy() == i
        if mine.any():
            mean = (z[mine] * events[mine, None]).sum(0) / events[mine].sum()
            activity = [mine.sum(), events[mine].sum(), min(now - index[mine].max(), horizon)]
        else:
            mean, activity = np.zeros(q.dim), [0, 0, horizon]
        expected += [mean, np.log1p(activity), np.log1p(features[mine].sum(0))]
    tokens = np.array([w["tokens"] for w in hist])
    texts = exported["texts_table"][tokens].sum(1) + exported["texts_intercept"]
    texts *= exported["texts_sources"][src.numpy()][:, None]
    expected = np.concatenate([*expected, np.log1p(np.maximum(texts, 0).sum(0))])
    assert events.min() >= 1 and len(set(events)) > 1, "the weights must matter for this check"
    assert features.shape[1] == 256 and features.any(), "the soft counts must be served for this check"
    n_texts = len(Manifest.load(trained_dir[0]).decoded.texts)
    assert n_texts > 100 and (texts > 0).any(), "the decoded texts must be served for this check"
    assert 0 < exported["texts_sources"].sum() < len(names), "a source without texts must be left out for this check"
    width = len(names) * (q.dim + 3 + 256) + n_texts
    assert got["kind"] == "tokens" and got["windows"] == len(hist) and len(got["embedding"]) == width
    assert len(got["embedding"]) == Manifest.load(trained_dir[0]).decoded.dim, "the width the manifest promises"
    np.testing.assert_allclose(got["embedding"], expected, atol=1e-5)
    many = httpx.post(f"{base}/users/embeddings", json={"user_ids": [user, "nobody"], "kind": "tokens"}).json()
    assert many["users"]["nobody"] is None and many["kind"] == "tokens"
    np.testing.assert_allclose(many["users"][user]["embedding"], got["embedding"], atol=1e-6)
    bad = httpx.get(f"{base}/users/{user}/embedding", params={"kind": "raw"})
    assert bad.status_code == 422 and "kind" in bad.text


def test_tokens_embedding_refuses_artifacts_exported_for_another_width(trained_dir, redis_server, tmp_path):
    """A ranker sizes its input by the manifest's decoded.dim: artifacts whose manifest promises another width than
    this service pools get a 501 that says what to do, never a vector of the wrong width."""
    import shutil

    from tests.conftest import ServiceThreads

    artifacts = tmp_path / "artifacts"
    shutil.copytree(trained_dir[0], artifacts, ignore=shutil.ignore_patterns("cache"))
    manifest = json.loads((artifacts / MANIFEST_FILE).read_text())
    manifest["decoded"]["dim"] -= 3  # as exported before the reader added each source's activity
    (artifacts / MANIFEST_FILE).write_text(json.dumps(manifest))
    services = ServiceThreads(artifacts, redis_server.url, tmp_path)
    try:
        base, _ = services.start()
        r = httpx.get(f"{base}/users/someone/embedding", params={"kind": "tokens"})
        assert r.status_code == 501 and "u2qt export" in r.json()["detail"]
        assert httpx.get(f"{base}/users/someone/embedding").status_code == 200, "the history model is unaffected"
    finally:
        services.stop()


def test_every_key_of_a_user_lives_in_one_redis_cluster_slot(serve, one_user, redis_server):
    from redis.crc import key_slot

    base, settings = serve()
    df, _ = one_user
    user = df["user_id"].iloc[0]
    assert post(base, api_events(df)).status_code == 200
    keys = list(redis.Redis(port=redis_server.port).scan_iter(f"{settings.key_prefix}:*"))
    own = [k for k in keys if f"{{{user}}}".encode() in k]
    shared = [k for k in keys if k not in own]
    assert len(own) > 3 and len({key_slot(k) for k in own}) == 1
    # the only keys outside the user's slot: the collision sets, which hold several users by design
    assert all(b":fb:" in k for k in shared)


def test_identical_histories_get_a_fallback_token_that_survives_a_restart(serve_both, one_user):
    base, settings = serve_both()
    df, _ = one_user
    visits = df[df["source"] == "visits"].head(12)

    def twin(name):
        return [dict(e, event_id=f"{name}-{e['event_id']}") for e in api_events(visits, f"{name}-")]

    assert post(base, twin("twin-b")).status_code == 200  # arrival order must not matter
    assert post(base, twin("twin-a")).status_code == 200
    solo = [dict(e, ts=e["ts"] + 86400 * 3) for e in api_events(visits.head(3), "solo-")]
    assert post(base, solo).status_code == 200
    user = visits["user_id"].iloc[0]
    a = httpx.get(f"{base}/users/twin-a-{user}/tokens").json()
    b = httpx.get(f"{base}/users/twin-b-{user}/tokens").json()
    assert a["windows"] == b["windows"]
    # same engagement (accepted events): ordered by user id
    assert (a["fallback"], a["fallback_token"], b["fallback"], b["fallback_token"]) == (1, "<fb_1>", 2, "<fb_2>")
    assert "fallback" not in httpx.get(f"{base}/users/solo-{user}/tokens").json()

    again, _ = serve_both(key_prefix=settings.key_prefix)  # a restart: the assignment lives in Redis
    both = httpx.post(f"{again}/users/tokens", json={"user_ids": [f"twin-b-{user}", f"twin-a-{user}"]}).json()
    assert both["fallback"] == {
        f"twin-a-{user}": {"fallback": 1, "fallback_token": "<fb_1>"},
        f"twin-b-{user}": {"fallback": 2, "fallback_token": "<fb_2>"},
    }

    # one more event for twin-b: more engagement; if its tokens changed the twins no longer collide at all
    extra = dict(twin("twin-b")[-1], event_id="twin-b-extra")
    assert post(again, [extra]).json()["accepted"] == 1
    a = httpx.get(f"{again}/users/twin-a-{user}/tokens").json()
    b = httpx.get(f"{again}/users/twin-b-{user}/tokens").json()

    def tokens(history):  # what the fallback compares: the tokens, not the event counts
        return [(w["source"], w["window_start"], w["tokens"]) for w in history["windows"]]

    if tokens(a) == tokens(b):
        assert (b["fallback"], a["fallback"]) == (1, 2)  # engagement first
    else:
        assert "fallback" not in a and "fallback" not in b


def test_the_model_route_describes_what_a_ranker_consumes(serve, one_user):
    base, _ = serve()
    m = httpx.get(f"{base}/model").json()
    assert m["model_version"] == httpx.get(f"{base}/readyz").json()["model_version"]
    assert [x["name"] for x in m["sources"]] == ["purchases", "promotions", "visits"] and m["window"] == "7d"
    assert len(m["tokens"]) == m["vocabulary"]["size"]
    # the kind=tokens width, as the embedding route answers it: 3 x (32 + 3 + 256) + the decoded texts, in order
    texts = m["tokens_embedding"]["texts"]
    assert m["tokens_embedding"] == {"dim": 3 * (32 + 3 + 256) + len(texts), "soft_counts": 256, "texts": texts}
    assert len(texts) > 100 and all(isinstance(t, str) and t for t in texts)
    df, _ = one_user
    r = post(base, api_events(df.head(5))).json()
    for w in r["windows"]:  # a token id indexes the token strings
        assert [m["tokens"][t] for t in w["tokens"]] == w["token_strings"]


def test_docs_work_offline_and_are_counted_by_route(serve):
    base, _ = serve()
    page = httpx.get(f"{base}/docs").text
    assert "cdn." not in page and "/static-offline-docs/swagger-ui-bundle.js" in page
    assert httpx.get(f"{base}/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    metrics = httpx.get(f"{base}/metrics").text
    assert 'route="/docs"' in metrics and 'route="/static-offline-docs"' in metrics


def test_serve_on_a_taken_port_says_which_option_to_change(trained_dir):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "u2qt.service.cli",
                "serve",
                "--artifacts",
                str(trained_dir[0]),
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert r.returncode == 2 and "--port" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "serving" not in r.stdout


def test_an_engine_that_cannot_start_stops_serve_with_its_reason(trained_dir):
    """U2QT_FRONTENDS with a provider this machine lacks: the engine says why in one line, `u2qt serve` exits
    with a CLI error, no traceback, nothing served."""
    import onnxruntime

    from tests.conftest import free_port

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    env = dict(os.environ, U2QT_FRONTENDS="1", U2QT_PROVIDERS="cuda", REDIS_URL="redis://127.0.0.1:1")
    args = [sys.executable, "-m", "u2qt.service.cli", "serve", "--artifacts", str(trained_dir[0])]
    r = subprocess.run([*args, "--port", str(free_port())], capture_output=True, text=True, timeout=120, env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "u2qt engine could not start" in out and "inference engine exited" in out, out
    assert "Traceback" not in out and "Uvicorn running" not in out


def test_serve_prints_a_try_it_event_that_the_served_model_accepts(trained_dir):
    """`u2qt serve` prints a curl to try: its event is of the model's own first source, whatever that source is
    called and whether it is text or tabular (a model without a `purchases` source answered that curl with 422)."""
    import json

    from u2qt.model.manifest import Manifest
    from u2qt.service.cli import example_event
    from u2qt.service.ingest import validation_errors
    from u2qt.service.schemas import tokenize_events

    manifest = Manifest.load(trained_dir[0], verify=False)
    specs = manifest.sources.sources
    assert {s.kind for s in specs} == {"text", "tabular"}
    for first in specs:
        order = manifest.sources.model_copy(update={"sources": [first, *(s for s in specs if s is not first)]})
        model = manifest.model_copy(update={"sources": order})
        event = example_event(model)
        events = tokenize_events(json.dumps({"events": [event]}).encode())
        assert event["source"] == first.name
        assert validation_errors(events, model, time.time() + 60) == []


def test_while_guessing_is_off_one_request_in_100_with_unseen_windows_probes(services):
    """With guessing off, one request in 100 probes whether guesses pay again. Only requests that have a window to
    guess count: a frontend whose every other request goes to windows it has seen must still probe its new ones,
    or guessing could never come back."""
    if services.frontends:
        pytest.skip("reaches into the in-process tokenizer's policy; both modes run the same EventTokenizer")
    base, _ = services.start()
    ts = 1489060406  # 2017-03-09, inside The Complete Journey
    policy = services.apps[base].state.u2qt.tokenizer.guessing

    def event(user: str, n: int) -> dict:
        return {"event_id": f"{user}-{n}", "user_id": user, "source": "purchases", "ts": ts, "text": "milk"}

    assert post(base, [event("seen", 0)]).status_code == 200
    policy.hit_rate = 0.0  # as after two requests of wrong guesses
    for n in range(1, 101):  # a new user's window, then one more event into a window this frontend has seen
        assert post(base, [event(f"new-{n}", 0)]).status_code == 200
        assert post(base, [event("seen", n)]).status_code == 200
    stored = 'u2qt_window_guesses_total{outcome="stored"} 2.0'  # the first window, then the one probe
    assert stored in httpx.get(f"{base}/metrics").text
