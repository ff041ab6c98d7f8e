import os
import warnings

import pytest

# one implementation of real processes (redis-server, u2qt serve) for tests, benchmarks and the fault drill
from benchmarks.harness import RedisProcess as RedisServer
from benchmarks.harness import free_port

__all__ = ["RedisServer", "free_port"]

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
