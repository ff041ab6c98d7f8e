"""Multi-scale alignment pretext tasks (paper 4.3, eq. 10-15) and how the history model learns from them.

token     eq. 10-11: causal h_k -> the codeword of token k+1, weighted cosine, w_k = 1 + k / tau_t
window    eq. 12: InfoNCE between two periodically matched views of one user's history (even and odd
          weeks of the same span), other users in the batch as negatives
semantic  eq. 13-14: InfoNCE between the user at t1 (history up to t1) and the text embedding of a
          template description of what they did in the following weeks (t2)
total     eq. 15: lambda_1 token + lambda_2 window + lambda_3 semantic
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from u2qt.model.history import HistoryConfig, HistoryModel
from u2qt.model.sequence import history_sequence
from u2qt.model.sources import SourcesConfig, window_index, windows_in
from u2qt.model.vocabulary import TokenVocabulary
from u2qt.model.windows import render_text_window
from u2qt.training.config import AlignConfig


def token_alignment_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, tau: float) -> torch.Tensor:
    """eq. 10-11. pred, target [B, K-1, D] (prediction at k, codeword of token k+1); valid [B, K-1]."""
    k = torch.arange(1, pred.shape[1] + 1, dtype=pred.dtype, device=pred.device)
    w = (1 + k / tau).unsqueeze(0) * valid.to(pred.dtype)
    cos = F.cosine_similarity(pred, target, dim=-1)
    return ((1 - cos) * w).sum() / w.sum().clamp(min=1e-9)


def info_nce(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """eq. 12 / 14: row i of `a` should match row i of `b` among all rows of `b`."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / tau
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))


@dataclass
class AlignmentSamples:
    ids: np.ndarray  # [N, T] the history up to t1
    level: np.ndarray
    age: np.ndarray
    view_a: tuple[np.ndarray, np.ndarray, np.ndarray]  # even weeks of the same span
    view_b: tuple[np.ndarray, np.ndarray, np.ndarray]  # odd weeks
    description: list[str]  # what the user did in (t1, t1 + future_weeks]
    user: np.ndarray


class EventColumns:
    """The events' columns as arrays, so describing thousands of spans needs no DataFrame slicing.
    `describe` is eq. 13's F(.): a template description of a span of a user's events, per source, rendered
    with the same window rendering as the tokenizer's input."""

    def __init__(self, events: pd.DataFrame):
        self.source = events["source"].to_numpy()
        self.text = events["text"].fillna("").astype(str).to_numpy() if "text" in events else None
        self.ts = events["ts"].to_numpy()
        self.amount = events["amount"].to_numpy(np.float64) if "amount" in events else None

    def describe(self, rows: np.ndarray, sources: SourcesConfig) -> str:
        parts = []
        for spec in sources.sources:
            r = rows[self.source[rows] == spec.name]
            if len(r) == 0:
                continue
            if spec.kind == "text":
                amounts = None if self.amount is None else self.amount[r]
                parts.append(f"{spec.name}: " + render_text_window(self.text[r], self.ts[r], amounts, spec.template))
            else:
                parts.append(f"{spec.name}: {len(r)} events")
        return "; ".join(parts) if parts else "no activity"


