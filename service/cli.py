"""The `u2qt` command, in both installs: serving (`serve`) needs only u2qt; `train`, `export`, `inspect`, `align`,
`eval` and `up` need u2qt-train (training/) too, and say so when it is missing. Each subcommand imports only what
it needs: `u2qt serve` never imports torch."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from u2qt.model.manifest import Manifest


class CLIError(Exception):
    """A problem the user can fix; printed as one line, no traceback."""


def _train_config(args):
    from u2qt.training.completejourney import sources_config
    from u2qt.training.config import TrainConfig

    if args.dataset and args.events:
        raise CLIError("give either --dataset or --events, not both")
    if args.events and not args.sources:
        raise CLIError("--events needs --sources sources.yaml declaring the sources")
    if args.sources:
        cfg = TrainConfig.from_yaml(args.sources)
    elif args.dataset == "completejourney":
        cfg = TrainConfig(sources=sources_config())
    else:
        raise CLIError("give --dataset completejourney, or --events FILE with --sources FILE")
    raw = cfg.model_dump()
    overrides = {
        ("optim", "epochs"): args.epochs,
        ("optim", "seed"): args.seed,
        ("quantizer", "shared_levels"): args.shared_levels,
        ("quantizer", "specific_levels"): args.specific_levels,
        ("quantizer", "codebook_size"): args.codebook_size,
        ("quantizer", "code_dim"): args.code_dim,
        ("reader", "soft_counts"): args.soft_counts,
        ("reader", "texts"): args.texts,
        ("encoder", "model"): args.text_model,
        ("encoder", "pooling"): args.pooling,
        ("encoder", "precision"): args.precision,
        ("encoder", "bag_buckets"): args.bag_buckets,
        ("sources", "window"): args.window,
    }
    for (section, key), value in overrides.items():
        if value is not None:
            raw[section][key] = value
    if args.max_users is not None:
        raw["max_users"] = args.max_users
    return TrainConfig.model_validate(raw)


def cmd_train(args) -> None:
    from u2qt.training.events import keep_users, normalize_events, read_events
    from u2qt.training.train import train

    cfg = _train_config(args)
    t0 = time.perf_counter()
    if args.events:
        events = read_events(args.events)
    else:
        from u2qt.training.completejourney import load_events

        print("loading The Complete Journey ...", flush=True)
        events = load_events()
    events = keep_users(normalize_events(events, cfg.sources), cfg.max_users, cfg.optim.seed)
    print(f"{len(events):,} events from {events['user_id'].nunique():,} users", flush=True)
    report = train(cfg, events, Path(args.out))
    print(format_report(report))
    print(f"trained in {time.perf_counter() - t0:.0f} s -> {args.out} (report.json, utilization.png)")
    if not getattr(args, "then_serve", False):
        print(f"next: u2qt export {args.out}")


def _load_events(args, sources, max_users=None, seed=0):
    from u2qt.training.events import keep_users, normalize_events, read_events

    if getattr(args, "events", None):
        events = read_events(args.events)
    else:
        from u2qt.training.completejourney import load_events

        print("loading The Complete Journey ...", flush=True)
        events = load_events()
    return keep_users(normalize_events(events, sources), max_users, seed)


def cmd_align(args) -> None:
    """The alignment stage alone, on an existing training directory (e.g. one trained without it)."""
    import numpy as np

    from u2qt.model.vocabulary import TokenVocabulary
    from u2qt.training.alignment import fit_alignment, save_history_model
    from u2qt.training.train import CHECKPOINT_DIR, load_checkpoint

    out = Path(args.train_dir)
    ck = load_checkpoint(out)
    cfg = ck.train_config
    if args.epochs is not None:
        cfg.align.epochs = args.epochs
    events = _load_events(args, cfg.sources, cfg.max_users, cfg.optim.seed)
    z = np.load(out / "windows.npz")
    c = ck.model.config
    vocab = TokenVocabulary(c.sources, c.shared_levels, c.specific_levels, c.codebook_size)
    import pandas as pd

    windows = pd.DataFrame(
        {"user_id": z["user_id"], "source_index": z["source_index"], "window_start": z["window_start"]}
    )
    t0 = time.perf_counter()
    model, log, n = fit_alignment(
        cfg,
        windows,
        vocab.ids(z["source_index"], z["codes"]),
        events,
        ck.model.quantizer,
        vocab,
        out / "encoder",
        ck.encoder,
        out / "cache",
    )
    save_history_model(out / CHECKPOINT_DIR, model)
    report_path = out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    report["alignment"] = {"samples": n, "losses_by_epoch": log, "seconds": round(time.perf_counter() - t0, 1)}
    report_path.write_text(json.dumps(report, indent=2))
    print(f"history model trained on {n:,} samples in {time.perf_counter() - t0:.0f} s; losses by epoch: {log}")
    print(f"next: u2qt export {out}")


def cmd_eval(args) -> None:
    from u2qt.training.config import AlignConfig
    from u2qt.training.evaluation import EvalConfig, run_eval
    from u2qt.training.train import load_checkpoint

    train_dir = Path(args.train_dir)
    cfg = EvalConfig(
        cutoff=args.cutoff,
        seeds=args.seeds,
        **({"probe_cs": args.probe_c} if args.probe_c else {}),
        tokenizer_epochs=args.tokenizer_epochs,
        align=AlignConfig(epochs=args.align_epochs, min_steps=args.align_min_steps),
        ablations=not args.no_ablations,
    )
    events = labels = None
    if args.events or args.labels:
        if not (args.events and args.labels):
            raise CLIError("--events and --labels go together (labels: user_id + one 0/1 column per task)")
        from u2qt.training.events import read_labels

        events = _load_events(args, load_checkpoint(train_dir).train_config.sources)
        labels = read_labels(args.labels)
    report = run_eval(train_dir, Path(args.out), cfg, events, labels)
    print(
        f"wrote {args.out}/report.md ({len(report['results'])} tasks, {report['users']} users, "
        f"{report['wall_s']:.0f} s)"
    )


def cmd_dataset(args) -> None:
    from u2qt.training.movielens import write_dataset

    try:
        counts = write_dataset(Path(getattr(args, "from")), Path(args.out))
    except FileNotFoundError as e:
        raise CLIError(str(e)) from None
    out = args.out
    print(
        f"wrote {out}/events.parquet ({counts['events']:,} events, {counts['users']:,} users), {out}/sources.yaml, "
        f"{out}/labels.csv (tasks: {', '.join(counts['tasks'])})"
    )
    print(f"next: u2qt train --events {out}/events.parquet --sources {out}/sources.yaml --out artifacts/ml-100k")
    print(
        f"then: u2qt eval artifacts/ml-100k --out docs/eval/movielens-100k --events {out}/events.parquet "
        f"--labels {out}/labels.csv --cutoff 1998-03-01"
    )


def cmd_batch(args) -> None:
    from u2qt.service.batch_job import BatchJob, parse_time, run

    if not Path(args.artifacts, "manifest.json").is_file():
        raise CLIError(f"{args.artifacts}: no manifest.json (u2qt export writes it)")
    job = BatchJob(
        artifacts=Path(args.artifacts),
        events=args.events,
        since=parse_time(args.since),
        until=parse_time(args.until),
        redis_url=args.redis,
        redis_cluster=args.redis_cluster,
        engine=args.engine,
        ray_address=args.ray_address,
        encoders=args.encoders,
        gpus_per_encoder=args.gpus_per_encoder,
        encoder_threads=args.encoder_threads,
        resume=args.resume,
        rows_per_batch=args.rows_per_batch,
        providers=args.providers,
        report=Path(args.report) if args.report else None,
        progress=not args.quiet,
    )
    r = run(job)
    per_stage = ", ".join(f"{k} {v:.1f} s" for k, v in r["stage_s"].items())
    print(
        f"u2qt batch ({r['engine']}): {r['windows']:,} windows of {r['users']:,} users from {r['events read']:,} "
        f"events ({sum(r['events refused'].values()):,} refused) in {r['steady_s']:.1f} s = {r['windows_per_s']:,.0f} "
        f"windows/s (start-up {r['startup_s']:.1f} s); written {r['windows written']:,}, kept as stored "
        f"{r['windows kept']:,}, skipped (resume) {r['windows skipped (resume)']:,}; {r['scripts']:,} Redis scripts"
    )
    print(f"stages: {per_stage}")
    print(f"report: {r['report_file']}")


def format_report(r: dict) -> str:
    lines = [
        f"windows: {r['windows']:,}  " + ", ".join(f"{k} {v:,}" for k, v in r.get("windows_by_source", {}).items())
    ]
    lines.append("level  kind      used   perplexity  by source (used)")
    for lv in r["levels"]:
        by = ", ".join(f"{s} {v['used_fraction']:.0%}" for s, v in lv["by_source"].items())
        lines.append(f"L{lv['level']:<5} {lv['kind']:<9} {lv['used_fraction']:>5.1%}  {lv['perplexity']:>10.1f}  {by}")
    rec = ", ".join(
        f"{s} {v['train_cosine']:.3f}/{v['holdout_cosine'] or float('nan'):.3f}" for s, v in r["reconstruction"].items()
    )
    lines.append(f"reconstruction cosine (train/holdout): {rec}")
    col = r["collisions"]
    lines.append(
        f"collision rate of full token tuples: {col['overall']:.2%} of {col['distinct_inputs']:,} distinct "
        "inputs (" + ", ".join(f"{s} {v['rate']:.2%}" for s, v in col["by_source"].items()) + ")"
    )
    if r.get("text_encoding"):
        te = r["text_encoding"]
        lines.append(
            f"text windows truncated at the encoder's limit: {te['truncated_fraction']:.1%} "
            f"(median {te['median_tokens']:.0f} tokens)"
        )
    if r.get("window_events"):
        we = r["window_events"]
        lines.append(
            f"windows past the service's cap of {we['cap']} events: {we['windows_past_cap']:,} of {we['windows']:,} "
            f"({we['events_past_cap']:,} events left out, as the service refuses them); repeated event ids left out: "
            f"{we['repeated_event_ids']:,}"
        )
    if r.get("median_windows_per_user"):
        per = ", ".join(f"{s} {n:g}" for s, n in r["median_windows_per_user"].items())
        lines.append(f"windows per user (median, by source): {per}")
    if r.get("config") and "median_active_windows_per_user" in r:
        q = r["config"]["quantizer"]
        lines.append(
            f"codebooks: {q['shared_levels']} shared + {q['specific_levels']} specific levels of "
            f"{q['codebook_size']:,} codes, a latent of {q['code_dim']} floats (median "
            f"{r['median_active_windows_per_user']:g} active windows per user; unset levels, sizes and width are "
            "chosen from it: docs/training.md)"
        )
        features = r["config"].get("reader", {}).get("soft_counts") or 0
        lines.append(
            "kind=tokens reader: the mean and activity per source"
            + (f", and soft counts of {features} features" if features else ", no soft counts")
            + " (chosen from the same median: docs/training.md)"
            + (
                f"; and the tokens decoded to the {r['decoded_texts']:,} most frequent event texts"
                if r.get("decoded_texts")
                else ""
            )
        )
    return "\n".join(lines)


def cmd_export(args) -> None:
    from u2qt.training.export import export_artifacts, verify_against_torch

    manifest = export_artifacts(args.train_dir, args.out)
    out = args.out or args.train_dir
    print(
        f"exported model {manifest.model_version} -> {out}/manifest.json "
        f"({manifest.vocabulary.size:,} tokens, {len(manifest.files)} files)"
    )
    check = verify_against_torch(args.train_dir, out)
    print(
        f"ONNX Runtime vs PyTorch on {check['windows']:,} training windows: identical codes "
        f"{check['identical_codes']:.2%}, max latent difference {check['max_latent_diff']:.1e}"
    )
    if "history_max_diff" in check:
        print(f"history model, ONNX Runtime vs PyTorch: max embedding difference {check['history_max_diff']:.1e}")


def cmd_inspect(args) -> None:
    import numpy as np

    from u2qt.training.metrics import plot_utilization, summarize
    from u2qt.training.train import load_checkpoint

    d = Path(args.train_dir)
    ck = load_checkpoint(d)
    w = np.load(d / "windows.npz")
    c = ck.model.config
    summary = summarize(
        w["codes"],
        w["source_index"],
        w["input_key"],
        w["recon_cos"],
        w["holdout"],
        c.sources,
        c.shared_levels,
        c.codebook_size,
    )
    report = json.loads((d / "report.json").read_text()) if (d / "report.json").is_file() else {}
    print(format_report({**report, **summary}))
    png = Path(args.plot or d / "utilization.png")
    plot_utilization(summary, png)
    print(f"plot: {png}")


def check_port(host: str, port: int) -> None:
    """Fails before any work when the port is taken, naming the option that picks another."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise CLIError(f"cannot listen on {host}:{port} ({e.strerror}): pass another --port") from None


