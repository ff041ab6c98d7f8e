"""`u2qt export`: checkpoint -> ONNX graphs + manifest.json, checked against PyTorch on real windows."""

from __future__ import annotations

import hashlib
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from u2qt.model.architecture import QuantizerGraph, U2QTModel
from u2qt.model.decoded import CODEBOOKS_FILE, SoftCounts, TokenTexts, codeword_sums, pooled_width, save_codebooks
from u2qt.model.manifest import DecodedInfo, HistoryInfo, Manifest, QuantizerInfo, TabularInfo, sha256_file
from u2qt.model.runtime import RenderedWindow, TokenizerRuntime
from u2qt.model.vocabulary import TokenVocabulary
from u2qt.model.windows import tabular_feature_names
from u2qt.training.alignment import load_history_model
from u2qt.training.event_texts import WINDOW_TEXTS_FILE, fit_token_texts, load_window_texts
from u2qt.training.onnx_graph import export_graph
from u2qt.training.train import CHECKPOINT_DIR, load_checkpoint

QUANTIZER_FILE = "quantizer.onnx"
HISTORY_FILE = "history.onnx"
VERIFY_SAMPLE = "verify_sample.npz"


def _export(module: torch.nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str]) -> None:
    batch = torch.export.Dim("batch", min=1)
    export_graph(module, args, path, inputs, outputs, dynamic_shapes=tuple({0: batch} for _ in args))


def export_artifacts(train_dir: str | Path, out_dir: str | Path | None = None) -> Manifest:
    """A training directory's checkpoint -> ONNX graphs (quantizer, tabular encoders, history model) and
    manifest.json in `out_dir` (default: the training directory), the text encoder's files beside them."""
    train_dir = Path(train_dir)
    out = Path(out_dir) if out_dir else train_dir
    out.mkdir(parents=True, exist_ok=True)
    ck = load_checkpoint(train_dir)
    if out.resolve() != train_dir.resolve():
        (out / "encoder").mkdir(exist_ok=True)
        for f in (ck.encoder.file, ck.encoder.tokenizer_file):
            for src in (train_dir / "encoder").glob(f + "*"):
                shutil.copy2(src, out / "encoder" / src.name)
    tabular = export_tokenizer_graphs(ck, out)
    history = export_history_graph(train_dir, out)
    codebooks = [cb.detach().numpy() for cb in ck.model.quantizer.codebooks]
    texts, text_names = fit_texts(ck, train_dir)
    save_codebooks(out / CODEBOOKS_FILE, codebooks, fit_soft_counts(ck, train_dir, codebooks), texts)
    manifest = build_manifest(ck, out, tabular, history, text_names)
    manifest.save(out)
    return manifest


def fit_soft_counts(ck, train_dir: Path, codebooks: list[np.ndarray]) -> SoftCounts | None:
    """The decoded-token reader's soft counts (ck.train_config.reader), standardized by the training windows'
    decoded tokens (windows.npz, the held-out users left out), as u2qt eval standardizes them by the windows
    before its cut-off; None where the reader is the mean alone."""
    reader = ck.train_config.reader
    if not reader.soft_counts:
        return None
    w = np.load(train_dir / "windows.npz")
    fit = ~w["holdout"]
    q = ck.model.quantizer
    z = codeword_sums(codebooks, q.shared_levels, q.codebook_size, w["codes"][fit], w["source_index"][fit])
    return SoftCounts.fit(z, reader.soft_counts, reader.seed)


def fit_texts(ck, train_dir: Path) -> tuple[TokenTexts | None, list[str]]:
    """The decoded-token reader's event-text decoder (ck.train_config.reader.texts), fitted to the training
    windows' tokens and counts (windows.npz and window_texts.npz, the held-out users left out) -> (the decoder,
    its texts); (None, []) where the reader decodes none, or no training window holds one of the texts."""
    if not ck.train_config.reader.texts or not (train_dir / WINDOW_TEXTS_FILE).exists():
        return None, []
    w = np.load(train_dir / "windows.npz")
    counts, names = load_window_texts(train_dir / WINDOW_TEXTS_FILE)
    fit = np.flatnonzero(~w["holdout"])
    if not names or counts[fit].nnz == 0:
        return None, []
    c = ck.model.config
    vocabulary = TokenVocabulary(c.sources, c.shared_levels, c.specific_levels, c.codebook_size)
    ids = vocabulary.ids(w["source_index"], w["codes"])
    return fit_token_texts(ids, w["source_index"], counts, fit, vocabulary.size, len(c.sources)), names


def export_tokenizer_graphs(ck, out: Path) -> dict[str, TabularInfo]:
    """quantizer.onnx (source embedding -> codes, latent) and one tabular_<source>.onnx per tabular source."""
    model: U2QTModel = ck.model
    c, n = model.config, 4
    _export(
        QuantizerGraph(model).eval(),
        (torch.randn(n, c.text_dim), torch.arange(n) % len(c.sources)),
        out / QUANTIZER_FILE,
        ["source_embedding", "source_index"],
        ["codes", "latent"],
    )
    tabular = {}
    specs = {s.name: s for s in ck.train_config.sources.sources}
    for name, enc in model.tabular.items():
        f = f"tabular_{name}.onnx"
        _export(enc.eval(), (torch.randn(n, enc.mean.numel()),), out / f, ["features"], ["tabular_embedding"])
        tabular[name] = TabularInfo(file=f, feature_names=tabular_feature_names(specs[name]))
    return tabular


