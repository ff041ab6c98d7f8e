"""The hashed bag of subwords beside the text embedding (EncoderConfig.bag_buckets, training/text_encoder.py)."""

import numpy as np
import pytest
import torch

from u2qt.model.runtime import OnnxTextEncoder, pick_providers
from u2qt.training.config import EncoderConfig
from u2qt.training.text_encoder import export_text_encoder, lexical_bag, load_pooled_model

BUCKETS = 64


@pytest.fixture(scope="module")
def bag_encoder(tmp_path_factory):
    cfg = EncoderConfig(bag_buckets=BUCKETS)
    directory = tmp_path_factory.mktemp("bag-encoder")
    info = export_text_encoder(cfg, directory)
    return cfg, info, OnnxTextEncoder(directory, info, pick_providers("cpu"))


def test_a_texts_bag_depends_on_its_subwords_not_on_the_padding_of_its_batch():
    ids = torch.tensor([[101, 2000, 3000, 102, 0, 0], [101, 2000, 3000, 102, 4000, 102]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    bags = lexical_bag(ids, mask, BUCKETS)
    alone = lexical_bag(ids[:1, :4], mask[:1, :4], BUCKETS)
    torch.testing.assert_close(bags[0], alone[0])
    torch.testing.assert_close(bags.norm(dim=1), torch.ones(2))
    assert float(bags[0] @ bags[1]) < 0.99  # the extra subword shows


def test_the_exported_encoder_outputs_the_text_embedding_and_the_bag_side_by_side(bag_encoder):
    cfg, info, enc = bag_encoder
    model, tok = load_pooled_model(cfg)
    assert info.bag_buckets == BUCKETS and info.dim == 384 + BUCKETS and info.normalize
    texts = ["3 events, $4.50: milk x2, bread", "frozen pizza, soft drinks x3, chocolate milk, bananas"]
    got = enc.embed(texts)
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = model(batch["input_ids"], batch["attention_mask"]).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # each half has half the norm: neither the sentence nor the bag dominates the projection's input
    np.testing.assert_allclose(np.linalg.norm(got[:, 384:], axis=1), 2**-0.5, atol=1e-5)


def test_windows_listing_other_items_differ_more_in_the_bag_than_in_the_sentence_embedding(bag_encoder):
    _, _, enc = bag_encoder
    a, b = enc.embed(["2 events: whole milk, white bread", "2 events: skim milk, wheat bread"])
    sentence = float(a[:384] @ b[:384]) * 2
    bag = float(a[384:] @ b[384:]) * 2
    assert bag < sentence
