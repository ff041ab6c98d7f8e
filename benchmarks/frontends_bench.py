"""The engine process and its HTTP frontends (U2QT_FRONTENDS), measured side by side in one run.

    python3 benchmarks/frontends_bench.py --artifacts artifacts/cj [--providers cpu|cuda|auto]
        [--frontends 0,1,2,4] [--clients 32] [--seconds 20] [--users 2469] [--max-batch 64]

1. raw limit: the service's batch stages alone (tokenize + ONNX Runtime, `--max-batch` per batch), no HTTP/Redis;
2. IPC: one frontend's request of 64 real windows to the engine and back (pack the subword ids, the frontend's
   EngineConnection over the Unix socket to the engine's server, unpack into the engine's jobs, answer codes,
   decode), without inference (the peer answers codes all 0), both pinned to one core: its median round trip;
3. for each count in `--frontends` (0: one process, models in-process, the default deployment), `u2qt serve`
   under `--clients` wrk connections posting one (household, week) request each at a time: windows/s, e2e/raw,
   the same with batching off (max_batch_size 1) and batching on/off, latency, the engine's mean batch, and CPU per
   window: the frontends' event loops (their main threads), the frontends in all, the engine.
A GPU machine runs it as is: `--providers cuda --frontends 1,2,4,8,12` (benchmarks/results/h200/ used
`--frontends 0,1,2,4,8,12 --clients 64 --seconds 10` on 16 cores). A row that replayed requests already sent
says so: those add no window, so windows/s would be capped by `--users`.
`--baseline REV` also runs, before each row's, the same load against the service as it was at git revision REV
(its model/ and service/ first on PYTHONPATH): old and new code alternated in one sitting, with the ratio of their
event loops' CPU per window.

    python3 benchmarks/frontends_bench.py --artifacts artifacts/cj300 --frontend-only 5 --seconds 10 [--baseline REV]

instead measures one frontend alone: `--frontend-only N` loads of the frontend as U2QT_FRONTENDS=1 runs it
(uvicorn, create_app) against an echo engine that answers codes hashed from each window without running a model,
each after the baseline's when `--baseline` is given, and prints the medians of its event loop's CPU per window.
With the model beside it on 2 cores, a row's event-loop figure moves by a tenth or more between loads of the same
code; without it, the frontend is the bottleneck and a change of a few percent shows.

    python3 benchmarks/frontends_bench.py --artifacts artifacts/cj300 --ipc-only 7 [--baseline REV]

measures only the IPC round trip (2 above), N times in one sitting, each in a process of its own (after the
baseline's, with `--baseline`), with the frontend side and the engine on one core and on two, and prints each and
their medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import uvloop
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import (  # noqa: E402
    ROOT,
    RecordedOutput,
    RedisProcess,
    ServiceProcess,
    cpu_by_thread,
    cpu_seconds,
    free_port,
    wait_until,
)
from benchmarks.service_bench import (  # noqa: E402
    Replicas,
    batch_totals,
    gpu_name,
    post_load_wrk,
    raw_limit,
    requests_by_user_week,
    window_jobs,
)
from u2qt.model.manifest import Manifest  # noqa: E402
from u2qt.model.runtime import TextTokenizer  # noqa: E402
from u2qt.service import engine_protocol as wire  # noqa: E402
from u2qt.service.engine import FrontendLink  # noqa: E402
from u2qt.service.engine import window_jobs as engine_jobs  # noqa: E402
from u2qt.service.engine_client import EngineConnection  # noqa: E402


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            out += [int(child), *children(int(child))]
    return out


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


class Deployment:
    """`u2qt serve` with `frontends` frontends: which processes are the frontends and which is the engine."""

    def __init__(self, svc: ServiceProcess, frontends: int):
        self.svc = svc
        kids = [p for p in children(svc.process.pid) if "redis-server" not in cmdline(p)]
        self.engine = next((p for p in kids if "u2qt.service.engine" in cmdline(p)), None)
        workers = [p for p in kids if p != self.engine and "multiprocessing.spawn" in cmdline(p)]
        self.frontends = workers if frontends > 1 else [svc.process.pid]

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: the frontends' event loops (main threads), the frontends in all, the engine."""
        return {
            "event loops": sum(cpu_by_thread(p).get(p, 0.0) for p in self.frontends),
            "frontends": sum(cpu_seconds(p) for p in self.frontends),
            "engine": cpu_seconds(self.engine) if self.engine else 0.0,
        }