def build_samples(
    windows: pd.DataFrame,
    token_ids: np.ndarray,
    events: pd.DataFrame,
    sources: SourcesConfig,
    cfg: AlignConfig,
    hcfg: HistoryConfig,
    until: int | None = None,
    progress: bool = True,
) -> AlignmentSamples:
    """windows: user_id, source_index, window_start; token_ids [N, L]. Crops end every `crop_every_days`;
    `until` (a timestamp) keeps t2 before a cut-off."""
    period = sources.period_s
    span, future_span = windows_in(cfg.history_days, period), windows_in(cfg.future_days, period)
    crop_every = windows_in(cfg.crop_every_days, period)
    w_idx = window_index(windows["window_start"].to_numpy(), period)
    ev_idx = window_index(events["ts"].to_numpy(), period)
    ev_by_user = dict(_groups(events["user_id"].to_numpy()))
    cols = EventColumns(events)
    limit = None if until is None else window_index(np.array([until]), period)[0]
    rows = {k: [] for k in ("ids", "level", "age", "a", "b", "desc", "user")}
    src = windows["source_index"].to_numpy()
    for user, idx in tqdm(
        _groups(windows["user_id"].to_numpy()), desc="alignment samples", disable=not progress, leave=False
    ):
        uw = w_idx[idx]
        first, last = uw.min(), uw.max()
        if limit is not None:
            last = min(last, limit - future_span)
        uev = ev_by_user.get(user, np.zeros(0, np.int64))
        for end in range(first + 4, last + 1, crop_every):
            inside = idx[(uw < end) & (uw >= end - span)]
            if len(inside) == 0:
                continue
            future = uev[(ev_idx[uev] >= end) & (ev_idx[uev] < end + future_span)]
            seq = history_sequence(w_idx[inside], src[inside], token_ids[inside], hcfg.max_tokens, hcfg.max_age)
            even = inside[w_idx[inside] % 2 == 0]
            odd = inside[w_idx[inside] % 2 == 1]
            if len(even) == 0 or len(odd) == 0:
                continue
            rows["ids"].append(seq[0])
            rows["level"].append(seq[1])
            rows["age"].append(seq[2])
            half = hcfg.max_tokens // 2  # a view holds half of the span's windows
            rows["a"].append(history_sequence(w_idx[even], src[even], token_ids[even], half, hcfg.max_age))
            rows["b"].append(history_sequence(w_idx[odd], src[odd], token_ids[odd], half, hcfg.max_age))
            rows["desc"].append(cols.describe(np.sort(future), sources))
            rows["user"].append(user)

    def stack3(views):
        return tuple(np.stack(x) for x in zip(*views, strict=True))

    return AlignmentSamples(
        np.stack(rows["ids"]),
        np.stack(rows["level"]),
        np.stack(rows["age"]),
        stack3(rows["a"]),
        stack3(rows["b"]),
        rows["desc"],
        np.array(rows["user"]),
    )


def _groups(keys: np.ndarray):
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    bounds = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1], True])
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        yield sk[s], order[s:e]


def token_table(quantizer, vocabulary: TokenVocabulary) -> torch.Tensor:
    """[vocab, code_dim]: each token id's codeword in the trained MRQ-VAE (row 0, <pad>, is zero)."""
    table = torch.zeros(vocabulary.size, quantizer.dim)
    k = vocabulary.codebook_size
    with torch.no_grad():
        for lvl, off in enumerate(vocabulary.shared_offsets):
            table[off : off + k] = quantizer.codebooks[lvl][:k]
        for i, source in enumerate(vocabulary.sources):
            for j, off in enumerate(vocabulary.specific_offsets[source]):
                table[off : off + k] = quantizer.codebooks[vocabulary.shared_levels + j][i * k : (i + 1) * k]
    return table


def train_history_model(
    samples: AlignmentSamples,
    description_emb: np.ndarray,
    table: torch.Tensor,
    hcfg: HistoryConfig,
    cfg: AlignConfig,
    progress: bool = True,
) -> tuple[HistoryModel, list[dict]]:
    torch.manual_seed(cfg.seed)
    model = HistoryModel(hcfg)
    model.token_table.copy_(table)
    history: list[dict] = []
    if not cfg.tasks or cfg.epochs == 0:
        return model.eval(), history
    t = {k: torch.from_numpy(v) for k, v in (("ids", samples.ids), ("level", samples.level), ("age", samples.age))}
    va = [torch.from_numpy(x) for x in samples.view_a]
    vb = [torch.from_numpy(x) for x in samples.view_b]
    desc = torch.from_numpy(description_emb.astype(np.float32))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(samples.ids)
    steps = max(1, n // cfg.batch_size)
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps))
    model.train()
    with tqdm(total=epochs * steps, desc="align history model", unit="step", disable=not progress) as bar:
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            sums: dict[str, float] = {}
            for s in range(steps):
                b = perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]
                losses = alignment_losses(
                    model, cfg, t["ids"][b], t["level"][b], t["age"][b], [x[b] for x in va], [x[b] for x in vb], desc[b]
                )
                total = sum(cfg.weights[k] * v for k, v in losses.items())
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v.item() / steps
                bar.update(1)
            history.append({k: round(v, 4) for k, v in sums.items()})
            bar.set_postfix(**{k: f"{v:.3f}" for k, v in sums.items()}, refresh=False)
    return model.eval(), history