def example_event(manifest: Manifest) -> dict:
    """One event of the served model's first source, now, for the "try it" lines of `u2qt serve`."""
    spec = manifest.sources.sources[0]
    event = {"event_id": "e1", "user_id": "alice", "source": spec.name, "ts": int(time.time())}
    if spec.kind == "text":
        return {**event, "text": "milk", "amount": 2.5}
    return {**event, "attributes": dict.fromkeys(spec.attributes, 1.0)}


def cmd_serve(args) -> None:
    # nothing here imports prometheus_client before frontends.serve has set its multiprocess directory
    from u2qt.model.manifest import Manifest
    from u2qt.service.redis_client import check_eviction
    from u2qt.service.settings import ServiceSettings

    settings = ServiceSettings(**({"artifacts": args.artifacts} if args.artifacts else {}))
    if not (Path(settings.artifacts) / "manifest.json").is_file():
        raise CLIError(f"no manifest.json in {settings.artifacts}: run `u2qt export` (or `u2qt up`) first")
    check_port(args.host, args.port)
    check_eviction(settings.redis_url, settings.redis_cluster, settings.redis_allow_eviction)
    print(
        f"serving {settings.artifacts} on http://{args.host}:{args.port}  (docs: /docs, metrics: /metrics, "
        f"store: {'REDIS_URL' if settings.redis_url else 'embedded redis in ' + str(settings.embedded_redis_dir)})",
        flush=True,
    )
    base = f"http://{args.host}:{args.port}"
    body = json.dumps({"events": [example_event(Manifest.load(settings.artifacts, verify=False))]})
    print(
        "try it:\n"
        f"  curl -s -X POST {base}/tokenize -H 'content-type: application/json' -d '{body}'\n"
        f"  curl -s '{base}/users/alice/tokens?format=strings'\n"
        f"  curl -s '{base}/users/alice/embedding?kind=tokens'\n"
        "stop with Ctrl+C (in-flight batches are finished first)",
        flush=True,
    )
    options = dict(
        log_level="info",
        access_log=False,
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
    )
    if settings.frontends:
        from u2qt.service import frontends

        print(f"{settings.frontends} HTTP frontend(s) and one inference engine process", flush=True)
        try:
            frontends.serve(settings, args.host, args.port, options)
        except RuntimeError as e:  # the engine could not start: its own output above says why
            raise CLIError(str(e)) from None
        return
    import uvicorn

    from u2qt.service.app import create_app

    uvicorn.run(create_app(settings), host=args.host, port=args.port, **options)


