"""The MovieLens 100K adapter (training/movielens.py) on a few rows in GroupLens' own file formats: MovieLens'
license forbids redistribution, so the real files are not in the repository (docs/eval/notes.md says how to get
them)."""

import pandas as pd
import pytest

from u2qt.service.cli import main
from u2qt.training.config import TrainConfig
from u2qt.training.events import normalize_events
from u2qt.training.movielens import load_events, load_labels

DAY = 86400
CUT = int(pd.Timestamp("1998-03-01", tz="UTC").timestamp())


@pytest.fixture
def ml_dir(tmp_path):
    genres = "|".join(["0"] * 19)
    drama = "|".join("1" if i == 8 else "0" for i in range(19))
    (tmp_path / "u.item").write_text(
        f"1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
        f"2|Casablanca (1942)|01-Jan-1942||http://x|{drama}\n"
        f"3|Unknown Film (1990)|01-Jan-1990||http://x|{genres}\n",
        encoding="latin-1",
    )
    (tmp_path / "u.user").write_text("0|0|D|default_user|0000\n1|24|M|student|85711\n2|53|F|other|94043\n")
    rows = [
        (1, 1, 5, CUT - 10 * DAY),
        (1, 2, 2, CUT - 10 * DAY + 60),
        (1, 3, 4, CUT + 3 * DAY),  # user 1 returns after the cut-off
        (2, 2, 4, CUT - 40 * DAY),
    ]
    (tmp_path / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    return tmp_path


def test_ratings_become_liked_disliked_and_tabular_rating_events(ml_dir):
    ev = load_events(ml_dir)
    text = ev[ev["source"] != "ratings"].sort_values("ts")
    assert text["source"].tolist() == ["liked", "liked", "disliked", "liked"]
    assert text["text"].tolist() == [
        "Casablanca (1942): drama",
        "Toy Story (1995): animation, children's, comedy",
        "Casablanca (1942): drama",
        "Unknown Film (1990)",  # no genre: the title alone
    ]
    tab = ev[ev["source"] == "ratings"].sort_values("ts")
    assert tab["stars"].tolist() == [4.0, 5.0, 2.0, 4.0]
    assert tab["movie_age"].tolist() == [56.0, 3.0, 56.0, 8.0]  # years from release to the rating (all in 1998)
    assert ev["event_id"].is_unique
    from u2qt.training.movielens import sources_config

    normalize_events(ev, sources_config())  # valid canonical events for the declared sources


def test_labels_are_demographics_and_a_return_after_the_cutoff(ml_dir):
    labels = load_labels(ml_dir)
    assert list(labels.index) == ["1", "2"]  # the placeholder row 0 is dropped
    assert labels.loc["1"].tolist() == [0, 0, 1, 1.0]
    assert labels.loc["2"].tolist() == [1, 1, 0, 0.0]


def test_dataset_command_writes_what_train_and_eval_take(ml_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["dataset", "movielens-100k", "--from", str(ml_dir), "--out", str(out)]) in (0, None)
    assert "u2qt train --events" in capsys.readouterr().out
    cfg = TrainConfig.from_yaml(out / "sources.yaml")
    assert [s.name for s in cfg.sources.sources] == ["liked", "disliked", "ratings"]
    assert len(pd.read_parquet(out / "events.parquet")) == 8
    assert set(pd.read_csv(out / "labels.csv").columns) >= {"user_id", "female", "returns_after_cutoff"}


def test_dataset_command_names_a_folder_that_is_not_ml_100k(tmp_path, capsys):
    assert main(["dataset", "movielens-100k", "--from", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not an unpacked ml-100k folder" in capsys.readouterr().err