def alignment_losses(model: HistoryModel, cfg: AlignConfig, ids, level, age, view_a, view_b, desc_emb) -> dict:
    out = {}
    h = model.hidden(ids, level, age)
    if "token" in cfg.tasks:
        valid = (ids[:, 1:] != 0) & (ids[:, :-1] != 0)
        out["token"] = token_alignment_loss(
            model.token_head(h[:, :-1]), model.token_table[ids[:, 1:]], valid, cfg.tau_token
        )
    if "window" in cfg.tasks:
        out["window"] = info_nce(model(*view_a), model(*view_b), cfg.tau_window)
    if "semantic" in cfg.tasks:
        out["semantic"] = info_nce(model.semantic_head(model.pool(h, ids)), desc_emb, cfg.tau_semantic)
    return out


@torch.no_grad()
def embed_users(model: HistoryModel, ids: np.ndarray, level: np.ndarray, age: np.ndarray, chunk: int = 256):
    out = [
        model(
            torch.from_numpy(ids[s : s + chunk]),
            torch.from_numpy(level[s : s + chunk]),
            torch.from_numpy(age[s : s + chunk]),
        ).numpy()
        for s in range(0, len(ids), chunk)
    ]
    return np.concatenate(out) if out else np.zeros((0, model.config.d_model), np.float32)


HISTORY_WEIGHTS = "history.safetensors"
HISTORY_CONFIG = "history.json"


def fit_alignment(
    cfg,
    windows: pd.DataFrame,
    token_ids: np.ndarray,
    events: pd.DataFrame,
    quantizer,
    vocabulary: TokenVocabulary,
    encoder_dir,
    encoder_info,
    cache_dir,
    progress: bool = True,
) -> tuple[HistoryModel, list[dict], int]:
    """The alignment stage of `u2qt train`: samples from every user's token history, descriptions embedded by
    the same ONNX text encoder, then the history model trained on cfg.align's tasks."""
    from u2qt.training.embeddings import embed_texts_cached

    a = cfg.align
    hcfg = HistoryConfig(
        vocab_size=vocabulary.size,
        code_dim=quantizer.dim,
        levels=vocabulary.levels,
        text_dim=encoder_info.dim,
        d_model=a.d_model,
        layers=a.layers,
    )
    samples = build_samples(windows, token_ids, events, cfg.sources, a, hcfg, progress=progress)
    desc, _ = embed_texts_cached(samples.description, encoder_dir, encoder_info, cache_dir, 64, progress)
    model, log = train_history_model(samples, desc, token_table(quantizer, vocabulary), hcfg, a, progress)
    return model, log, len(samples.ids)


def save_history_model(directory, model: HistoryModel) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, directory / HISTORY_WEIGHTS)
    (directory / HISTORY_CONFIG).write_text(model.config.model_dump_json(indent=2))


def load_history_model(directory) -> HistoryModel | None:
    from safetensors.torch import load_file

    if not (directory / HISTORY_WEIGHTS).is_file():
        return None
    model = HistoryModel(HistoryConfig.model_validate_json((directory / HISTORY_CONFIG).read_text()))
    model.load_state_dict(load_file(directory / HISTORY_WEIGHTS))
    return model.eval()
