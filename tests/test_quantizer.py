import torch

from u2qt.model.architecture import ModelConfig, U2QTModel
from u2qt.model.quantizer import ResidualQuantizer
from u2qt.training.config import TrainConfig
from u2qt.training.train import load_checkpoint, save_checkpoint


def _quantizer(**kw):
    torch.manual_seed(0)
    args = dict(n_sources=3, shared_levels=2, specific_levels=2, codebook_size=16, dim=8)
    args.update(kw)
    return ResidualQuantizer(**args)


def test_selected_codewords_plus_last_residual_equal_the_latent():
    q = _quantizer()
    z, source = torch.randn(64, 8), torch.randint(0, 3, (64,))
    out = q(z, source)
    total = torch.zeros_like(z)
    for level in range(q.levels):
        block = 0 if level < q.shared_levels else source
        total += q.codebooks[level][block * q.codebook_size + out.codes[:, level]]
    last_residual = out.residuals[-1] - q.codebooks[-1][source * q.codebook_size + out.codes[:, -1]]
    assert torch.allclose(total + last_residual, z, atol=1e-5)
    codes, quantized = q.encode(z, source)
    assert torch.equal(codes, out.codes)
    assert torch.allclose(quantized, total, atol=1e-5)


def test_a_source_never_picks_another_sources_specific_codes():
    q = _quantizer(shared_levels=0, specific_levels=1)
    z = torch.randn(32, 8)
    with torch.no_grad():
        q.codebooks[0].data[:] = 100.0  # every code far away ...
        q.codebooks[0].data[16:32] = z[:16]  # ... except source 1's block, which holds z exactly
    source = torch.zeros(32, dtype=torch.long)  # but these rows are source 0
    codes, quantized = q.encode(z, source)
    assert torch.all(quantized == 100.0), "source 0 rows must stay in source 0's block"
    # and source 1 rows do find their exact codewords
    codes1, quantized1 = q.encode(z[:16], torch.ones(16, dtype=torch.long))
    assert torch.equal(codes1, torch.arange(16).unsqueeze(1))
    assert torch.allclose(quantized1, z[:16])


def test_kmeans_init_puts_a_codeword_on_every_cluster_and_is_remembered():
    torch.manual_seed(1)
    centers = torch.randn(4, 8) * 10
    z = centers.repeat_interleave(50, 0) + 0.01 * torch.randn(200, 8)
    source = torch.arange(200) % 2
    q = _quantizer(n_sources=2, shared_levels=1, specific_levels=1, codebook_size=4)
    assert not q.initted
    q.init_kmeans(z, source, seed=0)
    assert bool(q.initted)
    d = torch.cdist(centers, q.codebooks[0].detach())
    assert d.min(1).values.max() < 0.1, "each cluster center has a level-1 codeword on it"
    codes, quantized = q.encode(z, source)
    assert (quantized - z).norm(dim=1).max() < 0.1


def test_dead_codes_are_moved_onto_current_residuals_at_every_level():
    q = _quantizer()
    z, source = torch.randn(128, 8), torch.randint(0, 3, (128,))
    out = q(z, source)
    before = [cb.detach().clone() for cb in q.codebooks]
    for level in range(q.levels):
        q.usage(level).fill_(1.0)
        q.usage(level)[3] = 0.0  # code 3 of the first block of every level is dead
    moved = q.restart_dead_codes(out.residuals, source, threshold=0.5, generator=torch.Generator().manual_seed(0))
    assert sum(len(rows) for rows in moved.values()) == q.levels
    for level in range(q.levels):
        after = q.codebooks[level].detach()
        rows = out.residuals[level] if level < q.shared_levels else out.residuals[level][source == 0]
        assert (rows - after[3]).norm(dim=1).min() < 1e-6, "the dead code now sits on a residual"
        changed = (after != before[level]).any(1).nonzero().flatten().tolist()
        assert changed == [3], "live codes are left alone"


def test_checkpoint_round_trip_gives_identical_codes_and_keeps_kmeans_state(tmp_path):
    from u2qt.training.completejourney import sources_config

    cfg = TrainConfig(sources=sources_config())
    model = U2QTModel(
        ModelConfig(
            sources=["purchases", "promotions", "visits"],
            tabular_features={"visits": 16},
            codebook_size=32,
            code_dim=16,
            hidden_dim=32,
        )
    )
    emb, source = torch.randn(100, 384), torch.arange(100) % 3
    feats = {"visits": torch.randn(100, 16)}
    with torch.no_grad():
        z = model.encoder(model.source_embedding(emb, source, feats))
    model.quantizer.init_kmeans(z, source, seed=0)
    model.eval()
    from u2qt.model.manifest import EncoderInfo

    info = EncoderInfo(
        name="x",
        pooling="mean",
        normalize=True,
        max_tokens=8,
        text_prefix="",
        dim=384,
        precision="fp32",
        file="e.onnx",
        tokenizer_file="t.json",
        pad_token_id=0,
    )
    save_checkpoint(tmp_path, model, cfg, info)
    loaded = load_checkpoint(tmp_path).model
    assert bool(loaded.quantizer.initted)
    with torch.no_grad():
        z2 = loaded.encoder(loaded.source_embedding(emb, source, feats))
    assert torch.equal(model.quantizer.encode(z, source)[0], loaded.quantizer.encode(z2, source)[0])


