"""`u2qt serve` with U2QT_FRONTENDS=N: one engine process (service/engine.py) and N HTTP frontends.

Start: the embedded Redis (when no REDIS_URL; one for all frontends), then the engine, which answers only once its
models are loaded and warm; then the frontends (uvicorn: in this process for N = 1, N worker processes sharing the
port otherwise, each built by `create_app()` from the environment set here).
Running: an engine that dies is restarted; meanwhile frontends answer 503 (service/engine_client.py).
SIGTERM / Ctrl+C: the frontends drain (every request in flight is answered through the engine), then the engine
finishes what it holds and stops, then the embedded Redis.
All processes write Prometheus samples into one directory (PROMETHEUS_MULTIPROC_DIR); any frontend's /metrics
reads them all.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from u2qt.service import engine_protocol as wire
from u2qt.service.settings import ServiceSettings


class EngineProcess:
    """The engine as a child of `u2qt serve`: started before the frontends, restarted when it dies, stopped
    after them."""

    def __init__(self, env: dict[str, str], path: str, ready_timeout_s: float = 600):
        self.env, self.path, self.ready_timeout_s = env, path, ready_timeout_s
        self.process: subprocess.Popen | None = None
        self.stopping = threading.Event()
        self._watch: threading.Thread | None = None

    def start(self) -> None:
        # a session of its own: a Ctrl+C in the terminal reaches the frontends, which drain through the engine;
        # the engine is stopped after them, by stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "u2qt.service.engine"], env=self.env, start_new_session=True
        )
        self.wait_ready()
        if self._watch is None:
            self._watch = threading.Thread(target=self._restart_when_dead, daemon=True, name="u2qt-engine-watch")
            self._watch.start()

    def wait_ready(self) -> None:
        """Until the engine answers a ping (it listens once its models are warm)."""
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the inference engine exited with status {self.process.returncode}")
            if wire.ping(self.path, 1.0) is not None:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the inference engine did not answer within {self.ready_timeout_s:g} s")

    def _restart_when_dead(self) -> None:
        while not self.stopping.wait(0.2):
            status = self.process.poll()
            if status is None or self.stopping.is_set():
                continue
            print(f"u2qt engine exited with status {status}: restarting it", flush=True)
            try:
                self.start()
            except RuntimeError as e:
                print(f"u2qt engine restart failed ({e}); trying again", flush=True)

    def stop(self, timeout_s: float = 60) -> None:
        self.stopping.set()
        if self._watch is not None:
            self._watch.join()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        print("u2qt engine stopped", flush=True)


def serve(settings: ServiceSettings, host: str, port: int, uvicorn_options: dict) -> None:
    """Runs the engine and settings.frontends frontends until SIGTERM or Ctrl+C."""
    workdir = Path(tempfile.mkdtemp(prefix="u2qt-serve-"))
    metrics_dir = workdir / "metrics"
    metrics_dir.mkdir()
    path = str(workdir / "engine.sock")
    # before anything here imports prometheus_client: this process may be a frontend too
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ["U2QT_ENGINE_SOCKET"] = path
    os.environ["U2QT_ARTIFACTS"] = str(settings.artifacts)
    embedded = None
    if not settings.redis_url:
        from u2qt.service.embedded_redis import EmbeddedRedis

        embedded = EmbeddedRedis(settings.embedded_redis_dir)
        os.environ["REDIS_URL"] = embedded.start()
    engine = EngineProcess(dict(os.environ), path)
    # uvicorn restores the handlers it found and raises the signal again once it has shut down: a handler here
    # (not the default, which would end this process) lets the engine and Redis be stopped after the frontends
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    try:
        engine.start()
        import uvicorn

        if settings.frontends == 1:
            from u2qt.service.app import create_app

            uvicorn.run(create_app(ServiceSettings()), host=host, port=port, **uvicorn_options)
        else:
            uvicorn.run(
                "u2qt.service.app:create_app",
                factory=True,
                workers=settings.frontends,
                host=host,
                port=port,
                **uvicorn_options,
            )
    finally:
        engine.stop()
        if embedded:
            embedded.stop()
        shutil.rmtree(workdir, ignore_errors=True)
