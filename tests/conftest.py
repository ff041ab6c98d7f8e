import os
import warnings

import pytest

# one implementation of real processes (redis-server, u2qt serve) for tests, benchmarks and the fault drill
from benchmarks.harness import RedisClusterProcess, free_port
from benchmarks.harness import RedisProcess as RedisServer

__all__ = ["RedisServer", "free_port"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session")
def cj_events():
    """Canonical events of a small, fixed sample of real Complete Journey households."""
    from u2qt.training.completejourney import load_events, sources_config
    from u2qt.training.events import keep_users, normalize_events

    sources = sources_config("7d")  # weekly: half the default's windows keep the fixtures quick; no test needs a day
    return keep_users(normalize_events(load_events(), sources), 40, seed=0), sources


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory, cj_events):
    """A small tokenizer trained and exported on the real slice (fp32 encoder, for parity checks)."""
    from u2qt.training.config import EncoderConfig, OptimConfig, QuantizerConfig, TrainConfig
    from u2qt.training.export import export_artifacts
    from u2qt.training.train import train

    events, sources = cj_events
    cfg = TrainConfig(
        sources=sources,
        encoder=EncoderConfig(precision="fp32"),
        quantizer=QuantizerConfig(codebook_size=64, code_dim=32, hidden_dim=128),
        optim=OptimConfig(epochs=6, batch_size=256, restart_every=10, kmeans_sample=4000),
    )
    out = tmp_path_factory.mktemp("cj") / "train"
    report = train(cfg, events, out, progress=False)
    export_artifacts(out)
    return out, cfg, report


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster():
    """A real 3-master Redis Cluster (Debian's redis-server, `redis-cli --cluster create`)."""
    cluster = RedisClusterProcess(masters=3).start()
    yield cluster
    cluster.stop()


class RedisTarget:
    """A standalone server or a cluster, as a test sees either: its URL and its masters' ports."""

    def __init__(self, kind: str, url: str, ports: list[int]):
        self.kind, self.url, self.ports = kind, url, ports

    def client(self):
        from u2qt.service.redis_client import connect

        return connect(self.url)

    def eval_calls(self) -> int:
        """Lua scripts run so far (EVAL, or EVALSHA that found its script), over every master."""
        import redis

        stats = [redis.Redis(port=p).info("commandstats") for p in self.ports]
        return sum(
            c.get("calls", 0) - c.get("failed_calls", 0) - c.get("rejected_calls", 0)
            for s in stats
            for c in (s.get("cmdstat_eval", {}), s.get("cmdstat_evalsha", {}))
        )

    def keys_per_master(self) -> list[int]:
        import redis

        return [redis.Redis(port=p).dbsize() for p in self.ports]


@pytest.fixture(params=["standalone", "cluster"])
def any_redis(request, redis_server):
    """Each test that takes it runs twice: against one redis-server and against a 3-master Redis Cluster."""
    if request.param == "cluster":
        c = request.getfixturevalue("redis_cluster")
        return RedisTarget("cluster", c.url, c.ports)
    return RedisTarget("standalone", redis_server.url, [redis_server.port])


FRONTENDS = {"in-process": 0, "frontends": 1}  # the service's two modes: every service test runs in each


class ServiceThreads:
    """u2qt services on real Redis, started by a test or a module and stopped together. In-process mode: uvicorn
    in a thread (a test may reach into the app's state); frontends mode: `u2qt serve` with U2QT_FRONTENDS in its
    own process, which starts the inference engine process (the deployment as it runs)."""

    def __init__(self, artifacts, redis_url: str, directory, frontends: int = 0):
        self.artifacts, self.redis_url, self.directory, self.servers = artifacts, redis_url, directory, []
        self.frontends, self.processes = frontends, []
        self.apps: dict[str, object] = {}  # base URL -> the FastAPI app, whose state a test may reach into

    def start(self, **overrides):
        """-> (base URL, settings) of a running service."""
        import threading
        import time

        import uvicorn

        from u2qt.service.app import create_app
        from u2qt.service.settings import ServiceSettings

        overrides.setdefault("redis_url", self.redis_url)
        overrides.setdefault("key_prefix", f"t{len(self.servers) + len(self.processes)}-{self.directory.name}")
        settings = ServiceSettings(artifacts=self.artifacts, embedded_redis_dir=self.directory / "redis", **overrides)
        if self.frontends:
            return self._start_process(settings, overrides), settings
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        for _ in range(600):
            if server.started:
                break
            if not thread.is_alive():
                raise RuntimeError("service failed to start")
            time.sleep(0.05)
        self.servers.append((server, thread))
        self.apps[f"http://127.0.0.1:{port}"] = server.config.app
        return f"http://127.0.0.1:{port}", settings

    def _start_process(self, settings, overrides) -> str:
        import json

        from benchmarks.harness import ServiceProcess

        env = {k: v if isinstance(v, str | int | float) else json.dumps(v) for k, v in overrides.items()}
        del env["redis_url"]
        svc = ServiceProcess(self.artifacts, settings.redis_url, frontends=self.frontends, **env)
        self.processes.append(svc)
        return svc.base

    def stop(self):
        for server, thread in self.servers:
            server.should_exit = True
            thread.join(30)
        for svc in self.processes:
            svc.stop()


@pytest.fixture(params=list(FRONTENDS))
def services(request, trained_dir, redis_server, tmp_path):
    services = ServiceThreads(trained_dir[0], redis_server.url, tmp_path, FRONTENDS[request.param])
    yield services
    services.stop()


@pytest.fixture
def serve(services):
    """serve(**settings) -> (base URL, settings) of a running u2qt service on real Redis: once in one process
    (uvicorn in a thread), once as an engine process and a frontend (`u2qt serve`, U2QT_FRONTENDS=1)."""
    return services.start


@pytest.fixture(params=["standalone", "cluster", "standalone-frontends"])
def serve_both(request, trained_dir, redis_server, tmp_path):
    """serve() on one redis-server, then on a 3-master Redis Cluster, then on one redis-server with an engine
    process and a frontend: a test taking it runs on all three."""
    url = redis_server.url if request.param != "cluster" else request.getfixturevalue("redis_cluster").url
    services = ServiceThreads(trained_dir[0], url, tmp_path, int(request.param.endswith("frontends")))
    yield services.start
    services.stop()
