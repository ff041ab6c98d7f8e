"""All of the service's configuration, in one typed object read from the environment (prefix U2QT_).

`python3 -m service.settings` prints the table of every setting that README.md holds (a test keeps the two
equal).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from u2qt.model.entries import MAX_WINDOW_EVENTS


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="U2QT_", extra="ignore", populate_by_name=True)

    artifacts: Path = Field(Path("artifacts/cj"), description="artifact directory (manifest.json and ONNX files)")
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("REDIS_URL", "U2QT_REDIS_URL"),
        description="the Redis to keep histories in (`redis://`, `rediss://`, with auth; `redis+cluster://` any "
        "node of a Redis Cluster); unset: an embedded redis-server the service starts itself",
    )
    redis_cluster: bool = Field(False, description="REDIS_URL names a node of a Redis Cluster (as `redis+cluster://`)")
    embedded_redis_dir: Path = Field(Path("artifacts/redis"), description="where the embedded Redis keeps its data")
    key_prefix: str = Field("u2qt", description="first segment of every Redis key")
    redis_max_connections: int = Field(
        256, ge=1, description="Redis connections at most; more requests wait for one (a busy pool is load, not 503)"
    )
    redis_pool_timeout_s: float = Field(5.0, gt=0, description="how long a request waits for a Redis connection")
    redis_allow_eviction: bool = Field(
        False,
        description="serve on a Redis whose maxmemory-policy may evict keys (it loses histories silently); unset: "
        "`u2qt serve` and `u2qt batch` refuse one and /readyz answers 503",
    )

    providers: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="ONNX Runtime execution provider: `auto` takes CUDA when onnxruntime-gpu finds a GPU"
    )
    frontends: int = Field(
        0,
        ge=0,
        description="0: one process serves HTTP and runs the models; N: `u2qt serve` starts one engine process that "
        'owns ONNX Runtime and batches for N HTTP frontend processes (docs/serving.md, "Frontends and the engine")',
    )
    engine_socket: Path | None = Field(
        None,
        description="the engine's Unix socket, set by `u2qt serve` for its frontends; unset: the models run in-process",
    )
    engine_timeout_s: float = Field(
        5.0,
        gt=0,
        description="with frontends: how long a frontend waits for the engine at start; past it, it starts without: "
        "reads are served, writes get 503 until the engine answers",
    )
    engine_request_timeout_s: float = Field(
        30.0,
        gt=0,
        description="with frontends: how long a request waits for the engine's answer before 503 (an engine that is "
        "alive but hung)",
    )
    ort_threads: int = Field(0, ge=0, description="ONNX Runtime threads of the text encoder; 0: all cores")
    max_batch_size: int = Field(64, ge=1, description="windows (or histories) per inference batch at most")
    max_wait_ms: float = Field(5.0, ge=0, description="how long a batch waits for company once it has a window")
    encoder_batch: int = Field(
        0, ge=0, description="windows per text-encoder run within a batch; 0: 8 on CPU, the whole batch on CUDA"
    )
    encoder_max_padding: float | None = Field(
        None,
        ge=0,
        description="a run also ends before a window that would pad it beyond this fraction of its real tokens; "
        "unset: 0.25 on CPU, no limit on CUDA",
    )
    max_queue_windows: int = Field(
        4096,
        ge=1,
        description="windows admitted and not yet answered (per frontend process); past it 429, and a request "
        "touching more windows than this on its own gets 413",
    )
    max_queue_delay_ms: float = Field(
        1000.0,
        ge=0,
        description="429 when the windows already queued would take longer than this at the measured inference "
        "rate (the service is behind); 0: off",
    )

    history_days: int = Field(180, ge=1, description="days of windows a history keeps (the paper's 180)")
    ttl_days: int = Field(180, ge=1, description="a history untouched this long expires")
    late_windows: int = Field(
        1, ge=0, description="windows before the newest stored one (per user and source) that still take events"
    )
    max_future_skew: float = Field(
        300.0, ge=0, description="seconds: event times further ahead of the server's clock get 422"
    )
    max_events_per_window: int = Field(
        MAX_WINDOW_EVENTS,
        ge=1,
        le=MAX_WINDOW_EVENTS,
        description="events per (user, source, window), at most 255 (a history entry keeps the count in a byte); "
        "more are `refused` per event",
    )
    max_body_bytes: int = Field(2_000_000, ge=1024, description="request bodies over this get 413")
    max_events_per_request: int = Field(10_000, ge=1, description="events per POST /tokenize at most (422)")
    max_users_per_read: int = Field(1000, ge=1, description="users per batch read at most (422)")
    body_timeout_s: float = Field(30.0, gt=0, description="a body that takes longer to arrive gets 408")
    keep_alive_s: int = Field(5, ge=1, description="an idle keep-alive connection is closed after this")
    shutdown_timeout_s: int = Field(30, ge=1, description="on SIGTERM, how long in-flight requests get to finish")

    writer_keys: list[SecretStr] = Field(
        [], description='API keys for POST /tokenize, a JSON list (`["k1","k2"]`); empty: none needed'
    )
    reader_keys: list[SecretStr] = Field([], description="API keys for the read routes, a JSON list; empty: none")


def settings_table() -> str:
    """Every setting as a markdown table: its environment variable, default and meaning."""
    rows = ["| variable | default | what it does |", "|---|---|---|"]
    for name, field in ServiceSettings.model_fields.items():
        env = ", ".join(f"`{a}`" for a in field.validation_alias.choices) if field.validation_alias else None
        default = field.default
        shown = "unset" if default is None else ("[]" if default == [] else str(default))
        rows.append(f"| {env or f'`U2QT_{name.upper()}`'} | `{shown}` | {field.description} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(settings_table(), end="")