def run_load(args, url: str, payloads, frontends: int, max_batch: int, clients: int) -> dict:
    svc = Replicas(
        1, args.artifacts, url, f"fe{frontends}-{max_batch}-{time.time_ns()}", max_batch, args.providers, frontends
    )
    try:
        base, d = svc.bases[0], Deployment(svc.services[0], frontends)
        cpu0, b0 = d.cpu(), batch_totals([base])
        r = post_load_wrk([base], payloads, clients, args.seconds)
        cpu1, b1 = d.cpu(), batch_totals([base])
    finally:
        svc.stop()
    windows = r["windows_s"] * args.seconds
    r["cpu_ms"] = {k: (cpu1[k] - cpu0[k]) * 1e3 / max(windows, 1) for k in cpu0}
    r["batch"] = (b1[0] - b0[0]) / max(b1[1] - b0[1], 1)
    return r


class EchoEngine:
    """The engine's side of a request without inference: its socket server (FrontendLink), a task per request,
    unpacking into the batcher's jobs, and an answer of codes. With `distinct`, each window's codes come from one
    hash of its input (windows that differ get codes that differ, so users' histories do not all collide);
    without, every code is 0, so that a round trip measures the IPC and nothing that stands in for a model."""

    def __init__(self, levels: int, codebook_size: int = 256, distinct: bool = True):
        self.levels, self.codebook_size, self.distinct, self.tasks = levels, codebook_size, distinct, set()
        self.shifts = np.arange(levels, dtype=np.uint64) * np.uint64(64 // max(levels, 1))

    def receive(self, link: FrontendLink, kind: bytes, rid: int, body: bytes) -> None:
        task = asyncio.create_task(self.answer(link, kind, rid, body))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def codes(self, jobs) -> np.ndarray:
        if not self.distinct:
            return np.zeros((len(jobs), self.levels), np.int64)
        digest = np.array(
            [
                hash(
                    (
                        j.source_index,
                        *(c.tobytes() for c in j.chunks or []),
                        j.features is not None and j.features.tobytes(),
                    )
                )
                & 0xFFFFFFFFFFFFFFFF
                for j in jobs
            ],
            dtype=np.uint64,
        )
        return ((digest[:, None] >> self.shifts) % np.uint64(self.codebook_size)).astype(np.int64)

    async def answer(self, link: FrontendLink, kind: bytes, rid: int, body: bytes) -> None:
        if kind == wire.PING:
            link.send(rid, wire.OK, wire.encoder.encode(wire.EngineInfo(os.getpid(), "echo", [], wire.Load())))
            return
        jobs = engine_jobs(body)
        reply = wire.Codes(self.codes(jobs).tobytes(), self.levels, wire.Load(len(jobs), 1.0))
        link.send(rid, wire.OK, wire.encoder.encode(reply))


def echo_engine(
    path: str, levels: int, codebook_size: int = 256, distinct: bool = True, cpu: int | None = None
) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})

    async def serve():
        echo = EchoEngine(levels, codebook_size, distinct)
        await asyncio.get_running_loop().create_unix_server(lambda: FrontendLink(echo, set()), path)
        await asyncio.Event().wait()

    uvloop.run(serve())


