import math
from datetime import UTC, datetime

import numpy as np
import pytest

from u2qt.model.sources import SourcesConfig, TextTemplate, parse_period, window_start
from u2qt.model.vocabulary import TokenVocabulary
from u2qt.model.windows import render_text_window, tabular_window_features


def test_text_window_merges_repeats_and_puts_the_heaviest_first():
    text = render_text_window(["Milk", "bread", "milk", "Eggs"], [1, 2, 3, 4], [2.0, 5.0, 2.0, 1.0], TextTemplate())
    assert text == "4 events, $10.00: bread, milk x2, eggs"


def test_recency_order_and_missing_amounts():
    text = render_text_window(["a", "b", "a"], [1, 5, 3], None, TextTemplate(order_by="recency"))
    assert text == "3 events: b, a x2"
    text = render_text_window(["a", "b"], [1, 2], [math.nan, 3.0], TextTemplate(show_totals=False))
    assert text == "b, a"


def test_tabular_window_features_aggregate_and_ignore_missing():
    f = tabular_window_features(np.array([[1.0, np.nan], [3.0, np.nan]]))
    assert f.shape == (7,)
    assert f[0] == pytest.approx(math.log1p(2))
    assert f[1:4] == pytest.approx([math.log1p(4), math.log1p(2), math.log1p(3)])
    assert list(f[4:]) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        tabular_window_features(np.zeros((0, 2)))


def test_weekly_windows_start_on_monday_midnight_utc():
    ts = datetime(2017, 3, 9, 15, 30, tzinfo=UTC).timestamp()  # a Thursday
    start = datetime.fromtimestamp(window_start(ts, parse_period("7d")), UTC)
    assert start == datetime(2017, 3, 6, tzinfo=UTC)
    assert window_start(np.array([ts]), 86400)[0] == datetime(2017, 3, 9, tzinfo=UTC).timestamp()


def test_sources_config_rejects_what_cannot_work():
    with pytest.raises(ValueError, match="declares no attributes"):
        SourcesConfig.model_validate({"sources": [{"name": "t", "kind": "tabular"}]})
    with pytest.raises(ValueError, match="repeat"):
        SourcesConfig.model_validate({"sources": [{"name": "a", "kind": "text"}, {"name": "a", "kind": "text"}]})
    with pytest.raises(ValueError, match="window period"):
        SourcesConfig.model_validate({"window": "weekly", "sources": [{"name": "a", "kind": "text"}]})


def test_vocabulary_ids_and_strings_round_trip_without_overlap():
    v = TokenVocabulary(["purchases", "visits"], shared_levels=2, specific_levels=2, codebook_size=1024)
    assert v.size == 1 + 2 * 1024 + 2 * 2 * 1024
    ids = v.ids(np.array([0, 1]), np.array([[17, 0, 5, 903], [1023, 1, 2, 3]]))
    assert v.strings(ids[0]) == ["<s1_17>", "<s2_0>", "<purchases1_5>", "<purchases2_903>"]
    assert v.strings(ids[1])[2:] == ["<visits1_2>", "<visits2_3>"]
    every = [v.string(i) for i in range(v.size)]
    assert len(set(every)) == v.size
    assert all(v.token_id(s) == i for i, s in enumerate(every))
    with pytest.raises(ValueError):
        v.string(v.size)


def test_a_text_window_is_the_same_whatever_order_its_events_arrive_in():
    # 0.1 + 0.2 + 0.3 and 0.3 + 0.2 + 0.1 differ in the last bit: summed in arrival order, the heavier of two
    # equal categories depended on which events came first, so a window rendered differently online (events in
    # the order they reached Redis) and in a backfill (events in log order)
    texts, amounts = ["dairy"] * 3 + ["bakery"] * 3, [0.1, 0.2, 0.3, 0.3, 0.2, 0.1]
    rendered = {
        render_text_window([texts[i] for i in order], [1.0] * 6, [amounts[i] for i in order], TextTemplate())
        for order in ([0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [0, 3, 1, 4, 2, 5])
    }
    assert rendered == {"6 events, $1.20: bakery x3, dairy x3"}


def test_tabular_window_features_do_not_depend_on_the_order_of_the_rows():
    rows = np.array([[1e16], [1.0], [-1e16], [2.5]])
    features = {tabular_window_features(rows[order]).tobytes() for order in ([0, 1, 2, 3], [0, 2, 1, 3], [3, 2, 1, 0])}
    assert len(features) == 1
    f = tabular_window_features(rows)
    assert f[1] == pytest.approx(math.log1p(3.5)) and f[2] == pytest.approx(math.log1p(3.5 / 4))


def test_a_window_keeps_each_event_id_once_and_at_most_255_events():
    from u2qt.model.windows import kept_events

    assert kept_events(["a", "b", "a", "c"]).tolist() == [0, 1, 3]  # sorted by (ts, event_id): the earliest a
    assert kept_events([f"e{i:03d}" for i in range(300)]).tolist() == list(range(255))
    assert kept_events(["a", "b", "c"], max_events=2).tolist() == [0, 1]


@pytest.mark.parametrize("with_ids", [True, False])
def test_training_builds_a_window_from_the_events_the_service_would_keep(with_ids):
    """The service stores an event id once per window and refuses events past 255 (`u2qt train` reports 56 of
    MovieLens 100K's 6,855 windows past it): training must not learn from windows the service never builds."""
    import pandas as pd

    from u2qt.training.corpus import build_corpus

    sources = SourcesConfig.model_validate(
        {
            "window": "7d",
            "sources": [
                {"name": "buys", "kind": "text"},
                {"name": "visits", "kind": "tabular", "attributes": ["spend"]},
            ],
        }
    )
    ts = 1489060406 + np.arange(300.0)
    events = pd.DataFrame(
        {
            "user_id": "u1",
            "source": ["buys"] * 300 + ["visits"] * 300,
            "ts": np.concatenate([ts, ts]),
            "text": ["milk"] * 300 + [None] * 300,
            "spend": [np.nan] * 300 + [1.0] * 300,
            "event_id": [f"b{i % 290:03d}" for i in range(300)] + [f"v{i:03d}" for i in range(300)],
        }
    )
    if not with_ids:
        events = events.drop(columns="event_id")
    corpus = build_corpus(events, sources, progress=False)
    assert corpus.windows["events"].tolist() == [255, 255]
    assert corpus.windows["text"][0] == "255 events: milk x255"
    visits = corpus.features["visits"][1]
    assert visits[0] == pytest.approx(math.log1p(255)) and visits[1] == pytest.approx(math.log1p(255))
    if with_ids:  # what `u2qt train` reports: 2 windows past the cap, 35 + 45 events past it, 10 repeated ids
        from u2qt.training.train import window_event_stats

        stats = window_event_stats(corpus.windows)
        assert stats == {
            "windows": 2,
            "cap": 255,
            "windows_past_cap": 2,
            "events_past_cap": 80,
            "repeated_event_ids": 10,
        }
