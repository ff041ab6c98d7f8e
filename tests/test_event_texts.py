"""Window vectors decoded to event texts (training/event_texts.py): the counts a ridge map is fitted to, and what
it reads back."""

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from u2qt.model.decoded import pool_user
from u2qt.training.event_texts import TextDecoder, fit_token_texts, window_text_counts

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


def test_tokens_decode_to_texts_as_rows_summed_and_a_source_without_texts_to_nothing():
    """The served decoder (model.decoded.TokenTexts) predicts a window's counts as the sum of its tokens' rows plus
    an intercept, zero for a source none of whose fitted windows holds a text; pool_user appends log1p of the
    user's sums, negatives cut."""
    rng = np.random.default_rng(0)
    ids = np.stack([rng.integers(0, 4, 3000), rng.integers(4, 8, 3000)], axis=1)  # two levels of four tokens
    source = rng.integers(0, 2, 3000)
    truth = rng.integers(0, 3, (8, 3)).astype(np.float64)
    counts = truth[ids].sum(1) * (source == 0)[:, None]  # source 1 (say visits) has no texts
    texts = fit_token_texts(ids, source, sparse.csr_matrix(counts), np.arange(2500), 8, 2)
    assert texts.sources.tolist() == [1.0, 0.0]
    predicted = texts(ids[2500:], source[2500:])
    np.testing.assert_allclose(predicted, counts[2500:], atol=0.01)
    assert not predicted[source[2500:] == 1].any()
    z = rng.standard_normal((5, 4))
    v = pool_user(z, source[:5], np.ones(5), np.arange(5), 2, now=5, horizon=10, texts=predicted[:5])
    assert v.shape == (2 * (4 + 3) + 3,)
    np.testing.assert_allclose(v[-3:], np.log1p(np.maximum(predicted[:5], 0).sum(0)), rtol=1e-6)


@pytest.mark.parametrize("as_sparse", [False, True])
def test_fewer_windows_than_columns_give_the_same_ridge_solution(as_sparse):
    """A vocabulary larger than the fitted windows (16,385 tokens of 4 + 4 levels of 1,024, a few thousand windows)
    is solved through the windows' n x n system: the same coefficients as the columns' system it replaces."""
    rng = np.random.default_rng(1)
    x = (rng.random((60, 40)) < 0.2).astype(np.float64)
    counts = sparse.csr_matrix(rng.poisson(1.0, (60, 3)).astype(np.float64))
    design = (lambda m: sparse.csr_matrix(m)) if as_sparse else (lambda m: m)
    few = TextDecoder.fit(design(x), counts, np.arange(30), shrinks=(1e-2,))  # 30 windows < 40 columns: the dual
    # the same 30 windows twice, 60 rows > 40 columns: the columns' system, and the same solution (λ is per window)
    twice = TextDecoder.fit(design(np.vstack([x[:30]] * 2)), sparse.vstack([counts[:30]] * 2), np.arange(60), (1e-2,))
    np.testing.assert_allclose(few.coef, twice.coef, atol=1e-4)
    np.testing.assert_allclose(few.intercept, twice.intercept, atol=1e-4)
