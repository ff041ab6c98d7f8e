"""The stages of `u2qt batch`, as plain functions over Arrow tables: both engines (batch_local.py, batch_ray.py)
call exactly these, and they call the same window rendering (model/windows.py), tokenizer runtime
(model/runtime.py) and store scripts (service/store.py) as POST /tokenize, so a window gets the same bytes on
either path.

    read -> prepare (validate, window index) -> sort by (user, source, window, ts, event_id) -> form windows
    (one row per window, cut on group boundaries) -> subword-tokenize -> encode + quantize -> write (COMMIT)

A window's events are the input's events of that (user, source, window), sorted by (ts, event_id) as the store
returns them to the online path, de-duplicated on event_id and capped at the first `max_events` of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from u2qt.model.manifest import Manifest
from u2qt.model.runtime import RenderedWindow, TokenizerRuntime
from u2qt.model.sources import event_time_bounds, window_index
from u2qt.model.windows import kept_events, render_text_window, tabular_window_features
from u2qt.service.schemas import MAX_MAGNITUDE
from u2qt.service.store import TokenHistoryStore

SORT_KEY = ["user_id", "source", "window", "ts", "event_id"]
USER_ID = r"^[A-Za-z0-9._:@+=\-]{1,128}$"  # schemas.UserId: braces would break the `{user}` hash tag


@dataclass
class StageClock:
    """Seconds and rows per stage, summed over every batch (a worker's share, for the Ray engine)."""

    seconds: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)

    def add(self, stage: str, started: float, rows: int) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started
        self.rows[stage] = self.rows.get(stage, 0) + rows


