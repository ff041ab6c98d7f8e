import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session")
def cj_events():
    """Canonical events of a small, fixed sample of real Complete Journey households."""
    from training.completejourney import load_events, sources_config
    from training.events import keep_users, normalize_events

    sources = sources_config()
    return keep_users(normalize_events(load_events(), sources), 40, seed=0), sources


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory, cj_events):
    """A small tokenizer trained and exported on the real slice (fp32 encoder, for parity checks)."""
    from training.config import EncoderConfig, OptimConfig, QuantizerConfig, TrainConfig
    from training.export import export_artifacts
    from training.train import train

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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A real redis-server (Debian package) on a free loopback port, owned by the test."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.process = None

    def start(self):
        import subprocess
        import time

        import redis

        from service.embedded_redis import redis_server_binary

        binary = redis_server_binary()
        if binary is None:
            pytest.fail("redis-server is not installed (bash deploy/install.sh installs it)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self):
        if self.process:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def serve(trained_dir, redis_server, tmp_path):
    """serve(**settings) -> base URL of a running u2qt service (uvicorn in a thread, real Redis)."""
    import threading
    import time

    import uvicorn

    from service.app import create_app
    from service.settings import ServiceSettings

    servers = []

    def start(**overrides):
        overrides.setdefault("redis_url", redis_server.url)
        overrides.setdefault("key_prefix", f"t{len(servers)}-{tmp_path.name}")
        settings = ServiceSettings(artifacts=trained_dir[0], embedded_redis_dir=tmp_path / "redis", **overrides)
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
        servers.append((server, thread))
        return f"http://127.0.0.1:{port}", settings

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(30)