def ipc_round_trip(artifacts: Path, payloads, windows: int = 64, repeats: int = 2000, cores: int = 0) -> dict:
    """Median ms of one request of `windows` real windows from a frontend's EngineConnection to an engine and
    back, without inference. `cores` 1: the frontend side and the engine pinned to one CPU (the round trip is then
    both sides' CPU and two context switches: stable between runs); 2: to two (a wake-up crosses cores: on this
    VM, waking an idle vCPU adds tens of microseconds, and as much noise); 0: wherever the scheduler puts them."""
    cpus = sorted(os.sched_getaffinity(0))
    pinned = cores and len(cpus) >= cores
    manifest = Manifest.load(artifacts)
    jobs = window_jobs(manifest, payloads)[:windows]
    tokenizer = TextTokenizer(artifacts / manifest.encoder.tokenizer_file, manifest.encoder)
    chunks = tokenizer.encode_windows(jobs)
    levels = manifest.token_vocabulary().levels
    path = f"/tmp/u2qt-ipc-bench-{os.getpid()}-{cores}.sock"
    peer = multiprocessing.get_context("spawn").Process(
        target=echo_engine, args=(path, levels, 256, False, cpus[cores - 1] if pinned else None), daemon=True
    )
    peer.start()
    before = os.sched_getaffinity(0)
    if pinned:
        os.sched_setaffinity(0, {cpus[0]})

    async def measure() -> tuple[list[float], list[float], bytes]:
        connection = EngineConnection(path)
        await connection.start(30)
        times, pack = [], []
        try:
            for i in range(repeats + 100):
                t0 = time.perf_counter()
                body = wire.pack_windows([j.source_index for j in jobs], chunks, [j.features for j in jobs])
                t1 = time.perf_counter()
                answer = await connection.request(wire.WINDOWS, body)
                np.frombuffer(answer.codes, np.int64).reshape(len(jobs), answer.levels)
                if i >= 100:  # the first ones warm up the connection and the allocator
                    times.append(time.perf_counter() - t0)
                    pack.append(t1 - t0)
        finally:
            await connection.stop()
        return times, pack, body

    try:
        times, pack, body = uvloop.run(measure())
    finally:
        peer.kill()
        peer.join(10)
        os.sched_setaffinity(0, before)  # what runs after (the rows' services) inherits this process's CPUs
    tokens = sum(len(c) for cs in chunks if cs for c in cs)
    return {
        "ms": statistics.median(times) * 1e3,
        "pack_ms": statistics.median(pack) * 1e3,
        "bytes": len(body),
        "tokens": tokens,
    }


def frontend_only_load(args, url: str, payloads) -> dict:
    """One frontend as `u2qt serve` runs it with U2QT_FRONTENDS=1 (uvicorn, create_app), against an EchoEngine
    instead of the model: the frontend's own cost per window without the encoder's CPU beside it on the machine's
    cores, the noise that hides a frontend's change of a tenth in the rows with the model."""
    manifest = Manifest.load(args.artifacts)
    vocabulary = manifest.token_vocabulary()
    tag = f"{os.getpid()}-{time.time_ns()}"
    path = f"/tmp/u2qt-echo-{tag}.sock"
    peer = multiprocessing.get_context("spawn").Process(
        target=echo_engine, args=(path, vocabulary.levels, vocabulary.codebook_size), daemon=True
    )
    peer.start()
    metrics_dir = Path(tempfile.mkdtemp(prefix="u2qt-echo-metrics-"))
    port = free_port()
    env = dict(
        os.environ,
        REDIS_URL=url,
        U2QT_ARTIFACTS=str(args.artifacts),
        U2QT_FRONTENDS="1",
        U2QT_ENGINE_SOCKET=path,
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        U2QT_KEY_PREFIX=f"echo-{tag}",
        U2QT_MAX_QUEUE_WINDOWS="100000",
        U2QT_MAX_QUEUE_DELAY_MS="0",
    )
    command = [sys.executable, "-m", "uvicorn", "--factory", "u2qt.service.app:create_app", "--port", str(port)]
    frontend = subprocess.Popen(
        [*command, "--log-level", "warning", "--no-access-log"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: frontend.poll() is None and httpx.get(f"{base}/readyz").status_code == 200,
            120,
            "frontend readiness",
        )
        loop0, all0 = cpu_by_thread(frontend.pid).get(frontend.pid, 0.0), cpu_seconds(frontend.pid)
        r = post_load_wrk([base], payloads, args.clients_frontend_only, args.seconds)
        loop1, all1 = cpu_by_thread(frontend.pid).get(frontend.pid, 0.0), cpu_seconds(frontend.pid)
    finally:
        frontend.terminate()
        frontend.wait(60)
        peer.kill()
        peer.join(10)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    windows = max(r["windows_s"] * args.seconds, 1)
    return r | {"loop_ms": (loop1 - loop0) * 1e3 / windows, "frontend_ms": (all1 - all0) * 1e3 / windows}


def frontend_only(args, url: str, payloads, old: Path | None) -> None:
    """`--frontend-only N`: N loads of one frontend against the echo engine, alternated with the baseline's."""
    runs: dict[str, list[dict]] = {"this checkout": [], f"baseline {args.baseline}": []}
    for _ in range(args.frontend_only):
        if old is not None:
            with service_code(old):
                runs[f"baseline {args.baseline}"].append(frontend_only_load(args, url, payloads))
        runs["this checkout"].append(frontend_only_load(args, url, payloads))
    print(
        f"one frontend (uvicorn, U2QT_FRONTENDS=1) against an echo engine (no model: codes hashed from each window), "
        f"{args.clients_frontend_only} wrk connections, {args.seconds:g} s per load, {args.frontend_only} loads each"
        + (", alternated with the baseline's" if old is not None else "")
        + "; medians:"
    )
    print("code | windows/s | p50 ms | event loop ms/window (each load) | frontend process ms/window")
    medians = {}
    for name, loads in runs.items():
        if not loads:
            continue
        loop = [x["loop_ms"] for x in loads]
        medians[name] = statistics.median(loop)
        print(
            f"{name} | {statistics.median([x['windows_s'] for x in loads]):9.1f} | "
            f"{statistics.median([x['p50'] for x in loads]) * 1e3:6.1f} | {medians[name]:.3f} "
            f"({', '.join(f'{v:.3f}' for v in loop)}) | {statistics.median([x['frontend_ms'] for x in loads]):.3f}"
        )
    if len(medians) == 2:
        now, before = medians.values()
        print(f"event loop per window, this checkout / baseline: {now / before:.2f}")


@contextlib.contextmanager
def service_code(tree: Path | None):
    """Services started inside run `tree`'s u2qt (a baseline_tree), or this checkout's when None."""
    before = os.environ.get("PYTHONPATH")
    if tree is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(tree), *([before] if before else [])])
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def baseline_tree(rev: str, into: Path) -> Path:
    """git revision `rev`'s model/ and service/ as an importable package u2qt under `into`."""
    package = into / "u2qt"
    package.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "model", "service"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "x", "-C", str(package)], input=archive, check=True)
    return into