FIRST_MODEL_USERS = 300  # households of the quickstart's first model: minutes, not a quarter hour, on 2 cores


def cmd_up(args) -> None:
    """The main job: train the default tokenizer if none is built, export it, serve it. Without --full, a first
    model on FIRST_MODEL_USERS households; with it, on all of them."""
    out = Path(args.out or ("artifacts/cj" if args.full else f"artifacts/cj-{FIRST_MODEL_USERS}"))
    users = args.max_users or (None if args.full else FIRST_MODEL_USERS)
    check_port(args.host, args.port)
    trained = (out / "checkpoint" / "model.safetensors").is_file()
    exported = (out / "manifest.json").is_file()
    steps = [("train", not trained), ("export", not exported), ("serve", True)]
    todo = [name for name, needed in steps if needed]
    if not trained:
        who = "all 2,469 households" if users is None else f"{users:,} of 2,469 households"
        minutes = "over half an hour" if users is None or users > 1000 else "about 4 minutes"
        print(
            f"[1/{len(todo)}] training a tokenizer and its history model on The Complete Journey ({who}) into {out}: "
            f"{minutes} on a 2-core machine{'' if args.full else '; --full trains on every household'}",
            flush=True,
        )
        # the train command's own parser and defaults, not a copy of them
        argv = ["train", "--dataset", "completejourney", "--out", str(out)]
        train_args = build_parser().parse_args(argv + (["--max-users", str(users)] if users else []))
        train_args.then_serve = True
        cmd_train(train_args)
    else:
        print(f"found a trained tokenizer in {out}", flush=True)
    if not exported:
        print(f"[{todo.index('export') + 1}/{len(todo)}] exporting {out} to ONNX, checked against PyTorch", flush=True)
        cmd_export(argparse.Namespace(train_dir=str(out), out=None))
    print(f"[{len(todo)}/{len(todo)}] serving {out}", flush=True)
    cmd_serve(argparse.Namespace(artifacts=str(out), host=args.host, port=args.port))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="u2qt", description="Unified User Quantized Tokenizers")
    sub = p.add_subparsers(dest="command", required=True)
    defaults = argparse.ArgumentDefaultsHelpFormatter  # every option's help shows its default

    t = sub.add_parser("train", help="train a tokenizer from event logs", formatter_class=defaults)
    t.add_argument("--dataset", choices=["completejourney"])
    t.add_argument("--events", help="canonical events file (.parquet, .csv, .jsonl)")
    t.add_argument("--sources", help="sources.yaml (window, sources; optional encoder/quantizer/optim)")
    t.add_argument("--out", required=True, help="training directory to write")
    t.add_argument("--max-users", type=int, help="keep only N users (a deterministic sample)")
    t.add_argument("--window", help="window period, e.g. 1d, 7d, 12h (None: the sources config's; 1d for --dataset)")
    t.add_argument("--epochs", type=int, help="MRQ-VAE epochs (None: the config's, 30)")
    t.add_argument("--seed", type=int, help="random seed (None: the config's, 0)")
    t.add_argument("--shared-levels", type=int, help="codebook levels shared by all sources (default: from the data)")
    t.add_argument("--specific-levels", type=int, help="codebook levels of each source (default: from the data)")
    t.add_argument("--codebook-size", type=int, help="codes per level (default: from the data)")
    t.add_argument("--code-dim", type=int, help="width of the quantized latent (default: from the data, 128 or 64)")
    t.add_argument(
        "--soft-counts",
        type=int,
        help="kind=tokens reader: random ReLU features counted per source beside the mean (0: none; default: "
        "from the data, 256 where users have many windows)",
    )
    t.add_argument(
        "--texts",
        type=int,
        help="kind=tokens reader: the most frequent event texts each window's tokens are decoded to (0: none; "
        "default 1000)",
    )
    t.add_argument("--text-model", help="'all-MiniLM-L6-v2' (bundled) or a local Hugging Face model dir")
    t.add_argument("--pooling", choices=["mean", "last_token"], help="text-model pooling (None: mean)")
    t.add_argument(
        "--precision",
        choices=["fp32", "int8"],
        help="text encoder precision (default fp32; int8 runs one window at a time)",
    )
    t.add_argument(
        "--bag-buckets",
        type=int,
        help="width of the hashed bag of subwords beside the text embedding (None: the config's; 0: none)",
    )
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="export a trained tokenizer to ONNX + manifest.json", formatter_class=defaults)
    e.add_argument("train_dir")
    e.add_argument("--out", help="artifact directory (default: the training directory)")
    e.set_defaults(func=cmd_export)

    i = sub.add_parser(
        "inspect", help="codebook usage, perplexity, reconstruction, collisions; PNG plot", formatter_class=defaults
    )
    i.add_argument("train_dir")
    i.add_argument("--plot", help="where to save the PNG (default TRAIN_DIR/utilization.png)")
    i.set_defaults(func=cmd_inspect)
    al = sub.add_parser(
        "align", help="train the history model (alignment pretext tasks) on a training dir", formatter_class=defaults
    )
    al.add_argument("train_dir")
    al.add_argument("--dataset", choices=["completejourney"], default="completejourney")
    al.add_argument("--events", help="the canonical events the directory was trained on")
    al.add_argument("--epochs", type=int, help="alignment epochs (None: the training config's)")
    al.set_defaults(func=cmd_align)

    ev = sub.add_parser(
        "eval", help="linear probes (AUC/KS), ablations and storage: a markdown report", formatter_class=defaults
    )
    ev.add_argument("train_dir")
    ev.add_argument("--out", required=True, help="report directory (report.md, report.json, PNG plots)")
    ev.add_argument("--cutoff", default="2017-10-01", help="representations use data before this date")
    ev.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ev.add_argument(
        "--probe-c",
        type=float,
        nargs="+",
        help="the probes' C grid (default: PROBE_CS in training/probes.py), chosen per split by 3-fold CV on the "
        "training users; one value: that C for every probe",
    )
    ev.add_argument("--tokenizer-epochs", type=int, default=10)
    ev.add_argument("--align-epochs", type=int, default=3)
    ev.add_argument(
        "--align-min-steps", type=int, default=0, help="history-model steps at least, whatever the data size"
    )
    ev.add_argument("--no-ablations", action="store_true", help="skip the source-removal tokenizers")
    ev.add_argument("--events", help="your canonical events (default: The Complete Journey)")
    ev.add_argument("--labels", help="csv/parquet: user_id + one 0/1 column per task")
    ev.set_defaults(func=cmd_eval)

    ds = sub.add_parser(
        "dataset",
        help="rebuild a public data set as canonical events, sources.yaml and labels",
        formatter_class=defaults,
    )
    ds.add_argument("name", choices=["movielens-100k"])
    ds.add_argument("--from", required=True, help="the unpacked ml-100k folder (u.data, u.item, u.user)")
    ds.add_argument("--out", required=True, help="directory to write")
    ds.set_defaults(func=cmd_dataset)

    b = sub.add_parser(
        "batch",
        help="tokenize an event archive (a day, or all of it) into the Redis histories the service reads",
        formatter_class=defaults,
    )
    b.add_argument("--artifacts", required=True, help="artifact directory (manifest.json and ONNX files)")
    b.add_argument("--events", required=True, nargs="+", help="Parquet files, directories, globs or URLs")
    b.add_argument("--since", help="only events at or after this time (ISO-8601 or unix seconds; no offset: UTC)")
    b.add_argument("--until", help="only events before this time")
    b.add_argument("--redis", help="Redis URL (None: $REDIS_URL); redis+cluster://host:port for a Redis Cluster")
    b.add_argument("--redis-cluster", action="store_true", help="the Redis URL names a node of a Redis Cluster")
    b.add_argument("--engine", choices=["local", "ray"], default="local", help="one process, or Ray Data")
    b.add_argument("--ray-address", help="a running Ray cluster (None: start Ray on this machine)")
    b.add_argument("--encoders", type=int, default=1, help="encoder actors (Ray)")
    b.add_argument("--gpus-per-encoder", type=float, default=0, help="GPUs per encoder actor (Ray)")
    b.add_argument(
        "--encoder-threads", type=int, help="ONNX Runtime threads per encoder actor (Ray; None: CPUs / encoders)"
    )
    b.add_argument("--resume", action="store_true", help="skip windows already stored from these same events")
    b.add_argument(
        "--rows-per-batch", type=int, default=20_000, help="events per batch (local) or per user bucket (Ray)"
    )
    b.add_argument("--providers", choices=["auto", "cpu", "cuda"], default="auto", help="ONNX Runtime provider")
    b.add_argument("--report", help="where to write the JSON report (None: ./batch-report.json)")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=cmd_batch)

    sv = sub.add_parser("serve", help="serve an exported tokenizer over HTTP", formatter_class=defaults)
    sv.add_argument("--artifacts", help="artifact directory with manifest.json (default $U2QT_ARTIFACTS)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    sv.add_argument("--port", type=int, default=8000, help="port to listen on")
    sv.set_defaults(func=cmd_serve)

    up = sub.add_parser(
        "up", help="train the default tokenizer if none is built, export it, and serve it", formatter_class=defaults
    )
    up.add_argument(
        "--full",
        action="store_true",
        help="train on all 2,469 households (into artifacts/cj, over half an hour on 2 cores)",
    )
    up.add_argument(
        "--out", help="training and artifact directory (None: artifacts/cj-300, or artifacts/cj with --full)"
    )
    up.add_argument("--max-users", type=int, help="train on N households (None: 300, or all with --full)")
    up.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    up.add_argument("--port", type=int, default=8000, help="port to listen on")
    up.set_defaults(func=cmd_up)
    return p


def _quiet_libraries() -> None:
    """The ONNX exporter and transformers warn about things that do not concern a u2qt user."""
    import logging
    import os
    import warnings

    # torch resets its loggers' levels when it is imported (later, and only by the commands that train or
    # export), so the exporter's level is set through torch's own switch, read at that import
    os.environ.setdefault("TORCH_LOGS", "-onnx")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("torch.onnx", "torch._export", "torch.export", "onnxscript", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        args.func(args)
    except ModuleNotFoundError as e:
        if args.command == "batch" and (e.name or "").startswith(("pyarrow", "ray", "pandas")):
            print(
                f"u2qt batch: error: this command needs the batch extra, which this install lacks ({e.name}): "
                "pip install 'u2qt[batch]', or bash deploy/install.sh",
                file=sys.stderr,
            )
            return 2
        if not (e.name or "").startswith(("u2qt.training", "torch", "pandas", "transformers", "sklearn")):
            raise
        print(
            f"u2qt {args.command}: error: this command needs the training package, u2qt-train, which this install "
            f"lacks ({e.name}): bash deploy/install.sh, or pip install -e training beside u2qt",
            file=sys.stderr,
        )
        return 2
    except (CLIError, FileNotFoundError, ValueError, RuntimeError) as e:
        # pydantic's ValidationError is a ValueError: its text names the field and the reason
        print(f"u2qt {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
