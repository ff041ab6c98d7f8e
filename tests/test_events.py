"""Bring-your-own events: the canonical schema, its errors, and training from a file."""

import json

import pandas as pd
import pytest

from u2qt.model.sources import SourcesConfig
from u2qt.service.cli import main
from u2qt.training.events import EventDataError, normalize_events

SOURCES = {
    "window": "1d",
    "sources": [
        {"name": "searches", "kind": "text"},
        {"name": "payments", "kind": "tabular", "attributes": ["amount_usd", "merchants"]},
    ],
}


def _events(n_users=30):
    rows = []
    for u in range(n_users):
        for d in range(6):
            ts = f"2024-05-{d + 1:02d}T{8 + u % 10:02d}:00:00Z"
            rows.append(
                {
                    "event_id": f"s{u}-{d}",
                    "user_id": f"user-{u}",
                    "source": "searches",
                    "ts": ts,
                    "text": ["running shoes", "rain jacket", "coffee beans", "tent"][(u + d) % 4],
                }
            )
            rows.append(
                {
                    "event_id": f"p{u}-{d}",
                    "user_id": f"user-{u}",
                    "source": "payments",
                    "ts": ts,
                    "amount_usd": float(5 + (u * 7 + d) % 40),
                    "merchants": float(1 + u % 3),
                }
            )
    return pd.DataFrame(rows)


def test_schema_errors_name_the_column():
    cfg = SourcesConfig.model_validate(SOURCES)
    with pytest.raises(EventDataError, match="user_id"):
        normalize_events(_events().drop(columns=["user_id"]), cfg)
    bad = _events()
    bad.loc[0, "source"] = "clicks"
    with pytest.raises(EventDataError, match=r"column source: \['clicks'\]"):
        normalize_events(bad, cfg)
    bad = _events()
    bad.loc[0, "ts"] = "yesterday"
    with pytest.raises(EventDataError, match="column ts"):
        normalize_events(bad, cfg)
    with pytest.raises(EventDataError, match="amount_usd"):
        normalize_events(_events().drop(columns=["amount_usd"]), cfg)


def test_train_from_a_jsonl_file_with_declared_sources(tmp_path, capsys):
    events = tmp_path / "events.jsonl"
    _events().to_json(events, orient="records", lines=True)
    sources = tmp_path / "sources.yaml"
    sources.write_text(
        json.dumps({**SOURCES, "quantizer": {"codebook_size": 8, "code_dim": 16}, "optim": {"batch_size": 64}})
    )
    out = tmp_path / "out"
    assert main(["train", "--events", str(events), "--sources", str(sources), "--out", str(out), "--epochs", "3"]) == 0
    assert "searches" in capsys.readouterr().out
    assert main(["export", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "identical codes 100.00%" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sources"]["window"] == "1d"
    assert set(manifest["tabular"]) == {"payments"}


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    events = tmp_path / "events.csv"
    bad = _events()
    bad.loc[3, "source"] = "clicks"
    bad.to_csv(events, index=False)
    sources = tmp_path / "sources.yaml"
    sources.write_text(json.dumps(SOURCES))
    code = main(["train", "--events", str(events), "--sources", str(sources), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "u2qt train: error: column source: ['clicks'] not declared" in err
    assert "Traceback" not in err
    assert main(["train", "--events", str(events), "--out", str(tmp_path / "o")]) == 2
    assert "--events needs --sources" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    # settings out of range are refused before any data is read, with the setting's name
    for flag, field in (
        ("--code-dim", "quantizer.code_dim"),
        ("--bag-buckets", "encoder.bag_buckets"),
        ("--soft-counts", "reader.soft_counts"),
    ):
        args = ["train", "--events", str(events), "--sources", str(sources), "--out", str(tmp_path / "o"), flag, "-1"]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert field in err and "greater than or equal to" in err and "Traceback" not in err
    args = ["train", "--dataset", "completejourney", "--out", str(tmp_path / "o"), "--window", "30m"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "sources.window" in err and "shorter than an hour" in err and "Traceback" not in err
