"""Long windows are encoded in chunks and pooled (model/runtime.py), the same way in training and serving."""

import numpy as np

from u2qt.model.manifest import Manifest
from u2qt.model.runtime import OnnxTextEncoder, pick_providers


def _encoder(out, **info):
    manifest = Manifest.load(out)
    return OnnxTextEncoder(out, manifest.encoder.model_copy(update=info), pick_providers("cpu"))


def long_window(n: int = 60) -> str:
    return f"{n} events, $99.00: " + ", ".join(f"item number {i} x{i % 5 + 1}" for i in range(n))


def test_a_long_window_is_cut_into_chunks_that_keep_every_token(trained_dir):
    out, _, _ = trained_dir
    enc = _encoder(out, max_chunks=64)
    text = long_window()
    [chunks] = enc.tokenizer.encode([text])
    whole = enc.tokenizer.untruncated_lengths([text])[0]
    assert len(chunks) > 2 and all(len(c) <= enc.info.max_tokens for c in chunks)
    # every chunk carries the model's two special tokens ([CLS] ... [SEP]); nothing else is added or lost
    assert sum(len(c) - 2 for c in chunks) == whole - 2
    assert enc.tokenizer.chunks_needed([text])[0] == len(chunks)


def test_chunks_are_the_ids_of_the_tokenizers_full_encoding(trained_dir):
    """TextTokenizer uses encode_batch_fast (no character offsets): its chunks must be the ids that the tokenizer's
    offset-tracking encode gives, first chunk and overflow alike."""
    out, _, _ = trained_dir
    enc = _encoder(out, max_chunks=64)
    texts = [long_window(), long_window(7), "3 events, $4.50: milk x2, bread", "crème brûlée, 日本茶 x3"]
    for text, chunks in zip(texts, enc.tokenizer.encode(texts), strict=True):
        full = enc.tokenizer.tokenizer.encode(enc.tokenizer.prefix + text)
        assert chunks == [full.ids, *(o.ids for o in full.overflowing)]


def test_a_long_window_embeds_as_the_length_weighted_mean_of_its_chunks(trained_dir):
    out, _, _ = trained_dir
    enc = _encoder(out, max_chunks=64)
    [chunks] = enc.tokenizer.encode([long_window()])
    parts = np.concatenate([enc.run_ids([c]) for c in chunks])
    mean = (parts * np.array([len(c) for c in chunks])[:, None]).sum(0)
    got = enc.embed([long_window()])[0]
    np.testing.assert_allclose(got, mean / np.linalg.norm(mean), atol=1e-5)
    assert float(got @ parts[0]) < 0.99  # the tail changed the embedding: it was not dropped


def test_a_short_window_is_one_chunk_and_max_chunks_1_truncates_as_before(trained_dir):
    out, _, _ = trained_dir
    short = "3 events, $4.50: milk x2, bread"
    enc = _encoder(out)
    assert [len(c) for c in enc.tokenizer.encode([short])[0]] == [enc.tokenizer.untruncated_lengths([short])[0]]
    np.testing.assert_array_equal(enc.embed([short]), enc.run_ids(enc.tokenizer.encode([short])[0]))
    one = _encoder(out, max_chunks=1)  # an artifact written before chunking: its manifest has no max_chunks
    [chunks] = one.tokenizer.encode([long_window()])
    assert len(chunks) == 1 and len(chunks[0]) == one.info.max_tokens
    assert one.tokenizer.chunks_needed([long_window()])[0] > 1


def test_manifests_without_max_chunks_read_as_one_chunk(trained_dir):
    out, _, _ = trained_dir
    raw = Manifest.load(out).model_dump()
    del raw["encoder"]["max_chunks"]
    assert Manifest.model_validate(raw).encoder.max_chunks == 1
    assert Manifest.load(out).encoder.max_chunks == 8  # what `u2qt train` writes today