def to_seconds(ts: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Event times as float64 unix seconds: numbers pass, timestamps (any unit; naive = UTC) convert."""
    if pa.types.is_timestamp(ts.type):
        return pc.divide(pc.cast(pc.cast(ts, pa.timestamp("us")), pa.int64()), 1e6)
    if pa.types.is_integer(ts.type) or pa.types.is_floating(ts.type):
        return pc.cast(ts, pa.float64())
    raise ValueError(f"column ts: {ts.type} is neither unix seconds nor a timestamp")


def prepare(table: pa.Table, manifest: Manifest, latest_ts: float) -> tuple[pa.Table, dict[str, int]]:
    """Canonical events -> (the valid ones with `ts` in seconds, their `window` index and `source_index`, the
    refused counted by reason). The checks are POST /tokenize's (schemas.EventIn, ingest.validation_errors),
    vectorized: a row the service would answer with 422 is refused here, and nothing else is."""
    sources = manifest.sources
    for column in ("event_id", "user_id", "source", "ts"):
        if column not in table.column_names:
            raise ValueError(f"the events have no `{column}` column (the canonical schema: docs/training.md)")
    n = table.num_rows
    ts = to_seconds(table["ts"])
    first, last = event_time_bounds(sources.period_s)
    reasons: dict[str, np.ndarray] = {}

    def refuse(reason: str, bad) -> None:
        bad = np.asarray(pc.fill_null(bad, True), dtype=bool) if not isinstance(bad, np.ndarray) else bad
        reasons[reason] = bad

    event_id = pc.cast(table["event_id"], pa.string())
    user_id = pc.cast(table["user_id"], pa.string())
    source = pc.cast(table["source"], pa.string())
    id_length = pc.utf8_length(event_id)
    refuse("event_id missing, empty or over 256 characters", pc.or_(pc.less(id_length, 1), pc.greater(id_length, 256)))
    refuse("user_id not 1-128 of A-Za-z0-9._:@+=-", pc.invert(pc.match_substring_regex(user_id, USER_ID)))
    ts_np = ts.to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        refuse(
            "ts outside [1970-01-05, the server's clock + skew]", ~((ts_np >= first) & (ts_np < min(last, latest_ts)))
        )
    src_np = np.asarray(source.to_numpy(zero_copy_only=False), dtype=object)
    known = np.isin(src_np, [s.name for s in sources.sources])
    refuse("source not declared by the model", ~known)
    text_col = pc.cast(table["text"], pa.string()) if "text" in table.column_names else pa.nulls(n, pa.string())
    amount = table["amount"] if "amount" in table.column_names else pa.nulls(n, pa.float64())
    for spec in sources.sources:
        rows = src_np == spec.name
        if not rows.any():
            continue
        if spec.kind == "text":
            stripped = pc.utf8_trim_whitespace(text_col)
            empty = np.asarray(pc.fill_null(pc.equal(stripped, ""), True), dtype=bool)
            too_long = np.asarray(pc.fill_null(pc.greater(pc.utf8_length(text_col), 4000), False), dtype=bool)
            refuse(f"{spec.name}: text missing, empty or over 4000 characters", rows & (empty | too_long))
            refuse(f"{spec.name}: amount not finite within ±1e15", rows & ~_magnitude_ok(amount, allow_null=True))
            for a in {a for s in sources.sources for a in s.attributes}:
                if a in table.column_names:
                    refuse(f"{spec.name}: takes no attributes", rows & ~np.asarray(pc.is_null(table[a]), dtype=bool))
        else:
            refuse(f"{spec.name}: takes no text", rows & ~np.asarray(pc.is_null(text_col), dtype=bool))
            refuse(f"{spec.name}: takes no amount", rows & ~np.asarray(pc.is_null(amount), dtype=bool))
            present = np.zeros(n, bool)
            for a in spec.attributes:
                if a in table.column_names:
                    present |= ~np.asarray(pc.is_null(table[a]), dtype=bool)
                    refuse(
                        f"{spec.name}: {a} not finite within ±1e15", rows & ~_magnitude_ok(table[a], allow_null=True)
                    )
            refuse(f"{spec.name}: needs attributes {spec.attributes}", rows & ~present)
    bad = np.zeros(n, bool)
    counts = {}
    for reason, mask in reasons.items():
        mask = mask & ~bad  # each refused row counted once, under its first reason
        if mask.any():
            counts[reason] = int(mask.sum())
        bad |= mask
    keep = ~bad
    idx = {s.name: i for i, s in enumerate(sources.sources)}
    src_kept = src_np[keep]
    columns = {
        "user_id": user_id.filter(pa.array(keep)),
        "source": source.filter(pa.array(keep)),
        "source_index": pa.array(np.array([idx[s] for s in src_kept], dtype=np.int64)),
        "window": pa.array(window_index(ts_np[keep], sources.period_s).astype(np.int64)),
        "ts": pa.array(ts_np[keep]),
        "event_id": event_id.filter(pa.array(keep)),
        "text": text_col.filter(pa.array(keep)),
        "amount": pc.cast(amount, pa.float64()).filter(pa.array(keep)),
    }
    for a in sorted({a for s in sources.sources for a in s.attributes}):
        col = table[a] if a in table.column_names else pa.nulls(n, pa.float64())
        columns[a] = pc.cast(col, pa.float64()).filter(pa.array(keep))
    return pa.table(columns), counts


def _magnitude_ok(col, allow_null: bool) -> np.ndarray:
    values = np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(values) & (np.abs(values) <= MAX_MAGNITUDE)
    return ok | (np.isnan(values) & allow_null & np.asarray(pc.is_null(col), dtype=bool))


def sort_events(table: pa.Table) -> pa.Table:
    """Every window's events contiguous, in the order the store gives them to the online path."""
    return table.take(pc.sort_indices(table, [(k, "ascending") for k in SORT_KEY]))


def group_bounds(table: pa.Table) -> np.ndarray:
    """Start offsets of each (user, source, window) group of a sorted table, plus its length at the end."""
    if table.num_rows == 0:
        return np.zeros(1, np.int64)
    change = np.zeros(table.num_rows, bool)
    change[0] = True
    for key in ("user_id", "source", "window"):
        col = table[key].to_numpy(zero_copy_only=False)
        change[1:] |= col[1:] != col[:-1]
    return np.append(np.flatnonzero(change), table.num_rows)


def cut_on_groups(table: pa.Table, rows: int) -> list[pa.Table]:
    """Slices of a sorted table of about `rows` rows each that never split a (user, source, window)."""
    bounds = group_bounds(table)
    out, start = [], 0
    for b in bounds[1:]:
        if b - start >= rows:
            out.append(table.slice(start, b - start))
            start = b
    if start < table.num_rows:
        out.append(table.slice(start, table.num_rows - start))
    return out


def form_windows(events: pa.Table, manifest: Manifest, max_events: int) -> pa.Table:
    """A sorted table whose groups are whole -> one row per window: user_id, source, source_index, window,
    event_count, text (text sources) or features (tabular sources), exactly as ingest.EventTokenizer renders it."""
    bounds = group_bounds(events)
    sources = manifest.sources.sources
    cols = {k: events[k].to_numpy(zero_copy_only=False) for k in ("user_id", "source", "source_index", "window")}
    event_id = events["event_id"].to_numpy(zero_copy_only=False)
    ts = events["ts"].to_numpy(zero_copy_only=False)
    text = events["text"].to_numpy(zero_copy_only=False)
    amount = np.asarray(events["amount"].to_numpy(zero_copy_only=False), dtype=np.float64)
    attrs = {
        s.name: np.stack([np.asarray(events[a].to_numpy(zero_copy_only=False), np.float64) for a in s.attributes], 1)
        for s in sources
        if s.kind == "tabular"
    }
    out = {k: [] for k in ("user_id", "source", "source_index", "window", "event_count", "text", "features")}
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        rows = start + kept_events(event_id[start:end], max_events)
        spec = sources[int(cols["source_index"][start])]
        for k in ("user_id", "source", "source_index", "window"):
            out[k].append(cols[k][start])
        out["event_count"].append(len(rows))
        if spec.kind == "text":
            out["text"].append(render_text_window(text[rows], ts[rows], amount[rows], spec.template))
            out["features"].append(None)
        else:
            out["text"].append(None)
            out["features"].append(tabular_window_features(attrs[spec.name][rows]).tolist())
    return pa.table(
        {
            "user_id": pa.array(out["user_id"], pa.string()),
            "source": pa.array(out["source"], pa.string()),
            "source_index": pa.array(out["source_index"], pa.int64()),
            "window": pa.array(out["window"], pa.int64()),
            "event_count": pa.array(out["event_count"], pa.int64()),
            "text": pa.array(out["text"], pa.string()),
            "features": pa.array(out["features"], pa.list_(pa.float32())),
        }
    )


def rendered(windows: pa.Table) -> list[RenderedWindow]:
    src = windows["source_index"].to_pylist()
    text = windows["text"].to_pylist()
    feats = windows["features"].to_pylist()
    return [
        RenderedWindow(s, text=t) if f is None else RenderedWindow(s, features=np.asarray(f, np.float32))
        for s, t, f in zip(src, text, feats, strict=True)
    ]


def tokenize(windows: pa.Table, runtime: TokenizerRuntime) -> pa.Table:
    """Adds `chunks`: each text window's chunked subword ids (runtime.tokenize_texts), null for tabular ones."""
    chunks = runtime.tokenize_texts(rendered(windows))
    return windows.append_column("chunks", pa.array(chunks, pa.list_(pa.list_(pa.int32()))))


def encode(windows: pa.Table, runtime: TokenizerRuntime) -> pa.Table:
    """Adds `codes` (one per level) by runtime.encode_windows, from the `chunks` of tokenize()."""
    chunks = windows["chunks"].to_pylist()
    codes = runtime.encode_windows(rendered(windows), chunks)
    levels = runtime.vocabulary.levels
    return windows.drop_columns(["chunks", "text", "features"]).append_column(
        "codes", pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1), pa.int64()), levels)
    )


