"""Declared event sources and the time windows their events are grouped into."""

from __future__ import annotations

import functools
import re
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from u2qt.model.entries import MAX_WINDOWS

# Windows start on a Monday at 00:00 UTC, so a 7-day window is a calendar week and a 1-day window a day.
WINDOW_ORIGIN = 4 * 86400  # 1970-01-05T00:00:00Z
_PERIOD = re.compile(r"^(\d+)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
SOURCE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def parse_period(text: str) -> int:
    """'7d' -> 604800 seconds."""
    match = _PERIOD.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"window period {text!r} is not like '1d', '7d', '12h'")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds < MIN_PERIOD_S:
        raise ValueError(f"window period {text!r} is shorter than an hour, the shortest a window may be")
    return seconds


def window_start(ts, period_s: int):
    """Start (unix seconds) of the window that holds event time `ts` (a number or a numpy array)."""
    starts = (
        np.floor_divide(np.asarray(ts, dtype=np.float64) - WINDOW_ORIGIN, period_s) * period_s + WINDOW_ORIGIN
    ).astype(np.int64)
    return int(starts) if starts.ndim == 0 else starts


def window_index(ts, period_s: int):
    """Ordinal of the window holding `ts` (what the history store keeps, in 3 bytes); a number or an array."""
    idx = np.floor_divide(np.asarray(ts, dtype=np.float64) - WINDOW_ORIGIN, period_s).astype(np.int64)
    return int(idx) if idx.ndim == 0 else idx


def index_start(index: int, period_s: int) -> int:
    return index * period_s + WINDOW_ORIGIN


def windows_in(days: float, period_s: int) -> int:
    """How many windows of `period_s` cover `days` (at least one): spans are set in days, whatever the period."""
    return max(1, -(-round(days * 86400) // period_s))


# The history store keeps a window's ordinal in 3 bytes (model/entries.py), and the API writes window starts as
# ISO-8601 dates of years 1..9999: an event time outside both ranges cannot be stored or read back.
LAST_ISO_SECOND = 253_402_300_799  # 9999-12-31T23:59:59Z
MIN_PERIOD_S = 3600  # with MAX_WINDOWS window indices: 1,914 years of 1-hour windows from 1970


@functools.cache
def event_time_bounds(period_s: int) -> tuple[float, float]:
    """[first, last) event times (unix seconds) whose window the store can keep: window index 0 (the first
    window, starting 1970-01-05, a Monday) up to the last window that fits the entry's 3-byte index and whose
    start is still a year-9999 date."""
    last_window = min(MAX_WINDOWS - 1, (LAST_ISO_SECOND - WINDOW_ORIGIN) // period_s)
    return float(WINDOW_ORIGIN), float(index_start(last_window + 1, period_s))


class TextTemplate(BaseModel):
    """How a text source's window becomes one document (paper, Appendix A: 'CATEGORY, N times')."""

    model_config = ConfigDict(extra="forbid")
    order_by: Literal["weight", "recency"] = "weight"
    max_items: int = Field(64, ge=1, le=4096)
    show_totals: bool = True


class SourceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    kind: Literal["text", "tabular"]
    description: str = ""
    template: TextTemplate = TextTemplate()
    attributes: list[str] = []  # tabular only: numeric attribute columns

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not SOURCE_NAME.match(v):
            raise ValueError(f"source name {v!r} must match {SOURCE_NAME.pattern}")
        return v

    @model_validator(mode="after")
    def _kind(self) -> SourceSpec:
        if self.kind == "tabular" and not self.attributes:
            raise ValueError(f"tabular source {self.name!r} declares no attributes")
        if self.kind == "text" and self.attributes:
            raise ValueError(f"text source {self.name!r} cannot declare attributes")
        return self


class SourcesConfig(BaseModel):
    """The `sources.yaml` a user writes: the window period and the sources, in a fixed order."""

    model_config = ConfigDict(extra="forbid")
    window: str = "1d"
    sources: list[SourceSpec]

    @field_validator("window")
    @classmethod
    def _window(cls, v: str) -> str:
        parse_period(v)
        return v

    @model_validator(mode="after")
    def _unique(self) -> SourcesConfig:
        names = [s.name for s in self.sources]
        if not names:
            raise ValueError("no sources declared")
        if len(set(names)) != len(names):
            raise ValueError(f"source names repeat: {names}")
        return self

    @property
    def period_s(self) -> int:
        return parse_period(self.window)

    def index(self, name: str) -> int:
        for i, s in enumerate(self.sources):
            if s.name == name:
                return i
        raise KeyError(name)

    def get(self, name: str) -> SourceSpec | None:
        return self._by_name.get(name)

    @cached_property
    def _by_name(self) -> dict[str, SourceSpec]:
        # the service looks a source up per event it validates and per window it renders
        return {s.name: s for s in self.sources}

    @classmethod
    def from_yaml(cls, path: str | Path) -> SourcesConfig:
        return cls.model_validate(yaml.safe_load(Path(path).read_text()))
