"""The canonical event schema, read from Parquet, CSV or JSONL, checked against the declared sources.

Columns: `user_id` (string), `source` (a declared source name), `ts` (unix seconds or an ISO-8601 /
datetime value), optional `event_id`; for text sources `text` (and optional `amount`); for tabular
sources one numeric column per declared attribute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from u2qt.model.sources import SourcesConfig, event_time_bounds

REQUIRED = ("user_id", "source", "ts")


class EventDataError(ValueError):
    """Event data that cannot be used as given; the message says which column and why."""


def read_events(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise EventDataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix in (".jsonl", ".ndjson"):
        return pd.read_json(path, lines=True)
    raise EventDataError(f"{path}: unknown format {suffix!r} (use .parquet, .csv or .jsonl)")


def read_labels(path: str | Path) -> pd.DataFrame:
    """User labels for `u2qt eval` (.parquet or .csv: user_id + one 0/1 column per task) -> indexed by user_id."""
    path = Path(path)
    labels = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    if "user_id" not in labels:
        raise EventDataError(f"{path}: needs a user_id column")
    return labels.assign(user_id=labels["user_id"].astype(str)).set_index("user_id").astype(float)


def to_unix_seconds(ts: pd.Series) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(ts):
        return ts.astype("float64").to_numpy()
    # ISO-8601 text, read the same way for every row; without an offset it is UTC, as the service reads it
    fmt = None if pd.api.types.is_datetime64_any_dtype(ts) else "ISO8601"
    parsed = pd.to_datetime(ts, utc=True, errors="coerce", format=fmt)
    if parsed.isna().any():
        bad = ts[parsed.isna()].iloc[0]
        raise EventDataError(f"column ts: {bad!r} is neither unix seconds nor a date-time")
    return (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()


def normalize_events(df: pd.DataFrame, sources: SourcesConfig) -> pd.DataFrame:
    """Checks `df` against the schema and returns it with string user ids and float unix-second ts."""
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise EventDataError(f"events lack required column(s) {missing}; have {list(df.columns)}")
    df = df.copy()
    if df["user_id"].isna().any():
        raise EventDataError("column user_id: has empty values")
    df["user_id"] = df["user_id"].astype(str)
    df["source"] = df["source"].astype(str)
    df["ts"] = to_unix_seconds(df["ts"])
    first, end = event_time_bounds(sources.period_s)
    outside = ~((df["ts"] >= first) & (df["ts"] < end))  # NaN too
    if outside.any():
        raise EventDataError(
            f"column ts: {int(outside.sum())} event(s) outside the times a window can hold (from "
            f"1970-01-05T00:00:00Z, the first window, to before {pd.Timestamp(end, unit='s')}), e.g. "
            f"{df.loc[outside, 'ts'].iloc[0]!r}"
        )
    unknown = sorted(set(df["source"].unique()) - {s.name for s in sources.sources})
    if unknown:
        raise EventDataError(f"column source: {unknown} not declared in the sources config")
    for spec in sources.sources:
        rows = df["source"] == spec.name
        if not rows.any():
            continue
        if spec.kind == "text":
            if "text" not in df.columns or df.loc[rows, "text"].isna().all():
                raise EventDataError(f"text source {spec.name!r}: events need a `text` column")
        else:
            absent = [a for a in spec.attributes if a not in df.columns]
            if absent:
                raise EventDataError(f"tabular source {spec.name!r}: attribute column(s) {absent} missing")
            for a in spec.attributes:
                if not pd.api.types.is_numeric_dtype(df[a]):
                    raise EventDataError(f"column {a}: attributes of {spec.name!r} must be numeric")
    if "amount" in df.columns and not pd.api.types.is_numeric_dtype(df["amount"]):
        raise EventDataError("column amount: must be numeric")
    return df


def keep_users(df: pd.DataFrame, max_users: int | None, seed: int = 0) -> pd.DataFrame:
    """A deterministic random sample of `max_users` users (all of them when None)."""
    if max_users is None:
        return df
    users = np.sort(df["user_id"].unique())
    if max_users >= len(users):
        return df
    chosen = np.random.default_rng(seed).permutation(users)[:max_users]
    return df[df["user_id"].isin(set(chosen))]


def to_service_events(df: pd.DataFrame, sources: SourcesConfig, user_prefix: str = "") -> list[dict]:
    """Normalized canonical events as `POST /tokenize` takes them (text + amount, or attributes)."""
    specs = {s.name: s for s in sources.sources}
    out = []
    for r in df.to_dict("records"):
        spec = specs[r["source"]]
        e = {"event_id": r["event_id"], "user_id": user_prefix + r["user_id"], "source": r["source"], "ts": r["ts"]}
        if spec.kind == "tabular":
            e["attributes"] = {a: float(r[a]) for a in spec.attributes}
        else:
            e["text"] = r["text"]
            amount = r.get("amount")
            if amount is not None and not np.isnan(amount):
                e["amount"] = float(amount)
        out.append(e)
    return out