def commit_args(windows: pa.Table) -> list[tuple[str, str, int, int, np.ndarray]]:
    codes = np.asarray(windows["codes"].combine_chunks().flatten().to_numpy(), dtype=np.int64).reshape(
        windows.num_rows, -1
    )
    return list(
        zip(
            windows["user_id"].to_pylist(),
            windows["source"].to_pylist(),
            windows["window"].to_pylist(),
            windows["event_count"].to_pylist(),
            codes,
            strict=True,
        )
    )


async def write(windows: pa.Table, store: TokenHistoryStore, sources: list[str], users_per_call: int = 256) -> dict:
    """COMMITs the windows (one script per user, the online path's own), then re-files users whose history
    changed for the collision fallback. -> {windows written, windows kept as stored, Redis scripts}."""
    writes = commit_args(windows)
    by_user: dict[str, list[int]] = {}
    for i, w in enumerate(writes):
        by_user.setdefault(w[0], []).append(i)
    users = list(by_user)
    applied, scripts = 0, 0
    for s in range(0, len(users), users_per_call):
        part = [writes[i] for u in users[s : s + users_per_call] for i in by_user[u]]
        moves, n = await store.commit_counted(part, sources, engagement=True)
        applied += n
        scripts += len(users[s : s + users_per_call])
        if moves:
            await store.refresh_fallback(moves)
            scripts += 1
    return {"windows written": applied, "windows kept": len(writes) - applied, "scripts": scripts}


async def drop_stored(windows: pa.Table, store: TokenHistoryStore) -> pa.Table:
    """For --resume: leaves out windows whose stored entry was already built from exactly this many events (a
    run before this one wrote them), so a resumed run encodes only what is missing."""
    stored = await store.stored_counts(
        list(
            zip(
                windows["user_id"].to_pylist(),
                windows["source"].to_pylist(),
                windows["window"].to_pylist(),
                strict=True,
            )
        )
    )
    keep = np.asarray(windows["event_count"].to_numpy()) != np.asarray(stored)
    return windows.filter(pa.array(keep))
