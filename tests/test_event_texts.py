"""Window vectors decoded to event texts (training/event_texts.py): the counts a ridge map is fitted to, and what
it reads back."""

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from u2qt.training.event_texts import TextDecoder, window_text_counts

DAY = 86400


def test_window_text_counts_count_each_windows_events_per_text_among_the_texts_seen_before_the_cutoff():
    windows = pd.DataFrame({"user_id": ["a", "a", "b"], "source": ["buy", "buy", "buy"], "window_start": [0, DAY, 0]})
    events = pd.DataFrame(
        {
            "user_id": ["a", "a", "a", "b", "b", "b", "c"],
            "source": ["buy"] * 7,
            "ts": [10, 20, DAY + 5, 30, 3 * DAY, 40, 50],  # b's 3rd-day event has no window; c has none
            "text": ["milk", "milk", "bread", "eggs", "caviar", None, "milk"],
        }
    )
    counts, texts = window_text_counts(events, windows, DAY, before_s=DAY, top=10)
    assert "caviar" not in texts and "bread" not in texts  # only in a window after the cut-off / in no window
    dense = pd.DataFrame(counts.toarray(), columns=texts)
    assert dense["milk"].tolist() == [2, 0, 0]
    assert dense["eggs"].tolist() == [0, 0, 1]
    one, _ = window_text_counts(events, windows, DAY, before_s=DAY, top=1)
    assert one.shape == (3, 1) and one.toarray()[:, 0].tolist() == [2, 0, 0]  # the most frequent text first


@pytest.mark.parametrize("as_sparse", [False, True])
def test_text_decoder_reads_back_counts_that_are_linear_in_the_window_vectors(as_sparse):
    rng = np.random.default_rng(0)
    x = (rng.random((2000, 12)) < 0.3).astype(np.float64)  # binary, as a window's tokens one-hot are
    truth = rng.integers(0, 3, (12, 5)).astype(np.float64)
    counts = sparse.csr_matrix(x @ truth)
    design = sparse.csr_matrix(x) if as_sparse else x
    decoder = TextDecoder.fit(design, counts, np.arange(1500))
    assert decoder.shrink == 1e-5  # noiseless: the held-out fifth picks the least shrinkage
    assert np.abs(decoder.predict(design[1500:]) - counts[1500:].toarray()).max() < 0.01
    users = decoder.user_counts(design, [np.arange(1500, 1510), np.array([], dtype=np.int64)])
    np.testing.assert_allclose(users[0], np.log1p(counts[1500:1510].toarray().sum(0)), atol=0.05)
    assert not users[1].any()  # a user without text windows: zeros


def test_events_without_texts_give_no_columns_and_a_decoder_refuses_them():
    windows = pd.DataFrame({"user_id": ["a"], "source": ["visits"], "window_start": [0]})
    events = pd.DataFrame({"user_id": ["a"], "source": ["visits"], "ts": [10], "amount": [1.0]})
    counts, texts = window_text_counts(events, windows, DAY, before_s=DAY, top=10)
    assert counts.shape == (1, 0) and texts == []
    with pytest.raises(ValueError, match="nothing to decode"):
        TextDecoder.fit(np.ones((1, 3)), counts, np.array([0]))


def test_a_single_window_is_decoded_without_a_held_out_fifth_to_choose_on():
    counts = sparse.csr_matrix(np.array([[2.0, 0.0, 1.0]]))
    decoder = TextDecoder.fit(np.array([[0.5, 1.0]]), counts, np.array([0]))
    assert decoder.shrink == 1e-3  # the middle of RIDGE_SHRINKS
    np.testing.assert_allclose(decoder.predict(np.array([[0.5, 1.0]])), [[2.0, 0.0, 1.0]], atol=1e-5)