def ipc_only(args) -> None:
    """--ipc-only N: N IPC measurements, each in a fresh process, alternated with the baseline's (its model/ and
    service/ first on PYTHONPATH) when --baseline is given; each and their medians."""
    scratch = Path(tempfile.mkdtemp(prefix="u2qt-ipc-bench-"))
    try:
        old = baseline_tree(args.baseline, scratch) if args.baseline else None
        once = [sys.executable, __file__, "--ipc-once", "--artifacts", str(args.artifacts), "--users", str(args.users)]

        def measure(tree: Path | None) -> dict:
            with service_code(tree):
                done = subprocess.run(once, capture_output=True, text=True, check=True, env=dict(os.environ))
            return json.loads(done.stdout.strip().splitlines()[-1])

        runs = []
        for _ in tqdm(range(args.ipc_only), desc="IPC runs"):
            runs.append((measure(old) if old else None, measure(None)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    first = runs[0][1]["1"]
    print(
        f"command: python3 benchmarks/frontends_bench.py --artifacts {args.artifacts} --ipc-only {args.ipc_only} "
        f"--users {args.users}" + (f" --baseline {args.baseline}" if args.baseline else "")
    )
    print(
        f"IPC, one request of 64 windows ({first['tokens']} subword ids, {first['bytes']:,} bytes) to an engine's "
        "server and back, no inference (codes all 0); each run the median of 2,000 round trips, in a process of "
        "its own" + (f", {args.baseline}'s run just before" if args.baseline else "")
    )
    print(
        "one core: the frontend side and the engine pinned to one CPU (both sides' CPU + two context switches); "
        "two cores: pinned to two (each answer wakes the other, idle, vCPU)"
    )
    for cores in ("1", "2"):
        print(f"{'one' if cores == '1' else 'two'} core{'s' if cores == '2' else ''}:")
        print(
            "run | round trip ms | of which packing ms"
            + (f" | {args.baseline} round trip ms | now / baseline" if args.baseline else "")
        )
        for i, (b, r) in enumerate(runs, 1):
            line = f"{i:3d} | {r[cores]['ms']:13.3f} | {r[cores]['pack_ms']:19.3f}"
            if b:
                line += f" | {b[cores]['ms']:{len(args.baseline) + 14}.3f} | {r[cores]['ms'] / b[cores]['ms']:.2f}"
            print(line)
        ms = statistics.median(r[cores]["ms"] for _, r in runs)
        summary = f"median of {len(runs)} runs: {ms:.3f} ms round trip"
        if args.baseline:
            base = statistics.median(b[cores]["ms"] for b, _ in runs)
            ratio = statistics.median(r[cores]["ms"] / b[cores]["ms"] for b, r in runs)
            summary += f"; {args.baseline}: {base:.3f} ms; median of the runs' ratios {ratio:.2f}"
        print(summary)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--artifacts", default="artifacts/cj", type=Path)
    p.add_argument("--providers", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--frontends", default="0,1,2,4", help="comma-separated; 0: models in-process (no engine)")
    p.add_argument(
        "--clients",
        default="32",
        help="wrk connections; comma-separated: every frontends row at each (is a row bound by its clients?)",
    )
    p.add_argument("--seconds", type=float, default=20)
    # every household: on a GPU a 10 s run sends more requests than 400 households have weeks, and a request
    # replayed adds no window (its windows are stored), so fewer households would cap windows/s
    p.add_argument("--users", type=int, default=2469)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--baseline", help="a git revision whose service runs, batching on, before each row's")
    p.add_argument(
        "--batching",
        choices=["on,off", "on"],
        default="on,off",
        help="'on': skip the unbatched run of each row (half the time, for a short GPU lease)",
    )
    p.add_argument(
        "--frontend-only",
        type=int,
        default=0,
        metavar="N",
        help="instead of the rows: N loads of one frontend against an echo engine (no model), each alternated with "
        "the baseline's when --baseline is given",
    )
    p.add_argument("--clients-frontend-only", type=int, default=32, help=argparse.SUPPRESS)
    p.add_argument(
        "--ipc-only",
        type=int,
        default=0,
        metavar="N",
        help="instead of the rows: N IPC measurements (each the median of 2,000 round trips) and their median, "
        "each after the baseline's when --baseline is given",
    )
    p.add_argument("--ipc-once", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.ipc_once:  # one IPC measurement for --ipc-only, in a process of its own (the baseline's code or ours)
        payloads = requests_by_user_week(args.users)
        print(json.dumps({cores: ipc_round_trip(args.artifacts, payloads, cores=cores) for cores in (1, 2)}))
        return
    # each mode keeps its own current result: benchmarks/results/frontends_bench[_frontend_only|_ipc].txt
    mode = "_ipc" if args.ipc_only else "_frontend_only" if args.frontend_only else ""
    with RecordedOutput(f"frontends_bench{mode}"):
        run(args)


def run(args) -> None:
    if args.ipc_only:
        ipc_only(args)
        return
    if args.frontend_only:
        payloads = requests_by_user_week(args.users)
        store = RedisProcess().start()
        scratch = Path(tempfile.mkdtemp(prefix="u2qt-frontends-bench-"))
        try:
            old = baseline_tree(args.baseline, scratch) if args.baseline else None
            print(
                f"command: python3 benchmarks/frontends_bench.py --artifacts {args.artifacts} --frontend-only "
                f"{args.frontend_only} --seconds {args.seconds:g} --users {args.users}"
                + (f" --baseline {args.baseline}" if args.baseline else "")
            )
            print(f"machine: {os.cpu_count()} cores; redis-server and wrk on the same machine")
            frontend_only(args, store.url, payloads, old)
        finally:
            store.kill()
            shutil.rmtree(scratch, ignore_errors=True)
        return
    counts = [int(x) for x in args.frontends.split(",")]
    client_counts = [int(x) for x in args.clients.split(",")]
    payloads = requests_by_user_week(args.users)
    ipc = ipc_round_trip(args.artifacts, payloads, cores=1)
    store = RedisProcess().start()
    scratch = Path(tempfile.mkdtemp(prefix="u2qt-frontends-bench-"))
    try:
        raw = raw_limit(args.artifacts, payloads, args.seconds, args.providers, args.max_batch)
        old = baseline_tree(args.baseline, scratch) if args.baseline else None
        rows, baseline = {}, {}
        for n in counts:  # (the baseline,) batching on, then off, per count: side by side in one sitting
            for k in client_counts:
                if old is not None:
                    with service_code(old):
                        baseline[n, k] = run_load(args, store.url, payloads, n, args.max_batch, k)
                rows[n, k] = (
                    run_load(args, store.url, payloads, n, args.max_batch, k),
                    run_load(args, store.url, payloads, n, 1, k) if args.batching == "on,off" else None,
                )
    finally:
        store.kill()
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"command: python3 benchmarks/frontends_bench.py --artifacts {args.artifacts} --providers {args.providers} "
        f"--frontends {args.frontends} --clients {args.clients} --seconds {args.seconds:g} --users {args.users} "
        f"--max-batch {args.max_batch}"
        + (f" --baseline {args.baseline}" if args.baseline else "")
        + (f" --batching {args.batching}" if args.batching != "on,off" else "")
    )
    print(
        f"machine: {os.cpu_count()} cores{gpu_name()}; redis-server and wrk ({args.clients} connections, one "
        f"(household, week) request each at a time) on the same machine"
    )
    print(f"raw batch stages, {args.max_batch} per batch (no HTTP, no Redis): {raw.windows_s:.1f} windows/s")
    print(
        f"IPC, one request of 64 windows ({ipc['tokens']} subword ids, {ipc['bytes']:,} bytes) to the engine and "
        f"back, no inference, both on one core: {ipc['ms']:.3f} ms median round trip (packing {ipc['pack_ms']:.3f} ms)"
    )
    several = len(client_counts) > 1  # a clients column only then: one count prints as it always has

    def label(n: int, k: int) -> str:
        name = "0 (in-process)" if n == 0 else str(n)
        return f"{name:>14} | {k:7d}" if several else f"{name:>14}"

    print(
        "frontends |" + (" clients |" if several else "") + " windows/s | e2e/raw | batching off | on/off | p50 ms | "
        "p99 ms | engine batch | event loops ms/window | frontends ms/window | engine ms/window"
    )
    for (n, k), (on, off) in rows.items():
        c = on["cpu_ms"]
        unbatched = (
            f"{off['windows_s']:12.1f} | {on['windows_s'] / max(off['windows_s'], 1e-9):5.2f}x"
            if off
            else f"{'not run':>12} | {'-':>6}"
        )
        errors, replayed = (on["errors"], off["errors"] if off else 0), (on["replayed"], off["replayed"] if off else 0)
        print(
            f"{label(n, k)} | {on['windows_s']:9.1f} | {on['windows_s'] / raw.windows_s:7.2f} | {unbatched} | "
            f"{on['p50'] * 1e3:6.1f} | {on['p99'] * 1e3:6.1f} | "
            f"{on['batch']:12.1f} | {c['event loops']:21.2f} | {c['frontends']:19.2f} | {c['engine']:16.2f}"
            + (f"  ({errors[0]} + {errors[1]} errors)" if any(errors) else "")
            + (
                f"  ({replayed[0]} + {replayed[1]} replays of requests already sent: raise --users)"
                if any(replayed)
                else ""
            )
        )
    if baseline:
        print(f"baseline {args.baseline}, batching on, run just before each row above:")
        print(
            "frontends |" + (" clients |" if several else "") + " windows/s | e2e/raw | event loops ms/window | "
            "this checkout / baseline (event loops)"
        )
        for (n, k), b in baseline.items():
            now = rows[n, k][0]["cpu_ms"]["event loops"]
            print(
                f"{label(n, k)} | {b['windows_s']:9.1f} | {b['windows_s'] / raw.windows_s:7.2f} | "
                f"{b['cpu_ms']['event loops']:21.2f} | {now / max(b['cpu_ms']['event loops'], 1e-9):.2f}"
            )
    print(
        "CPU per window: CPU seconds of the processes during the batching-on run / windows tokenized; event loops: "
        "the frontends' main threads (HTTP, validation, Redis, rendering); with 0 the one process is the frontend "
        "and also runs the models"
    )


if __name__ == "__main__":
    main()