def test_decoding_tokens_gives_the_codeword_sum_encode_quantized_to():
    q = _quantizer()
    z, source = torch.randn(64, 8), torch.randint(0, 3, (64,))
    q.init_kmeans(z, source, seed=0)
    codes, quantized = q.encode(z, source)
    torch.testing.assert_close(q.decode(codes, source), quantized)


def test_a_restarted_codeword_loses_the_optimizer_moments_of_the_dead_one():
    from u2qt.training.train import clear_moments

    q = _quantizer()
    z, source = torch.randn(128, 8), torch.randint(0, 3, (128,))
    q.init_kmeans(z, source, seed=0)  # every code in use, so every row has a gradient history
    opt = torch.optim.AdamW(q.parameters(), lr=1e-2)
    out = q(z, source)
    out.loss.backward()
    opt.step()
    for level in range(q.levels):
        q.usage(level).fill_(1.0)
        q.usage(level)[3] = 0.0
    moved = q.restart_dead_codes(out.residuals, source, threshold=0.5, generator=torch.Generator().manual_seed(0))
    state = opt.state[q.codebooks[0]]
    assert state["exp_avg"][3].abs().sum() > 0  # the dead row had a gradient history
    clear_moments(opt, q.codebooks, moved)
    for level, rows in moved.items():
        st = opt.state[q.codebooks[level]]
        assert st["exp_avg"][rows].abs().sum() == 0 and st["exp_avg_sq"][rows].abs().sum() == 0
    assert state["exp_avg"][4].abs().sum() > 0  # live rows keep theirs


def test_latent_norm_fixes_the_scale_of_z_and_keeps_checkpoint_names():
    plain = U2QTModel(ModelConfig(sources=["a", "b"], code_dim=16, hidden_dim=32))
    normed = U2QTModel(ModelConfig(sources=["a", "b"], code_dim=16, hidden_dim=32, latent_norm=True))
    assert plain.state_dict().keys() == normed.state_dict().keys()
    with torch.no_grad():
        z = normed.encoder(torch.randn(10, 384) * 50)
    torch.testing.assert_close(z.pow(2).mean(1), torch.ones(10), atol=1e-3, rtol=0)


def test_codebooks_refitted_to_a_moved_encoder_quantize_its_latent_closer():
    """After training, the codebooks are refitted to the trained encoder's z (training/train.py: refit_codebooks):
    an encoder that moved after its codebooks were fitted is quantized with less error, on its windows and on
    windows it did not see, and every row still gets one code per level."""
    from u2qt.training.train import refit_codebooks

    torch.manual_seed(0)
    model = U2QTModel(ModelConfig(sources=["a", "b"], codebook_size=16, code_dim=8, hidden_dim=32, text_dim=24))
    centers = torch.randn(12, 24) * 3
    emb = centers[torch.randint(0, 12, (400,))] + 0.1 * torch.randn(400, 24)
    source = torch.arange(400) % 2
    seen, unseen = torch.arange(300), torch.arange(300, 400)

    def error(rows):
        with torch.no_grad():
            z = model.encoder(model.source_embedding(emb[rows], source[rows], {}))
        codes, quantized = model.quantizer.encode(z, source[rows])
        assert codes.shape == (len(rows), 4)
        return float(((quantized - z) ** 2).sum(-1).mean() / (z**2).sum(-1).mean())

    with torch.no_grad():
        model.quantizer.init_kmeans(model.encoder(model.source_embedding(emb[seen], source[seen], {})), source[seen], 0)
        for p in model.encoder.parameters():
            p.add_(0.2 * torch.randn_like(p))  # the encoder moves on, as it does while the codebooks train
    before = error(seen), error(unseen)
    refit_codebooks(model, emb, source, {}, seen, seed=0)
    after = error(seen), error(unseen)
    assert after[0] < 0.5 * before[0] and after[1] < before[1], (before, after)


def test_refitted_codebooks_hold_no_near_copies_where_residuals_are_fewer_than_codes():
    """A refit over fewer distinct residuals than codes (a deep level, a source with few windows) parks the spare
    codewords: a near-copy would make the argmin a tie that float noise breaks differently by batch."""
    import numpy as np

    from u2qt.model.quantizer import kmeans_centroids

    x = np.repeat(np.random.default_rng(0).normal(size=(5, 8)), 20, axis=0).astype(np.float32)
    x[::7] += 1e-7  # float noise: distinct rows, the same points
    cb = kmeans_centroids(x, 16, seed=0, park_within=1e-4)
    assert cb.shape == (16, 8)
    d = np.sqrt(((cb[:, None] - cb[None]) ** 2).sum(-1)) + np.eye(16) * 1e9
    assert d.min() > 1e-3, "no two codewords are near-copies"
    nearest = ((x[:, None] - cb[None]) ** 2).sum(-1).argmin(1)
    assert len(np.unique(nearest)) == 5 and np.abs(cb[nearest] - x).max() < 1e-5
