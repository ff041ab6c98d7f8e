"""`u2qt eval`: how good the tokens are, measured with linear probes on data a reader can check.

Everything a representation sees comes from before the cut-off; the future-behaviour labels come from after
it. The tokenizers compared here are trained by this harness on the pre-cut-off windows only (the encoder and
its embedding cache are the training directory's), so no variant gets to see the period it is judged on.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict
from tqdm.auto import tqdm

from u2qt.model.decoded import SoftCounts, codeword_sums, pool_user, pooled_width
from u2qt.model.entries import MAX_WINDOW_EVENTS, PackedEntries
from u2qt.model.fallback import assign_fallback, collision_rate, history_digest
from u2qt.model.history import HistoryConfig
from u2qt.model.sequence import batch_sequences
from u2qt.model.sources import SourcesConfig, window_index, windows_in
from u2qt.model.vocabulary import TokenVocabulary
from u2qt.training.alignment import build_samples, embed_users, token_table, train_history_model
from u2qt.training.config import AlignConfig, TrainConfig
from u2qt.training.corpus import WindowCorpus, build_corpus
from u2qt.training.embeddings import embed_texts_cached
from u2qt.training.eval_report import BASELINE, CONTINUOUS, CONTINUOUS_TEXTS, DECODED, LATENT
from u2qt.training.event_texts import TextDecoder, fit_token_texts, window_text_counts
from u2qt.training.metrics import collision_stats
from u2qt.training.probes import PROBE_CS, probe_seeds, signal_retention
from u2qt.training.train import corpus_tensors, encode_all, fit_mrq, load_checkpoint


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cutoff: str = "2017-10-01"
    history_days: int = 180  # the representation span before the cut-off: the paper's 180 days
    seeds: list[int] = [0, 1, 2]
    probe_cs: list[float] = list(PROBE_CS)  # one C: that C for every probe; several: chosen per split by CV
    tokenizer_epochs: int = 10
    align: AlignConfig = AlignConfig()
    ctr_categories: int = 100
    ablations: bool = True
    min_users: int = 50  # a task with fewer labelled users (or one class) is left out


@dataclass
class Tokenized:
    name: str
    vocabulary: TokenVocabulary
    codes: np.ndarray  # [n_windows of the sub-corpus, L]
    rows: np.ndarray  # indices into the full corpus
    source_index: np.ndarray  # per row, into vocabulary.sources
    model: object


def subset(corpus: WindowCorpus, text_emb: np.ndarray, rows: np.ndarray, sources: SourcesConfig, keep: list[str]):
    keep_rows = rows[corpus.windows["source"].to_numpy()[rows] != ""]
    keep_rows = keep_rows[np.isin(corpus.windows["source"].to_numpy()[keep_rows], keep)]
    w = corpus.windows.iloc[keep_rows].reset_index(drop=True).copy()
    w["source_index"] = w["source"].map({s: i for i, s in enumerate(keep)})
    feats = {k: v[keep_rows] for k, v in corpus.features.items() if k in keep}
    sub_sources = SourcesConfig(window=sources.window, sources=[s for s in sources.sources if s.name in keep])
    return WindowCorpus(w, feats), text_emb[keep_rows], keep_rows, sub_sources


def fit_variant(name, base: TrainConfig, corpus, text_emb, pre_rows, keep, shared, specific, epochs, progress):
    sub, emb, rows, srcs = subset(corpus, text_emb, pre_rows, base.sources, keep)
    cfg = base.model_copy(deep=True)
    cfg.sources = srcs
    cfg.quantizer.shared_levels, cfg.quantizer.specific_levels = shared, specific
    cfg.optim.epochs = epochs
    model, *_ = fit_mrq(cfg, sub, emb, emb.shape[1], np.zeros(len(sub), bool), progress)
    e, s, f = corpus_tensors(sub, emb)
    with torch.no_grad():
        codes, _ = encode_all(model, e, s, f, cosine=False)
    vocab = TokenVocabulary(keep, shared, specific, cfg.quantizer.codebook_size)
    return Tokenized(name, vocab, codes, rows, sub.windows["source_index"].to_numpy(), model)


def bag_of_tokens(tok: Tokenized, corpus: WindowCorpus, span: np.ndarray, users: list[str]) -> np.ndarray:
    in_span = span[tok.rows]
    src = corpus.windows["source"].to_numpy()[tok.rows][in_span]
    src_idx = np.array([tok.vocabulary.sources.index(x) for x in src], dtype=np.int64)
    ids = tok.vocabulary.ids(src_idx, tok.codes[in_span])
    uid = corpus.windows["user_id"].to_numpy()[tok.rows][in_span]
    pos = {u: i for i, u in enumerate(users)}
    x = np.zeros((len(users), tok.vocabulary.size), np.float32)
    for u, row in zip(uid, ids, strict=True):
        if u in pos:
            np.add.at(x[pos[u]], row, 1.0)
    return np.log1p(x)


def pooled(
    values: np.ndarray,
    d: EvalData,
    soft_counts: int | None = None,
    texts: np.ndarray | None = None,
    fit_soft_counts=SoftCounts.fit,
) -> np.ndarray:
    """`values` of every corpus row -> [users, ...]: each user's windows in the span pooled as the service pools
    their decoded tokens (model.decoded.pool_user, read at the cut-off, event counts as the history store keeps
    them), with the soft counts of the checkpoint's reader (`soft_counts` features instead, where given; 0: the
    mean and the activity only), standardized by the windows before the cut-off as export standardizes them by
    the training windows; with `texts` (each corpus row's decoded event-text counts, decoded_token_texts), their
    per-user log sums after. `fit_soft_counts(vectors, features, seed)` fits the soft counts (a benchmark's
    variant of SoftCounts.fit, where given)."""
    reader = d.ck.train_config.reader
    features = (reader.soft_counts or 0) if soft_counts is None else soft_counts
    src = d.corpus.windows["source_index"].to_numpy()
    counter = fit_soft_counts(values[d.pre_rows], features, reader.seed) if features else None
    period = d.sources.period_s
    now, horizon = window_index(d.cut_s, period), round((d.hi - d.lo) / period)  # the span: whole windows
    counts = np.minimum(d.corpus.windows["events"].to_numpy(), MAX_WINDOW_EVENTS)
    n_texts = 0 if texts is None else texts.shape[1]
    out = np.zeros((len(d.users), pooled_width(len(d.names), values.shape[1], features, n_texts)), np.float32)
    for i, user in enumerate(d.users):
        rows = d.by_user[user]
        user_texts = None if texts is None else texts[rows]
        args = (len(d.names), now, horizon, counter, user_texts)
        out[i] = pool_user(values[rows], src[rows], counts[rows], d.w_idx[rows], *args)
    return out


def decoded_window_texts(values: np.ndarray, d: EvalData, counts) -> np.ndarray | None:
    """[corpus rows, texts]: each window's vector decoded to its counts of the event texts, the continuous
    counterpart of decoded_token_texts (a ridge map of the vector, training/event_texts.py), fitted on the windows
    before the cut-off that hold a text; zeros for a source none of them is of; None where there is none."""
    has_text = np.asarray(counts.getnnz(axis=1) > 0)
    fit = d.pre_rows[has_text[d.pre_rows]]
    if len(fit) == 0:
        return None
    decoder = TextDecoder.fit(values, counts, fit)
    src = d.corpus.windows["source_index"].to_numpy()
    return decoder.predict(values) * np.isin(src, src[fit])[:, None]


def decoded_token_texts(tok: Tokenized, d: EvalData, counts) -> np.ndarray | None:
    """[corpus rows, texts]: each window's tokens decoded to its counts of the event texts as the service decodes
    them (model.decoded.TokenTexts), the decoder fitted as u2qt export fits it (training/event_texts.py), on the
    windows before the cut-off; None where no window before it holds one of the texts."""
    pre = np.flatnonzero(np.isin(tok.rows, d.pre_rows))
    if counts[tok.rows[pre]].nnz == 0:
        return None
    ids = tok.vocabulary.ids(tok.source_index, tok.codes)
    decoder = fit_token_texts(ids, tok.source_index, counts[tok.rows], pre, tok.vocabulary.size, len(d.names))
    out = np.zeros((len(d.corpus), counts.shape[1]), np.float32)
    out[tok.rows] = decoder(ids, tok.source_index)
    return out


def decoded_event_texts(values, d: EvalData, counts=None) -> np.ndarray:
    """[users, texts]: each user's windows in the span decoded to their counts of the event texts the raw baseline
    counts (training/event_texts.py; `counts`: other targets, per corpus row), the decoder fitted on the windows
    before the cut-off. `values`: window vectors, or any design a TextDecoder takes (a window's tokens one-hot)."""
    if counts is None:
        counts, _ = window_text_counts(d.events, d.corpus.windows, d.sources.period_s, d.cut_s, BASELINE_TEXTS)
    with_text = counts.getnnz(axis=1) > 0
    fit_rows = d.pre_rows[with_text[d.pre_rows]]
    if len(fit_rows) == 0:
        return np.zeros((len(d.users), 0), np.float32)
    decoder = TextDecoder.fit(values, counts, fit_rows)
    rows = (np.asarray(d.by_user[u], dtype=np.int64) for u in d.users)
    return decoder.user_counts(values, [r[with_text[r]] for r in rows])


BASELINE_TEXTS = 1000  # the raw baseline's vocabulary: its most frequent event texts


def raw_baseline(events: pd.DataFrame, sources: SourcesConfig, users: list[str], lo, hi, top: int = BASELINE_TEXTS):
    """What a team would build by hand from the raw logs: a bag of event texts (product categories, campaign
    types, titles), tabular attribute sums, and per source its activity (events, active days, days since the
    last event before the cut-off)."""
    ev = events[(events["ts"] >= lo) & (events["ts"] < hi) & events["user_id"].isin(users)]
    parts = []
    text = ev[ev["text"].notna()] if "text" in ev else ev.iloc[:0]
    if len(text):
        vocab = text["text"].value_counts().index[:top]
        t = text[text["text"].isin(vocab)]
        parts.append(pd.crosstab(t["user_id"], t["text"]).reindex(index=users, columns=vocab, fill_value=0))
    for spec in sources.sources:
        src = ev[ev["source"] == spec.name]
        if spec.kind == "tabular":
            agg = src.groupby("user_id")[spec.attributes].agg(["sum", "mean", "count"])
            parts.append(agg.reindex(users).fillna(0))
        by = src.assign(day=src["ts"] // 86400).groupby("user_id")
        activity = pd.DataFrame(
            {"events": by.size(), "active_days": by["day"].nunique(), "days_since_last": (hi - by["ts"].max()) / 86400}
        )
        never = (hi - lo) / 86400  # a user with no event of the source: as if the last was at the span's start
        parts.append(activity.reindex(users).fillna({"events": 0, "active_days": 0, "days_since_last": never}))
    x = pd.concat(parts, axis=1).to_numpy(np.float64) if parts else np.zeros((len(users), 1))
    return np.sign(x) * np.log1p(np.abs(x))


def cj_labels(cutoff: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Complete Journey tasks: household profile (demographics) and Q4 behaviour after the cut-off.
    -> (labels [user x task] with NaN where unknown, demographics one-hot for the CTR check)."""
    from u2qt.training.completejourney import data_dir

    d = data_dir()
    demo = pd.read_parquet(d / "demographics.parquet")
    demo["user_id"] = demo["household_id"].astype(str)
    demo = demo.set_index("user_id")
    income_low = demo["income"].astype(str).str.extract(r"^(\d+)")[0].astype(float)
    profile = pd.DataFrame(
        {
            "age >= 45": demo["age"].astype(str).isin(["45-54", "55-64", "65+"]).astype(float),
            "income >= 50K": (income_low >= 50).astype(float),
            "has kids": (demo["kids_count"].astype(str) != "0").astype(float),
            "homeowner": demo["home_ownership"].map(lambda v: np.nan if pd.isna(v) else float(v == "Homeowner")),
        }
    )
    tx = pd.read_parquet(d / "transactions.parquet", columns=["household_id", "product_id", "transaction_timestamp"])
    products = pd.read_parquet(d / "products.parquet", columns=["product_id", "department"])
    tx = tx.merge(products, on="product_id", how="left")
    ts = pd.to_datetime(tx["transaction_timestamp"])
    if ts.dt.tz is None:
        ts = ts.dt.tz_localize("UTC")
    before, after = tx[ts < cutoff], tx[ts >= cutoff]
    active = before["household_id"].astype(str).unique()
    bought = after.groupby("department")["household_id"].apply(lambda s: set(s.astype(str)))
    rate = bought.map(lambda s: len(s & set(active)) / len(active))
    picks = (rate - 0.5).abs().sort_values().index[:3]
    future = pd.DataFrame(index=pd.Index(active, name="user_id"))
    for dep in sorted(picks):
        future[f"buys {dep.lower()} in Q4"] = future.index.isin(bought[dep]).astype(float)
    red = pd.read_parquet(d / "coupon_redemptions.parquet")
    red_ts = pd.to_datetime(red["redemption_date"])
    red_ts = red_ts.dt.tz_localize("UTC") if red_ts.dt.tz is None else red_ts
    redeemers = set(red.loc[red_ts >= cutoff, "household_id"].astype(str))
    future["redeems a coupon in Q4"] = future.index.isin(redeemers).astype(float)
    labels = future.join(profile, how="outer")
    onehot = pd.get_dummies(demo.drop(columns=["household_id"]).astype(str)).astype(np.float32)
    return labels, onehot


def storage_per_user(events, corpus, span, users, emb_dim, entries: PackedEntries, lo, hi) -> dict:
    ev = events[(events["ts"] >= lo) & (events["ts"] < hi) & events["user_id"].isin(users)]
    raw = ev.to_json(orient="records", lines=True)
    windows = int(span.sum()) / len(users)
    token_bytes = windows * entries.size  # the token store's packed entry
    return {
        "raw events (canonical JSON)": len(raw.encode()) / len(users),
        f"continuous window embeddings (float32 x {emb_dim})": windows * emb_dim * 4,
        f"tokens ({entries.levels} x {entries.bits}-bit codes + window index, as stored in Redis)": token_bytes,
        "windows per user": windows,
    }


@dataclass
class EvalData:
    """What every step of `u2qt eval` reads: the checkpoint, the events and labels, the window corpus with its
    text embeddings, and the span (the windows of the history_days before the cut-off) and users it judges."""

    ck: object
    events: pd.DataFrame
    labels: pd.DataFrame
    onehot: pd.DataFrame | None
    corpus: WindowCorpus
    text_emb: np.ndarray
    cut_s: int
    span: np.ndarray  # corpus rows in the span
    pre_rows: np.ndarray  # corpus rows wholly before the cut-off
    users: list[str]
    lo: float  # the span in unix seconds, as normalized events hold them
    hi: float
    w_idx: np.ndarray  # every corpus row's window index
    by_user: dict[str, list[int]]  # user -> corpus rows in the span

    @property
    def sources(self) -> SourcesConfig:
        return self.ck.train_config.sources

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources.sources]


def run_eval(
    train_dir: Path,
    out: Path,
    cfg: EvalConfig,
    events: pd.DataFrame | None = None,
    labels: pd.DataFrame | None = None,
    progress: bool = True,
) -> dict:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    d = prepare(train_dir, cfg, events, labels, progress)
    toks = fit_tokenizers(d, cfg, progress)
    reps, src_emb = token_representations(d, toks)
    align_log = history_representations(d, cfg, toks["MRQ-VAE"], train_dir, reps, progress)
    results = probe_all(d, reps, cfg, progress)
    entries = PackedEntries(toks["MRQ-VAE"].vocabulary.levels, d.ck.train_config.quantizer.codebook_size)
    q = toks["MRQ-VAE"]
    report = {
        "config": cfg.model_dump(),
        "train_dir": str(train_dir),
        "reader": d.ck.train_config.reader.model_dump(),  # how window vectors are pooled (pooled)
        "users": len(d.users),
        "windows in span": int(d.span.sum()),
        "tasks": {
            t: {
                "users": int(d.labels.reindex(d.users)[t].notna().sum()),
                "positive rate": float(d.labels.reindex(d.users)[t].mean()),
            }
            for t in results
        },
        "results": results,
        "retention": signal_retention(results, BASELINE) if results else {},
        "storage_bytes_per_user": storage_per_user(
            d.events, d.corpus, d.span, d.users, d.ck.encoder.dim, entries, d.lo, d.hi
        ),
        "collisions": user_collisions(d, q, entries, out),
        "ctr": ctr_check(d.events, d.corpus, q, d.span, d.users, d.cut_s, d.onehot, cfg)
        if d.onehot is not None
        else {},
        "alignment_losses": align_log,
        "utilization": {name: level_usage(t) for name, t in toks.items()},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    from u2qt.training.eval_report import write_report

    span_rows = np.flatnonzero(d.span)
    write_report(report, out, src_emb[span_rows], d.corpus.windows["source"].to_numpy()[span_rows], toks)
    return report


def prepare(train_dir: Path, cfg: EvalConfig, events, labels, progress: bool) -> EvalData:
    """Events (default: The Complete Journey) and labels (default: its demographics and Q4 behaviour), the window
    corpus and its text embeddings (from the training directory's cache), the span and the users with labels."""
    ck = load_checkpoint(train_dir)
    sources = ck.train_config.sources
    cutoff = pd.Timestamp(cfg.cutoff, tz="UTC")
    onehot = None
    if events is None:
        from u2qt.training.completejourney import load_events
        from u2qt.training.events import normalize_events

        events = normalize_events(load_events(), sources)
    if labels is None:  # The Complete Journey's own tasks (its households, its demographics)
        labels, onehot = cj_labels(cutoff)
    period = sources.period_s
    corpus = build_corpus(events, sources, progress)
    text = (corpus.windows["text"] != "").to_numpy()
    text_emb = np.zeros((len(corpus), ck.encoder.dim), np.float32)
    text_emb[text], _ = embed_texts_cached(
        corpus.windows.loc[text, "text"].tolist(), train_dir / "encoder", ck.encoder, train_dir / "cache", 64, progress
    )
    cut_s = int(cutoff.timestamp())
    starts = corpus.windows["window_start"].to_numpy()
    pre = starts + period <= cut_s
    span_s = windows_in(cfg.history_days, period) * period  # whole windows
    span = pre & (starts >= cut_s - span_s)
    users = sorted(set(corpus.windows.loc[span, "user_id"]) & set(labels.index))
    by_user: dict[str, list[int]] = {}
    for r in np.flatnonzero(span):
        by_user.setdefault(corpus.windows["user_id"].iat[r], []).append(r)
    return EvalData(
        ck,
        events,
        labels,
        onehot,
        corpus,
        text_emb,
        cut_s,
        span,
        np.flatnonzero(pre),
        users,
        cut_s - span_s,
        cut_s,
        window_index(starts, period),
        by_user,
    )


def fit_tokenizers(d: EvalData, cfg: EvalConfig, progress: bool) -> dict[str, Tokenized]:
    """MRQ-VAE, shared-only, specific-only and (ablations) MRQ-VAE without each source, on pre-cut-off windows."""
    base, names = d.ck.train_config, d.names
    variants = {"MRQ-VAE": (names, base.quantizer.shared_levels, base.quantizer.specific_levels)}
    levels = base.quantizer.shared_levels + base.quantizer.specific_levels
    variants["RQ-VAE, shared levels only"] = (names, levels, 0)
    variants["specific levels only"] = (names, 0, levels)
    if cfg.ablations:
        for s in names:
            variants[f"MRQ-VAE without {s}"] = ([x for x in names if x != s], *variants["MRQ-VAE"][1:])
    return {
        name: fit_variant(name, base, d.corpus, d.text_emb, d.pre_rows, keep, sh, sp, cfg.tokenizer_epochs, False)
        for name, (keep, sh, sp) in tqdm(variants.items(), desc="tokenizers", disable=not progress)
    }


def token_representations(d: EvalData, toks: dict[str, Tokenized]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The raw-data baseline, the continuous window embeddings pooled, and a bag of tokens per tokenizer ->
    (representations by name, the MRQ-VAE's source embeddings of every window)."""
    mrq = toks["MRQ-VAE"]
    reps: dict[str, np.ndarray] = {BASELINE: raw_baseline(d.events, d.sources, d.users, d.lo, d.hi)}
    e, s, f = corpus_tensors(d.corpus, d.text_emb)
    step = 8192
    with torch.no_grad():
        src_emb = torch.cat(
            [
                mrq.model.source_embedding(e[i : i + step], s[i : i + step], {k: v[i : i + step] for k, v in f.items()})
                for i in range(0, len(s), step)
            ]
        )
        latent = torch.cat([mrq.model.encoder(src_emb[i : i + step]) for i in range(0, len(s), step)])
    cont, period = src_emb.numpy(), d.sources.period_s
    # the raw baseline's per-text log counts, read back from the same vectors (docs/eval/levers.md); none where no
    # window before the cut-off holds an event text (every source tabular)
    counts, _ = window_text_counts(d.events, d.corpus.windows, period, d.cut_s, BASELINE_TEXTS)
    texts = decoded_event_texts(cont, d, counts)
    if texts.shape[1]:
        reps[CONTINUOUS_TEXTS] = np.hstack([pooled(cont, d, soft_counts=0), texts])
    # the continuous, latent and decoded vectors each read as GET /users/{id}/embedding?kind=tokens reads decoded
    # tokens (model/decoded.py): the checkpoint's soft counts and its decoded event texts, from the vector where
    # there are no tokens to decode them from
    top = d.ck.train_config.reader.texts
    if top and top != BASELINE_TEXTS:
        counts, _ = window_text_counts(d.events, d.corpus.windows, period, d.cut_s, top)
    reps[CONTINUOUS] = pooled(cont, d, texts=decoded_window_texts(cont, d, counts) if top else None)
    # the quantizer's input: what it keeps of the continuous embeddings tells the projection's loss from the codes'
    lat = latent.numpy()
    reps[LATENT] = pooled(lat, d, texts=decoded_window_texts(lat, d, counts) if top else None)
    for name, tok in toks.items():
        reps[f"bag of tokens: {name}"] = bag_of_tokens(tok, d.corpus, d.span, d.users)
    token_texts = decoded_token_texts(mrq, d, counts) if top else None
    reps[DECODED] = pooled(decoded_tokens(mrq, len(d.corpus)), d, texts=token_texts)
    return reps, src_emb.numpy()


def decoded_tokens(tok: Tokenized, n_rows: int) -> np.ndarray:
    """Each window's tokens decoded to their codeword sum (ResidualQuantizer.decode), rows of the full corpus
    (zeros where the tokenizer has no window)."""
    q = tok.model.quantizer
    z = np.zeros((n_rows, q.dim), np.float32)
    tables = [cb.detach().numpy() for cb in q.codebooks]
    z[tok.rows] = codeword_sums(tables, q.shared_levels, q.codebook_size, tok.codes, tok.source_index)
    return z


def history_representations(
    d: EvalData, cfg: EvalConfig, mrq: Tokenized, train_dir: Path, reps: dict, progress: bool
) -> dict[str, list]:
    """The history model over MRQ-VAE tokens, without and with the pretext tasks (Table 5), added to `reps`
    -> the alignment losses by variant."""
    levels = mrq.vocabulary.levels
    full_ids = np.zeros((len(d.corpus), levels), np.int64)
    src_all = d.corpus.windows["source_index"].to_numpy()
    full_ids[mrq.rows] = mrq.vocabulary.ids(src_all[mrq.rows], mrq.codes)
    hcfg = HistoryConfig(
        vocab_size=mrq.vocabulary.size,
        code_dim=d.ck.train_config.quantizer.code_dim,
        levels=levels,
        text_dim=d.ck.encoder.dim,
        d_model=cfg.align.d_model,
        layers=cfg.align.layers,
    )
    pre_w = d.corpus.windows.iloc[d.pre_rows]
    pre_events = d.events[d.events["ts"] < d.cut_s]
    samples = build_samples(
        pre_w, full_ids[d.pre_rows], pre_events, d.sources, cfg.align, hcfg, until=d.cut_s, progress=progress
    )
    desc_emb, _ = embed_texts_cached(
        samples.description, train_dir / "encoder", d.ck.encoder, train_dir / "cache", 64, progress
    )
    table = token_table(mrq.model.quantizer, mrq.vocabulary)
    w_idx, by_user = d.w_idx, d.by_user
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, levels), np.int64))
    seq = batch_sequences(
        [(w_idx[by_user[u]], src_all[by_user[u]], full_ids[by_user[u]]) if u in by_user else empty for u in d.users],
        hcfg.max_tokens,
        hcfg.max_age,
    )
    align_log = {}
    for label, tasks in (
        ("no pretext task", []),
        ("S", ["semantic"]),
        ("S+T", ["semantic", "token"]),
        ("S+T+W", ["semantic", "token", "window"]),
    ):
        acfg = cfg.align.model_copy(update={"tasks": tasks})
        model, log = train_history_model(samples, desc_emb, table, hcfg, acfg, progress)
        align_log[label] = log
        reps[f"history model: {label}"] = embed_users(model, *seq)
    return align_log


def probe_all(d: EvalData, reps: dict[str, np.ndarray], cfg: EvalConfig, progress: bool) -> dict[str, dict]:
    """task -> representation -> probe scores; a task with too few labelled users, or one class, is left out."""
    results: dict[str, dict[str, dict]] = {}
    for task in d.labels.columns:
        y = d.labels.reindex(d.users)[task]
        keep = y.notna().to_numpy()
        yk = y[keep].to_numpy().astype(int)
        if keep.sum() < cfg.min_users or yk.min() == yk.max():
            continue
        results[task] = {}
        for rname, x in tqdm(reps.items(), desc=f"probe {task}", disable=not progress, leave=False):
            results[task][rname] = probe_seeds(x[keep], yk, cfg.seeds, tuple(cfg.probe_cs))
    return results


def user_collisions(d: EvalData, mrq: Tokenized, entries: PackedEntries, out: Path) -> dict:
    """Collisions of users' full histories in the span, before and after the fallback token (eq. 9), with the
    service's own definition of "identical" (history_digest over the entries the store would hold) and of
    engagement (every event accepted for the user; here: before the cut-off). Writes fallback.json."""
    src_all = d.corpus.windows["source_index"].to_numpy()
    w_idx, by_user = d.w_idx, d.by_user
    engagement = d.events[d.events["ts"] < d.hi].groupby("user_id").size()
    digests = {u: user_digest(by_user[u], w_idx, src_all, mrq, entries, len(d.names)) for u in d.users if u in by_user}
    fb = assign_fallback(digests, engagement.to_dict())
    (out / "fallback.json").write_text(json.dumps(fb, indent=0, sort_keys=True))
    return {
        "users": len(digests),
        "before fallback": collision_rate(digests),
        "after fallback": collision_rate({u: (g, fb.get(u, 0)) for u, g in digests.items()}),
        "window tuples (distinct inputs, same tokens)": window_collisions(d.corpus, mrq, d.span),
    }


def level_usage(tok: Tokenized) -> list[float]:
    """Share of each level's codes used (a specific level counts every source's block)."""
    k, v = tok.vocabulary.codebook_size, tok.vocabulary
    return [
        len(np.unique(tok.codes[:, lvl])) / k
        if lvl < v.shared_levels
        else len(np.unique(tok.source_index * k + tok.codes[:, lvl])) / (len(v.sources) * k)
        for lvl in range(v.levels)
    ]


def user_digest(rows, w_idx, src_all, tok: Tokenized, entries: PackedEntries, n_sources: int) -> str:
    """The history_digest of one user's windows `rows` (corpus rows), as the store would hold them."""
    codes_of = dict(zip(tok.rows.tolist(), tok.codes, strict=True))
    per_source = []
    for s in range(n_sources):
        mine = sorted((r for r in rows if src_all[r] == s and r in codes_of), key=lambda r: w_idx[r])
        per_source.append(entries.pack(w_idx[mine], np.stack([codes_of[r] for r in mine])) if mine else [])
    return history_digest(per_source)


def window_collisions(corpus: WindowCorpus, tok: Tokenized, span: np.ndarray) -> float:
    """training.metrics.collision_stats (distinct inputs of a source sharing a token tuple) over the windows in
    the span: the same window-level figure `u2qt train` and `u2qt inspect` report."""
    in_span = span[tok.rows]
    return collision_stats(
        tok.codes[in_span], tok.source_index[in_span], corpus.input_keys()[tok.rows][in_span], tok.vocabulary.sources
    )["overall"]


def ctr_check(events, corpus, tok, span, users, cutoff: float, onehot, cfg) -> dict:
    """Appendix C / Table 8 on public data: will a household buy from a product category next quarter? A
    gradient-boosted ranker on profile features + the category, with and without the user's tokens."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    prof_users = sorted(set(users) & set(onehot.index))
    purchases = events[events["source"] == "purchases"]
    before = purchases[(purchases["ts"] < cutoff) & purchases["user_id"].isin(prof_users)]
    after = purchases[(purchases["ts"] >= cutoff) & purchases["user_id"].isin(prof_users)]
    cats = before.groupby("text")["user_id"].nunique().sort_values(ascending=False).index[: cfg.ctr_categories]
    bought = set(zip(after["user_id"], after["text"], strict=True))
    bag = bag_of_tokens(tok, corpus, span, prof_users)
    svd = TruncatedSVD(32, random_state=0).fit_transform(bag)
    prof = onehot.reindex(prof_users).to_numpy(np.float32)
    results = {"with tokens": [], "profile only": []}
    for seed in cfg.seeds:
        tr_u, te_u = train_test_split(np.arange(len(prof_users)), test_size=0.3, random_state=seed)
        for name, user_x in (("profile only", prof), ("with tokens", np.hstack([prof, svd]))):

            def pairs(idx, user_x=user_x):
                x = np.repeat(user_x[idx], len(cats), 0)
                c = np.tile(np.arange(len(cats)), len(idx))[:, None].astype(np.float32)
                y = np.array([(prof_users[i], cats[j]) in bought for i in idx for j in range(len(cats))], int)
                return np.hstack([x, c]), y

            xtr, ytr = pairs(tr_u)
            xte, yte = pairs(te_u)
            clf = HistGradientBoostingClassifier(
                categorical_features=[xtr.shape[1] - 1], max_iter=200, random_state=seed
            ).fit(xtr, ytr)
            score = clf.predict_proba(xte)[:, 1].reshape(len(te_u), len(cats))
            truth = yte.reshape(len(te_u), len(cats))
            hr = {}
            for k in (10, 20):
                top = np.argsort(-score, 1)[:, :k]
                hits = np.take_along_axis(truth, top, 1).sum(1)
                has = truth.sum(1) > 0
                hr[k] = float((hits[has] / np.minimum(k, truth.sum(1)[has])).mean())
            results[name].append((roc_auc_score(yte, score.reshape(-1)), hr[10], hr[20]))
    return {
        name: {
            m: (float(np.mean([r[i] for r in rs])), float(np.std([r[i] for r in rs])))
            for i, m in enumerate(("AUC", "HR@10", "HR@20"))
        }
        for name, rs in results.items()
    } | {"users": len(prof_users), "categories": len(cats)}
