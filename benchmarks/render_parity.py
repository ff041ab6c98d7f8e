"""Do training and serving render every window of The Complete Journey the same way?

    python3 benchmarks/render_parity.py [--users 2469] [--baseline REV]
    python3 benchmarks/render_parity.py --events events.parquet --sources sources.yaml   (any event log)

Training renders a window with `build_corpus` (training/corpus.py); the service renders it from the events its
store returns, sorted by (ts, event_id), with `EventTokenizer._job`'s calls. Both call `model.windows`. This
renders every (user, source, window) both ways (the service's side keeps the events its store would, arriving in
that order: each id once, at most 255) and counts the windows whose text (text sources) or feature vector
(tabular sources) differ: inputs the model was trained on that the service never produces. `--baseline REV` takes
`model/windows.py` from git revision REV for both sides instead of this checkout's (with training's corpus.py of
this checkout).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import ROOT, recorded  # noqa: E402


def windows_module(rev: str | None):
    """model/windows.py of this checkout, or of git revision `rev`."""
    if rev is None:
        from u2qt.model import windows

        return windows
    show = ["git", "-C", str(ROOT), "show", f"{rev}:model/windows.py"]
    source = subprocess.run(show, capture_output=True, check=True)
    path = Path(tempfile.mkdtemp(prefix="u2qt-render-parity-")) / "windows.py"
    path.write_bytes(source.stdout)
    spec = importlib.util.spec_from_file_location(f"windows_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@recorded
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--users", type=int, default=2469)
    p.add_argument("--events", type=Path, help="an event log (parquet/csv) instead of The Complete Journey")
    p.add_argument("--sources", type=Path, help="its sources.yaml (with --events)")
    p.add_argument("--baseline", help="git revision whose model/windows.py renders both sides")
    args = p.parse_args()
    if bool(args.events) != bool(args.sources):
        p.error("--events and --sources go together")
    print(
        f"command: python3 benchmarks/render_parity.py --users {args.users}"
        + (f" --events {args.events} --sources {args.sources}" if args.events else "")
        + (f" --baseline {args.baseline}" if args.baseline else "")
    )
    from u2qt.model.sources import SourcesConfig
    from u2qt.training import corpus
    from u2qt.training.completejourney import load_events, sources_config
    from u2qt.training.events import keep_users, normalize_events, read_events

    t0 = time.perf_counter()
    windows = windows_module(args.baseline)
    corpus.render_text_window, corpus.tabular_window_features = (  # training's side renders with the same module
        windows.render_text_window,
        windows.tabular_window_features,
    )
    sources = SourcesConfig.from_yaml(args.sources) if args.sources else sources_config()
    log = read_events(args.events) if args.events else load_events()
    events = keep_users(normalize_events(log, sources), args.users)
    trained = corpus.build_corpus(events, sources, progress=False)
    rows = trained.windows.reset_index(drop=True)
    row_of = {k: i for i, k in enumerate(zip(rows["user_id"], rows["source"], rows["window_start"], strict=True))}

    starts = corpus.window_start(events["ts"].to_numpy(), sources.period_s)
    served = events.assign(window_start=starts).sort_values(["user_id", "source", "window_start", "ts", "event_id"])
    total = 0
    for spec in sources.sources:
        sub = served[served["source"] == spec.name]
        ids = sub["event_id"].to_numpy(dtype=object)
        groups = {  # the events the store keeps when they arrive in this order
            k: idx[windows.kept_events(ids[idx])]
            for k, idx in sub.groupby(["user_id", "window_start"], sort=False).indices.items()
        }
        differ = 0
        if spec.kind == "text":
            text, ts = sub["text"].fillna("").astype(str).to_numpy(), sub["ts"].to_numpy()
            amount = sub["amount"].to_numpy(dtype=np.float64) if "amount" in sub else np.full(len(sub), np.nan)
            for (user, start), idx in groups.items():
                mine = windows.render_text_window(text[idx], ts[idx], amount[idx], spec.template)
                differ += mine != rows["text"][row_of[user, spec.name, start]]
        else:
            values = sub[list(spec.attributes)].to_numpy(dtype=np.float64)
            feats = trained.features[spec.name]
            for (user, start), idx in groups.items():
                mine = windows.tabular_window_features(values[idx])
                differ += mine.tobytes() != feats[row_of[user, spec.name, start]].tobytes()
        total += differ
        print(
            f"{spec.name:>10}: {len(groups):6d} windows, {differ:4d} rendered differently by training and by the "
            f"service ({differ / max(len(groups), 1):.3%})"
        )
    print(f"users: {events['user_id'].nunique()}; windows rendered differently in all: {total}")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
