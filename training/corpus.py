"""Groups events into (user, source, window) rows and renders each with `model.windows`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from u2qt.model.runtime import RenderedWindow
from u2qt.model.sources import SourcesConfig, window_start
from u2qt.model.windows import render_text_window, tabular_window_features


@dataclass
class WindowCorpus:
    windows: pd.DataFrame  # user_id, source, source_index, window_start, text ("" for tabular rows), events
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


def build_corpus(events: pd.DataFrame, sources: SourcesConfig, progress: bool = True) -> WindowCorpus:
    """`events` must already be normalized (see training.events.normalize_events)."""
    ev = events.assign(window_start=window_start(events["ts"].to_numpy(), sources.period_s))
    rows, feats = [], {s.name: [] for s in sources.sources if s.kind == "tabular"}
    for spec in sources.sources:
        sub = ev[ev["source"] == spec.name].sort_values(["user_id", "window_start", "ts"], kind="stable")
        if sub.empty:
            continue
        groups = sub.groupby(["user_id", "window_start"], sort=True)
        if spec.kind == "text":
            amounts = sub["amount"].to_numpy(dtype=np.float64) if "amount" in sub else None
            texts, ts = sub["text"].fillna("").astype(str).to_numpy(), sub["ts"].to_numpy()
            for (user, start), idx in tqdm(
                groups.indices.items(), desc=f"render {spec.name}", disable=not progress, leave=False
            ):
                text = render_text_window(texts[idx], ts[idx], None if amounts is None else amounts[idx], spec.template)
                rows.append((user, spec.name, start, text, len(idx)))
        else:
            values = sub[spec.attributes].to_numpy(dtype=np.float64)
            for (user, start), idx in tqdm(
                groups.indices.items(), desc=f"aggregate {spec.name}", disable=not progress, leave=False
            ):
                feats[spec.name].append(tabular_window_features(values[idx]))
                rows.append((user, spec.name, start, "", len(idx)))
    windows = pd.DataFrame(rows, columns=["user_id", "source", "window_start", "text", "events"])
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
