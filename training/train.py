"""How a u2qt tokenizer learns: corpus -> cached text embeddings -> k-means init -> MRQ-VAE training."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from u2qt.model.architecture import ModelConfig, U2QTModel
from u2qt.model.entries import MAX_WINDOW_EVENTS
from u2qt.model.manifest import EncoderInfo
from u2qt.training.config import TrainConfig
from u2qt.training.corpus import WindowCorpus, build_corpus
from u2qt.training.embeddings import embed_texts_cached
from u2qt.training.event_texts import WINDOW_TEXTS_FILE, save_window_texts, window_text_counts
from u2qt.training.metrics import plot_utilization, summarize
from u2qt.training.text_encoder import export_text_encoder

CHECKPOINT_DIR = "checkpoint"
TEXT_TARGET_VARIANCE = 16.0


@dataclass
class Checkpoint:
    model: U2QTModel
    train_config: TrainConfig
    encoder: EncoderInfo


def save_checkpoint(out: Path, model: U2QTModel, cfg: TrainConfig, encoder: EncoderInfo) -> None:
    d = out / CHECKPOINT_DIR
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, d / "model.safetensors")
    (d / "checkpoint.json").write_text(
        json.dumps(
            {
                "train_config": cfg.model_dump(),
                "model_config": model.config.model_dump(),
                "encoder": encoder.model_dump(),
            },
            indent=2,
        )
    )


def load_checkpoint(out: Path) -> Checkpoint:
    d = Path(out) / CHECKPOINT_DIR
    if not (d / "model.safetensors").is_file():
        raise FileNotFoundError(f"no checkpoint in {d}: run `u2qt train --out {out}` first")
    meta = json.loads((d / "checkpoint.json").read_text())
    model = U2QTModel(ModelConfig.model_validate(meta["model_config"]))
    model.load_state_dict(load_file(d / "model.safetensors"))
    return Checkpoint(
        model.eval(), TrainConfig.model_validate(meta["train_config"]), EncoderInfo.model_validate(meta["encoder"])
    )


def corpus_tensors(corpus: WindowCorpus, text_emb: np.ndarray) -> tuple:
    return (
        torch.from_numpy(text_emb),
        torch.from_numpy(np.array(corpus.windows["source_index"], dtype=np.int64)),  # a writable copy
        {k: torch.from_numpy(v) for k, v in corpus.features.items()},
    )


def embed_corpus(corpus: WindowCorpus, cfg: TrainConfig, out: Path, progress: bool) -> tuple:
    info = export_text_encoder(cfg.encoder, out / "encoder")
    text_rows = (corpus.windows["text"] != "").to_numpy() & corpus.windows["source"].isin(
        [s.name for s in cfg.sources.sources if s.kind == "text"]
    ).to_numpy()
    text_emb = np.zeros((len(corpus), info.dim), dtype=np.float32)
    stats = {}
    if text_rows.any():
        text_emb[text_rows], stats = embed_texts_cached(
            corpus.windows.loc[text_rows, "text"].tolist(),
            out / "encoder",
            info,
            out / "cache",
            cfg.encoder.batch_size,
            progress,
        )
    return info, text_emb, stats


@torch.no_grad()
def encode_all(model: U2QTModel, text_emb, source, features, chunk: int = 8192, cosine: bool = True):
    """-> (codes [N, levels], reconstruction cosine [N] or None when `cosine` is False), in chunks."""
    codes, cos = [], []
    for s in range(0, len(source), chunk):
        sl = slice(s, s + chunk)
        feats = {k: v[sl] for k, v in features.items()}
        codes.append(model.encode(text_emb[sl], source[sl], feats)[0])
        if cosine:
            rec, tgt = model.reconstruct(text_emb[sl], source[sl], feats)
            cos.append(torch.nn.functional.cosine_similarity(rec, tgt, dim=-1))
    return torch.cat(codes).numpy(), torch.cat(cos).numpy() if cosine else None


def fit_mrq(
    cfg: TrainConfig,
    corpus: WindowCorpus,
    text_emb: np.ndarray,
    text_dim: int,
    holdout: np.ndarray,
    progress: bool,
    rng: np.random.Generator | None = None,
) -> tuple[U2QTModel, list[dict], int, dict]:
    """Standardization statistics, k-means init and the MRQ-VAE training loop on one window corpus."""
    o, q, timings = cfg.optim, cfg.quantizer, {}
    torch.manual_seed(o.seed)
    names = [s.name for s in cfg.sources.sources]
    rng = rng or np.random.default_rng(o.seed)
    model = U2QTModel(
        ModelConfig(
            sources=names,
            tabular_features={k: v.shape[1] for k, v in corpus.features.items()},
            text_dim=text_dim,
            hidden_dim=q.hidden_dim,
            code_dim=q.code_dim,
            shared_levels=q.shared_levels,
            specific_levels=q.specific_levels,
            codebook_size=q.codebook_size,
            commitment=q.commitment,
            latent_norm=q.latent_norm,
        )
    )
    emb, source, features = corpus_tensors(corpus, text_emb)
    train_idx = torch.from_numpy(np.flatnonzero(~holdout))
    set_input_statistics(model, cfg, emb, source, features, holdout)

    t = time.perf_counter()
    sample = train_idx[torch.from_numpy(rng.permutation(len(train_idx))[: o.kmeans_sample])]
    with torch.no_grad():
        z = model.encoder(
            model.source_embedding(emb[sample], source[sample], {k: v[sample] for k, v in features.items()})
        )
    model.quantizer.init_kmeans(z, source[sample], o.seed)
    timings["kmeans_s"] = time.perf_counter() - t

    t = time.perf_counter()
    history, restarted = train_loop(model, o, emb, source, features, train_idx, progress)
    timings["train_s"] = time.perf_counter() - t
    if o.codebook_refit:
        t = time.perf_counter()
        refit_codebooks(
            model,
            emb,
            source,
            features,
            train_idx[torch.from_numpy(rng.permutation(len(train_idx)))[: o.refit_sample]],
            o.seed,
        )
        timings["refit_s"] = time.perf_counter() - t
    return model, history, restarted, timings


@torch.no_grad()
def refit_codebooks(model: U2QTModel, emb, source, features, rows: torch.Tensor, seed: int) -> None:
    """Residual k-means of the trained encoder's z over `rows`, level by level, in place of the trained
    codebooks. Gradient descent leaves codewords behind an encoder that keeps moving (the quantization loss
    rises through training, docs/eval/levers.md); refitted, the codes keep what z keeps. Windows of users the
    tokenizer never saw are quantized closer too, so this is not memorization (benchmarks/codebook_refit.py)."""
    z = torch.cat(
        [
            model.encoder(model.source_embedding(emb[r], source[r], {k: v[r] for k, v in features.items()}))
            for r in rows.split(8192)
        ]
    )
    model.quantizer.init_kmeans(z, source[rows], seed, park_spares=True)


def set_input_statistics(model: U2QTModel, cfg: TrainConfig, emb, source, features, holdout: np.ndarray) -> None:
    """Per-source standardization from the training windows: text embeddings centered and scaled to a mean
    squared norm of TEXT_TARGET_VARIANCE, tabular features to mean 0 and standard deviation 1."""
    names = [s.name for s in cfg.sources.sources]
    for i, spec in enumerate(cfg.sources.sources):
        rows = ((source == i) & torch.from_numpy(~holdout)).numpy()
        if spec.kind == "text" and rows.any():
            mean = emb[rows].mean(0)
            model.source_mean[i] = mean
            model.source_scale[i] = ((emb[rows] - mean) ** 2).sum(1).mean().sqrt() / TEXT_TARGET_VARIANCE**0.5
    for name, enc in model.tabular.items():
        rows = (source == names.index(name)) & torch.from_numpy(~holdout)
        enc.mean.copy_(features[name][rows].mean(0))
        enc.std.copy_(features[name][rows].std(0).clamp(min=1e-3))


def train_loop(model: U2QTModel, o, emb, source, features, train_idx, progress: bool) -> tuple[list[dict], int]:
    """The MRQ-VAE's optimization, with dead codes restarted every `restart_every` steps early on -> (per-epoch
    mean losses, codes restarted); leaves the model in eval mode."""
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    gen = torch.Generator().manual_seed(o.seed)
    steps_per_epoch = math.ceil(len(train_idx) / o.batch_size)
    total, step, restarted = o.epochs * steps_per_epoch, 0, 0
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=0.05 * o.lr)
        if o.schedule == "cosine"
        else None
    )
    history = []
    model.train()
    with tqdm(total=total, desc="train MRQ-VAE", unit="step", disable=not progress) as bar:
        for epoch in range(o.epochs):
            perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
            sums = np.zeros(3)
            for b in range(steps_per_epoch):
                idx = perm[b * o.batch_size : (b + 1) * o.batch_size]
                res = model(emb[idx], source[idx], {k: v[idx] for k, v in features.items()})
                opt.zero_grad(set_to_none=True)
                res.loss.backward()
                opt.step()
                if schedule:
                    schedule.step()
                step += 1
                if step % o.restart_every == 0 and step < o.restart_until * total:
                    moved = model.quantizer.restart_dead_codes(res.residuals, source[idx], o.dead_code_threshold, gen)
                    restarted += sum(len(rows) for rows in moved.values())
                    if o.reset_moments_on_restart:
                        clear_moments(opt, model.quantizer.codebooks, moved)
                sums += [res.loss.item(), res.recon_loss.item(), res.rq_loss.item()]
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{res.loss.item():.3f}", restarts=restarted, refresh=False)
            history.append(dict(zip(["loss", "recon", "rq"], (sums / steps_per_epoch).round(5).tolist(), strict=True)))
    model.eval()
    return history, restarted


def clear_moments(opt: torch.optim.Optimizer, codebooks, moved: dict[int, torch.Tensor]) -> None:
    """Zeroes AdamW's first and second moments of restarted codebook rows: left as they were, the next steps
    would push a fresh codeword along the gradient history of the dead one it replaced."""
    for level, rows in moved.items():
        state = opt.state.get(codebooks[level])
        for key in ("exp_avg", "exp_avg_sq"):
            if state and key in state:
                state[key][rows] = 0.0


def train(cfg: TrainConfig, events: pd.DataFrame, out: Path, progress: bool = True) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    o, timings = cfg.optim, {}
    torch.manual_seed(o.seed)
    torch.use_deterministic_algorithms(True)
    t = time.perf_counter()
    corpus = build_corpus(events, cfg.sources, progress)
    if len(corpus) == 0:
        raise ValueError("no windows: the events are empty after filtering")
    timings["windows_s"] = time.perf_counter() - t
    windows_per_user = float(corpus.windows.groupby("user_id")["window_start"].nunique().median())
    cfg = cfg.model_copy(
        update={
            "quantizer": cfg.quantizer.with_capacity_for(windows_per_user),
            "reader": cfg.reader.for_corpus(windows_per_user),
        }
    )

    t = time.perf_counter()
    info, text_emb, text_stats = embed_corpus(corpus, cfg, out, progress)
    timings["encode_s"] = time.perf_counter() - t

    names = [s.name for s in cfg.sources.sources]
    q = cfg.quantizer
    users = np.sort(corpus.windows["user_id"].unique())
    rng = np.random.default_rng(o.seed)
    n_hold = int(len(users) * o.holdout_fraction)
    held = set(rng.permutation(users)[:n_hold])
    holdout = corpus.windows["user_id"].isin(held).to_numpy()
    model, history, restarted, fit_timings = fit_mrq(cfg, corpus, text_emb, info.dim, holdout, progress, rng)
    timings.update(fit_timings)
    emb, source, features = corpus_tensors(corpus, text_emb)

    codes, recon_cos = encode_all(model, emb, source, features)
    save_checkpoint(out, model, cfg, info)
    np.savez_compressed(
        out / "windows.npz",
        codes=codes,
        source_index=source.numpy(),
        recon_cos=recon_cos,
        holdout=holdout,
        input_key=np.unique(corpus.input_keys(), return_inverse=True)[1],
        user_id=corpus.windows["user_id"].to_numpy(dtype=str),
        window_start=corpus.windows["window_start"].to_numpy(),
    )
    texts = []
    if cfg.reader.texts:
        # what export fits the served reader's event-text decoder to (model.decoded.TokenTexts)
        counts, texts = window_text_counts(events, corpus.windows, cfg.sources.period_s, np.inf, cfg.reader.texts)
        save_window_texts(out / WINDOW_TEXTS_FILE, counts, texts)
    pick = np.sort(rng.permutation(len(corpus))[:2000])
    np.savez_compressed(
        out / "verify_sample.npz",
        text_embedding=text_emb[pick],
        source_index=source.numpy()[pick],
        **{f"features_{k}": v[pick] for k, v in corpus.features.items()},
    )
    align_log, align_samples = [], 0
    if cfg.align.enabled:
        t = time.perf_counter()
        align_log, align_samples = align_stage(cfg, corpus, codes, events, model, info, out, progress)
        timings["align_s"] = time.perf_counter() - t
    report = {
        "config": cfg.model_dump(),
        "alignment": {"samples": align_samples, "losses_by_epoch": align_log},
        "users": int(len(users)),
        "holdout_users": n_hold,
        "windows_by_source": corpus.windows["source"].value_counts().to_dict(),
        # the window period's effect on a user: too few windows leave a reader little to read (docs/eval/levers.md)
        # all sources together: what chose the codebook capacity, when it was not set (QuantizerConfig)
        "median_active_windows_per_user": windows_per_user,
        "median_windows_per_user": {
            str(k): float(v)
            for k, v in corpus.windows.groupby(["source", "user_id"]).size().groupby("source").median().items()
        },
        "text_encoding": text_stats,
        "decoded_texts": len(texts),  # the kind=tokens reader's
        "window_events": window_event_stats(corpus.windows),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "dead_codes_restarted": restarted,
        "epochs": history,
        **summarize(
            codes, source.numpy(), corpus.input_keys(), recon_cos, holdout, names, q.shared_levels, q.codebook_size
        ),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    plot_utilization(report, out / "utilization.png")
    return report


def window_event_stats(windows) -> dict:
    """How many of the log's events the windows leave out, as the service would: repeated event ids, and events
    past the cap of MAX_WINDOW_EVENTS per window (model.windows.kept_events)."""
    logged, distinct = windows["logged_events"].to_numpy(), windows["distinct_events"].to_numpy()
    return {
        "windows": int(len(windows)),
        "cap": MAX_WINDOW_EVENTS,
        "windows_past_cap": int((distinct > MAX_WINDOW_EVENTS).sum()),
        "events_past_cap": int((distinct - windows["events"].to_numpy()).sum()),
        "repeated_event_ids": int((logged - distinct).sum()),
    }


def align_stage(cfg: TrainConfig, corpus, codes, events, model: U2QTModel, info, out: Path, progress: bool):
    """The alignment stage after the MRQ-VAE: the history model over the windows' tokens, saved beside the
    checkpoint -> (losses by epoch, samples)."""
    from u2qt.model.vocabulary import TokenVocabulary
    from u2qt.training.alignment import fit_alignment, save_history_model

    q = cfg.quantizer
    vocab = TokenVocabulary([s.name for s in cfg.sources.sources], q.shared_levels, q.specific_levels, q.codebook_size)
    source = corpus.windows["source_index"].to_numpy()
    history_model, align_log, align_samples = fit_alignment(
        cfg,
        corpus.windows,
        vocab.ids(source, codes),
        events,
        model.quantizer,
        vocab,
        out / "encoder",
        info,
        out / "cache",
        progress,
    )
    save_history_model(out / CHECKPOINT_DIR, history_model)
    return align_log, align_samples
