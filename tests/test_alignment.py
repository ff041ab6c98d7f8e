"""The alignment losses on inputs whose answer is known, the history sequence layout, and the collision
fallback's determinism."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from u2qt.model.fallback import assign_fallback, collision_rate
from u2qt.model.sequence import history_sequence
from u2qt.training.alignment import info_nce, token_alignment_loss


def test_token_alignment_loss_is_zero_for_a_perfect_prediction_and_two_for_the_opposite():
    target = torch.randn(2, 5, 8)
    valid = torch.ones(2, 5, dtype=torch.bool)
    assert token_alignment_loss(target.clone(), target, valid, tau=4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert token_alignment_loss(-target, target, valid, tau=4.0).item() == pytest.approx(2.0, abs=1e-6)
    # orthogonal prediction: cosine 0, loss 1 whatever the weights
    pred = torch.zeros(1, 2, 2)
    pred[0, :, 0] = 1.0
    tgt = torch.zeros(1, 2, 2)
    tgt[0, :, 1] = 1.0
    assert token_alignment_loss(pred, tgt, torch.ones(1, 2, dtype=torch.bool), 1.0).item() == pytest.approx(1.0)


def test_token_alignment_weights_later_positions_more_as_eq_11_says():
    tau = 2.0
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    pred = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])  # position 1 right (loss 0), position 2 wrong (loss 2)
    w1, w2 = 1 + 1 / tau, 1 + 2 / tau
    expected = (w1 * 0 + w2 * 2) / (w1 + w2)
    got = token_alignment_loss(pred, target, torch.ones(1, 2, dtype=torch.bool), tau)
    assert got.item() == pytest.approx(expected)
    # padding positions do not count
    only_first = token_alignment_loss(pred, target, torch.tensor([[True, False]]), tau)
    assert only_first.item() == pytest.approx(0.0, abs=1e-6)


def test_info_nce_matches_its_closed_forms():
    eye = torch.eye(4)
    assert info_nce(eye, eye, tau=0.01).item() == pytest.approx(0.0, abs=1e-6)
    assert info_nce(eye, eye.roll(1, 0), tau=0.01).item() > 50  # every row matched to the wrong partner
    same = torch.ones(4, 3)  # nothing tells the rows apart: chance, log B
    assert info_nce(same, same, tau=0.1).item() == pytest.approx(math.log(4), abs=1e-5)


def test_history_sequence_orders_by_time_then_source_and_keeps_the_newest_tokens():
    windows = np.array([10, 8, 10, 9])
    source = np.array([1, 0, 0, 2])
    tokens = np.array([[11, 12], [1, 2], [21, 22], [31, 32]])
    ids, level, age = history_sequence(windows, source, tokens, max_tokens=10, max_age=5)
    assert ids.tolist() == [1, 2, 31, 32, 21, 22, 11, 12, 0, 0]
    assert level.tolist() == [0, 1] * 4 + [0, 0]
    assert age.tolist() == [2, 2, 1, 1, 0, 0, 0, 0, 0, 0]
    ids, _, _ = history_sequence(windows, source, tokens, max_tokens=4, max_age=5)
    assert ids.tolist() == [21, 22, 11, 12]  # the newest window's tokens survive truncation


def test_fallback_orders_colliding_users_by_engagement_then_id():
    seqs = {"a": (1, 2), "b": (1, 2), "c": (3,), "d": (1, 2), "e": (3,), "f": (9,)}
    engagement = {"a": 5, "b": 9, "d": 5, "c": 1, "e": 1, "f": 100}
    fb = assign_fallback(seqs, engagement)
    assert fb == {"b": 1, "a": 2, "d": 3, "c": 1, "e": 2}
    assert collision_rate(seqs) == pytest.approx(5 / 6)
    assert collision_rate({u: (s, fb.get(u, 0)) for u, s in seqs.items()}) == 0.0


def test_fallback_ids_do_not_drift_between_processes():
    code = (
        "import json, random\n"
        "from u2qt.model.fallback import assign_fallback\n"
        "rng = random.Random(7)\n"
        "users = [f'u{i}' for i in range(300)]\n"
        "seqs = {u: (rng.randrange(20),) for u in users}\n"
        "eng = {u: rng.randrange(5) for u in users}\n"
        "items = list(seqs.items()); random.Random(int(__import__('os').environ['ORDER'])).shuffle(items)\n"
        "print(json.dumps(assign_fallback(dict(items), eng), sort_keys=True))\n"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": str(seed), "ORDER": str(seed), "PATH": "/usr/bin:/bin"},
            cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]),
        ).stdout
        for seed in (1, 2, 3)
    }
    assert len(outs) == 1  # same ids whatever the hash seed and the order users arrive in
    assert len(json.loads(outs.pop())) > 250


def test_min_steps_trains_a_small_data_set_for_that_many_steps_at_least():
    """A few hundred users give a few steps an epoch: align.min_steps adds epochs until that many steps ran."""
    import torch

    from u2qt.model.history import HistoryConfig
    from u2qt.training.alignment import AlignmentSamples, train_history_model
    from u2qt.training.config import AlignConfig

    rng = np.random.default_rng(0)
    n, t = 40, 16
    seq = lambda: (rng.integers(1, 50, (n, t)), np.tile(np.arange(t) % 4, (n, 1)), np.zeros((n, t), np.int64))  # noqa: E731
    samples = AlignmentSamples(*seq(), seq(), seq(), ["x"] * n, np.arange(n))
    hcfg = HistoryConfig(vocab_size=50, code_dim=8, levels=4, text_dim=12, d_model=16, layers=1, max_tokens=t)
    table = torch.randn(50, 8)
    desc = rng.normal(size=(n, 12)).astype(np.float32)
    cfg = AlignConfig(epochs=1, batch_size=16, tasks=["semantic"])
    _, plain = train_history_model(samples, desc, table, hcfg, cfg, progress=False)
    _, longer = train_history_model(samples, desc, table, hcfg, cfg.model_copy(update={"min_steps": 9}), progress=False)
    assert len(plain) == 1 and len(longer) == 5  # 2 steps an epoch: 5 epochs reach 9 steps
