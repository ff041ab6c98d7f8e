"""Text embeddings of the corpus, computed once through the ONNX encoder and cached on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from u2qt.model.manifest import EncoderInfo, sha256_file
from u2qt.model.runtime import OnnxTextEncoder, pick_providers


def embed_texts_cached(
    texts: list[str], encoder_dir: Path, info: EncoderInfo, cache_dir: Path, batch_size: int = 64, progress: bool = True
) -> tuple[np.ndarray, dict]:
    """Embeds distinct texts (identical windows are embedded once); the cache key covers the encoder
    file and the exact texts, so re-training the quantizer never re-encodes."""
    unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    h = hashlib.sha256(sha256_file(encoder_dir / info.file).encode())
    h.update(info.model_dump_json().encode())
    for t in unique:
        h.update(t.encode())
        h.update(b"\0")
    cache = cache_dir / f"text-{h.hexdigest()[:20]}.npy"
    encoder = OnnxTextEncoder(encoder_dir, info, pick_providers("auto"))
    lengths = encoder.tokenizer.untruncated_lengths(list(unique))
    chunks = encoder.tokenizer.all_chunks(list(unique))  # one pass for the statistics and the encoder's input
    needed = np.array([len(c) for c in chunks], dtype=np.int64)
    stats = {
        "distinct_texts": len(unique),
        # a window is truncated when it needs more chunks than max_chunks: its tail is dropped
        "truncated_fraction": float((needed[inverse] > info.max_chunks).mean()) if len(texts) else 0.0,
        "chunked_fraction": float((needed[inverse] > 1).mean()) if len(texts) else 0.0,
        "median_tokens": float(np.median(lengths[inverse])) if len(texts) else 0.0,
        "max_chunks": info.max_chunks,
        "cached": cache.is_file(),
    }
    if cache.is_file():
        emb = np.load(cache)
    else:
        ids = encoder.tokenizer.kept(chunks)
        with tqdm(total=sum(map(len, ids)), desc="encode texts", unit="chunk", disable=not progress) as bar:
            emb = encoder.embed_ids(ids, batch_size, progress=bar.update)
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(cache, emb)
    return emb[inverse], stats