def export_history_graph(train_dir: Path, out: Path) -> HistoryInfo | None:
    """history.onnx (token history -> user embedding), when training ran the alignment stage."""
    history_model = load_history_model(train_dir / CHECKPOINT_DIR)
    if history_model is None:
        return None
    hc = history_model.config
    ids = torch.randint(1, hc.vocab_size, (3, hc.max_tokens))
    ids[0, 40:] = 0  # a short, padded history among the examples
    _export(
        history_model,
        (ids, torch.arange(hc.max_tokens).repeat(3, 1) % hc.levels, torch.zeros(3, hc.max_tokens, dtype=torch.long)),
        out / HISTORY_FILE,
        ["token_ids", "level", "age"],
        ["user_embedding"],
    )
    return HistoryInfo(file=HISTORY_FILE, dim=hc.d_model, max_tokens=hc.max_tokens, max_age=hc.max_age)


def build_manifest(
    ck, out: Path, tabular: dict[str, TabularInfo], history: HistoryInfo | None, texts: list[str]
) -> Manifest:
    """The manifest of the files in `out`; the model version hashes those files and the sources, so the same
    checkpoint exported anywhere gets the same version."""
    c = ck.model.config
    encoder = ck.encoder.model_copy(
        update={"file": f"encoder/{ck.encoder.file}", "tokenizer_file": f"encoder/{ck.encoder.tokenizer_file}"}
    )
    rels = [QUANTIZER_FILE, *(t.file for t in tabular.values()), encoder.tokenizer_file]
    rels += [HISTORY_FILE] if history else []
    rels += [CODEBOOKS_FILE]
    rels += [str(p.relative_to(out)) for p in (out / "encoder").glob(ck.encoder.file + "*")]
    files = {r: sha256_file(out / r) for r in sorted(rels)}
    digest = hashlib.sha256("".join(f"{k}:{v}" for k, v in files.items()).encode())
    digest.update(ck.train_config.sources.model_dump_json().encode())
    return Manifest(
        model_version=digest.hexdigest()[:12],
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        sources=ck.train_config.sources,
        encoder=encoder,
        quantizer=QuantizerInfo(
            shared_levels=c.shared_levels,
            specific_levels=c.specific_levels,
            codebook_size=c.codebook_size,
            code_dim=c.code_dim,
            file=QUANTIZER_FILE,
        ),
        tabular=tabular,
        vocabulary=_layout(c),
        history=history,
        decoded=DecodedInfo(
            file=CODEBOOKS_FILE,
            dim=pooled_width(len(c.sources), c.code_dim, ck.train_config.reader.soft_counts or 0, len(texts)),
            soft_counts=ck.train_config.reader.soft_counts or 0,
            texts=texts,
        ),
        files=files,
    )


def _layout(c):
    return TokenVocabulary(c.sources, c.shared_levels, c.specific_levels, c.codebook_size).layout()


def verify_against_torch(train_dir: str | Path, export_dir: str | Path | None = None) -> dict:
    """Runs the exported graphs on the windows saved at training time and compares with PyTorch."""
    train_dir = Path(train_dir)
    sample = np.load(train_dir / VERIFY_SAMPLE)
    ck = load_checkpoint(train_dir)
    rt = TokenizerRuntime(export_dir or train_dir, providers="cpu")
    src = sample["source_index"]
    feats = {k[len("features_") :]: sample[k] for k in sample.files if k.startswith("features_")}
    names = ck.model.config.sources
    windows = [
        RenderedWindow(int(s), features=feats[names[s]][i] if names[s] in feats else None) for i, s in enumerate(src)
    ]
    # the text rows from the embeddings training computed with the exported encoder file itself
    h = rt.embed_windows(windows, text_embeddings=sample["text_embedding"])
    codes = rt.encode_windows(windows, text_embeddings=sample["text_embedding"])
    latent = rt.quantize(h, src)[1]
    with torch.no_grad():
        ref_codes, z = ck.model.encode(
            torch.from_numpy(sample["text_embedding"]),
            torch.from_numpy(src),
            {k: torch.from_numpy(v) for k, v in feats.items()},
        )
        ref_codes = ref_codes.numpy()
    out = {
        "windows": int(len(src)),
        "identical_codes": float((codes == ref_codes).all(1).mean()),
        "max_latent_diff": float(np.abs(latent - z.numpy()).max()),
    }
    history = load_history_model(train_dir / CHECKPOINT_DIR)
    if history is not None and rt.history is not None:
        hc = history.config
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(1, hc.vocab_size, (16, hc.max_tokens), generator=gen)
        for i in range(16):
            ids[i, int(torch.randint(1, hc.max_tokens, (1,), generator=gen)) :] = 0
        level = torch.arange(hc.max_tokens).repeat(16, 1) % hc.levels
        age = torch.randint(0, hc.max_age + 1, (16, hc.max_tokens), generator=gen)
        with torch.no_grad():
            ref = history(ids, level, age).numpy()
        got = rt.embed_histories(ids.numpy(), level.numpy(), age.numpy())
        out["history_max_diff"] = float(np.abs(got - ref).max())
    return out
