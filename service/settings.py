"""All of the service's configuration, in one typed object read from the environment (prefix U2QT_)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="U2QT_", extra="ignore", populate_by_name=True)

    artifacts: Path = Path("artifacts/cj")
    # No REDIS_URL: the service starts an embedded real Redis of its own (see service.embedded_redis).
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL", "U2QT_REDIS_URL"))
    embedded_redis_dir: Path = Path("artifacts/redis")
    key_prefix: str = "u2qt"
    # connections to Redis: a request waits up to redis_pool_timeout_s for a free one (a busy pool is load, not an
    # outage: only a Redis that does not answer gives 503)
    redis_max_connections: int = Field(256, ge=1)
    redis_pool_timeout_s: float = Field(5.0, gt=0)

    providers: Literal["auto", "cpu", "cuda"] = "auto"
    ort_threads: int = 0  # 0 = ONNX Runtime's default (all cores)
    max_batch_size: int = Field(64, ge=1)
    max_wait_ms: float = Field(5.0, ge=0)
    # windows per text-encoder run within a batch (at most); 0 = the batcher's rule: 8 on CPU, the whole batch on
    # CUDA (a GPU wants wide runs; padding is cheap there)
    encoder_batch: int = Field(0, ge=0)
    # a run also ends before a window that would pad it beyond this fraction of its real tokens; unset = the
    # batcher's rule: 0.25 on CPU, no limit on CUDA (a large value gives runs of fixed width)
    encoder_max_padding: float | None = Field(None, ge=0)
    # windows queued or being tokenized; a request that would pass it waits its turn with 429, and one that touches
    # more windows than this on its own is refused with 413 (split it)
    max_queue_windows: int = Field(4096, ge=1)
    # 429 also when the windows already queued ahead would take longer than this to tokenize (at the measured
    # inference rate): the service is behind. 0 turns it off
    max_queue_delay_ms: float = Field(1000.0, ge=0)

    history_days: int = Field(180, ge=1)  # the paper's 180-day history
    ttl_days: int = Field(180, ge=1)  # a history untouched this long expires
    late_windows: int = Field(1, ge=0)  # windows before the newest stored one that still accept events
    # events further ahead of the server's clock are refused (422): one far-future event would close every window
    max_future_skew: timedelta = timedelta(minutes=5)
    max_events_per_window: int = Field(1000, ge=1)  # per (user, source, window); more are refused per event
    max_body_bytes: int = Field(2_000_000, ge=1024)
    max_events_per_request: int = Field(10_000, ge=1)
    max_users_per_read: int = Field(1000, ge=1)
    # a client that sends its body slower than this gets 408; an idle keep-alive connection is closed after
    # keep_alive_s; on SIGTERM in-flight requests get shutdown_timeout_s to finish
    body_timeout_s: float = Field(30.0, gt=0)
    keep_alive_s: int = Field(5, ge=1)
    shutdown_timeout_s: int = Field(30, ge=1)

    writer_keys: list[SecretStr] = []  # empty: writes need no key
    reader_keys: list[SecretStr] = []  # empty: reads need no key
