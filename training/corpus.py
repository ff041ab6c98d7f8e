"""Groups events into (user, source, window) rows and renders each with `model.windows`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from u2qt.model.runtime import RenderedWindow
from u2qt.model.sources import SourcesConfig, window_start
from u2qt.model.windows import kept_events, render_text_window, tabular_window_features


@dataclass
class WindowCorpus:
    # user_id, source, source_index, window_start, text ("" for tabular rows), events (what the window is built
    # from), logged_events (the log's rows for it), distinct_events (their distinct event ids)
    windows: pd.DataFrame
    features: dict[str, np.ndarray]  # tabular source -> [n_windows, n_features] (zeros on other rows)

    def __len__(self) -> int:
        return len(self.windows)

    def rendered(self) -> list[RenderedWindow]:
        """The windows as the encoders take them (TokenizerRuntime.encode_windows), in row order."""
        w = self.windows
        out = []
        for i, (name, idx, text) in enumerate(zip(w["source"], w["source_index"], w["text"], strict=True)):
            feats = self.features.get(name)
            out.append(RenderedWindow(int(idx), text) if feats is None else RenderedWindow(int(idx), features=feats[i]))
        return out

    def input_keys(self) -> np.ndarray:
        """One key per distinct model input, to tell a collision (different inputs, same tokens)
        from a repeat (identical windows, same tokens)."""
        keys = self.windows["text"].to_numpy(dtype=object).copy()
        for name, feats in self.features.items():
            rows = (self.windows["source"] == name).to_numpy()
            keys[rows] = [f.tobytes().hex() for f in feats[rows]]
        return keys


def _kept_events(sub: pd.DataFrame, windows: dict):
    """(user, window start, rows of `sub` the window is built from, (rows the log has for it, distinct event ids
    among them)) per window of one source's events, sorted; `windows`: sub's groupby(user, window start) indices."""
    # event_id is optional in training: an event without one is an event of its own
    ids = sub["event_id"].to_numpy(dtype=object).copy() if "event_id" in sub else np.full(len(sub), np.nan, object)
    missing = np.flatnonzero(pd.isna(ids))
    ids[missing] = [f"\0row {i}" for i in missing]
    for (user, start), idx in windows.items():
        yield user, start, idx[kept_events(ids[idx])], (len(idx), len(set(ids[idx])))


def build_corpus(events: pd.DataFrame, sources: SourcesConfig, progress: bool = True) -> WindowCorpus:
    """`events` must already be normalized (see training.events.normalize_events). A window is built from the
    events the service would build it from: sorted by (ts, event_id), each id once, at most MAX_WINDOW_EVENTS
    (model.windows.kept_events)."""
    ev = events.assign(window_start=window_start(events["ts"].to_numpy(), sources.period_s))
    rows, feats = [], {s.name: [] for s in sources.sources if s.kind == "tabular"}
    for spec in sources.sources:
        order = ["user_id", "window_start", "ts", *(["event_id"] if "event_id" in ev else [])]
        sub = ev[ev["source"] == spec.name].sort_values(order, kind="stable")
        if sub.empty:
            continue
        by_window = sub.groupby(["user_id", "window_start"], sort=True).indices
        groups = tqdm(
            _kept_events(sub, by_window),
            total=len(by_window),
            desc=f"{'render' if spec.kind == 'text' else 'aggregate'} {spec.name}",
            disable=not progress,
            leave=False,
        )
        if spec.kind == "text":
            amounts = sub["amount"].to_numpy(dtype=np.float64) if "amount" in sub else None
            texts, ts = sub["text"].fillna("").astype(str).to_numpy(), sub["ts"].to_numpy()
            for user, start, idx, logged in groups:
                text = render_text_window(texts[idx], ts[idx], None if amounts is None else amounts[idx], spec.template)
                rows.append((user, spec.name, start, text, len(idx), *logged))
        else:
            values = sub[spec.attributes].to_numpy(dtype=np.float64)
            for user, start, idx, logged in groups:
                feats[spec.name].append(tabular_window_features(values[idx]))
                rows.append((user, spec.name, start, "", len(idx), *logged))
    columns = ["user_id", "source", "window_start", "text", "events", "logged_events", "distinct_events"]
    windows = pd.DataFrame(rows, columns=columns)
    windows["source_index"] = windows["source"].map({s.name: i for i, s in enumerate(sources.sources)})
    features = {}
    for spec in sources.sources:
        if spec.kind != "tabular":
            continue
        full = np.zeros((len(windows), 1 + 3 * len(spec.attributes)), dtype=np.float32)
        mask = (windows["source"] == spec.name).to_numpy()
        if mask.any():
            full[mask] = np.stack(feats[spec.name])
        features[spec.name] = full
    return WindowCorpus(windows, features)
