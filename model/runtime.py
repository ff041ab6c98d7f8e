"""ONNX Runtime execution of exported tokenizer parts (no torch).

`TokenizerRuntime.encode_windows` is the one way from rendered windows (model/windows.py) to codes: the service's
batcher, `u2qt export`'s check, the benchmarks and the tests call it, and training embeds its corpus through the
same `OnnxTextEncoder` and `length_runs`, so a window's embedding is the same number in training and serving.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from u2qt.model.manifest import EncoderInfo, Manifest


def session_options(threads: int | None, spinning: bool = True) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or 0
    so.inter_op_num_threads = 1
    if not spinning:  # idle pool threads sleep instead of spinning on the cores the encoder needs
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def pick_providers(preference: str = "auto") -> list[str]:
    """'auto' takes CUDA when this onnxruntime build and machine offer it, else CPU."""
    available = ort.get_available_providers()
    if preference == "cpu":
        return ["CPUExecutionProvider"]
    if preference == "cuda" and "CUDAExecutionProvider" not in available:
        raise RuntimeError(f"CUDA execution provider requested but onnxruntime offers {available}")
    if "CUDAExecutionProvider" in available and preference in ("auto", "cuda"):
        if hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from the nvidia-* wheels of onnxruntime-gpu[cuda,cudnn]
            ort.preload_dlls()
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@dataclass
class RenderedWindow:
    """One (user, source, window) as the encoders take it: its source's position in the manifest, and its rendered
    text (text sources) or its aggregated features (tabular sources)."""

    source_index: int
    text: str | None = None
    features: np.ndarray | None = None


def length_runs(lengths: np.ndarray, width: float, max_padding: float = math.inf) -> list[np.ndarray]:
    """Indices of `lengths` in runs for the text encoder: sorted by length (similar lengths, less padding), at
    most `width` per run, and a run also ends before a window that would make its padding exceed `max_padding`
    of its real tokens (infinite: runs of fixed width)."""
    order = np.argsort(lengths, kind="stable")
    runs, start, total = [], 0, 0
    for k, i in enumerate(order):
        n, longest = k - start + 1, int(lengths[i])  # ascending: the newcomer is the run's longest
        if n > width or n * longest > (1 + max_padding) * (total + longest):
            runs.append(order[start:k])
            start, total = k, 0
        total += longest
    runs.append(order[start:])
    return runs


Chunks = list[list[int]]  # one text's subword ids: its first max_tokens, then what overflowed, chunk by chunk


class TextTokenizer:
    """The encoder's subword tokenizer with u2qt's prefix and chunking rule (shared by train and serve): a text
    is cut into chunks of max_tokens (each with the model's special tokens; the prefix leads the first), at most
    max_chunks of them; the rest is dropped."""

    def __init__(self, path: Path, info: EncoderInfo):
        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.no_padding()
        # what passes max_tokens is not lost: the tokenizer puts it in `overflowing`, the following chunks
        self.tokenizer.enable_truncation(max_length=info.max_tokens)
        self.prefix = info.text_prefix
        self.max_tokens, self.max_chunks = info.max_tokens, info.max_chunks
        self.pad_id = info.pad_token_id

    def all_chunks(self, texts: Sequence[str]) -> list[Chunks]:
        """Every chunk of each text, uncut: encode() keeps the first max_chunks."""
        # _fast: the same ids without each token's character offsets, which nothing here reads
        # (tests/test_chunking.py holds the ids equal)
        encoded = self.tokenizer.encode_batch_fast([self.prefix + t for t in texts])
        return [[e.ids, *(o.ids for o in e.overflowing)] for e in encoded]

    def kept(self, all_chunks: list[Chunks]) -> list[Chunks]:
        """The chunks the encoder sees: the first max_chunks of each text's."""
        return [chunks[: self.max_chunks] for chunks in all_chunks]

    def encode(self, texts: Sequence[str]) -> list[Chunks]:
        return self.kept(self.all_chunks(texts))

    def encode_windows(self, windows: Sequence[RenderedWindow]) -> list[Chunks | None]:
        """The chunks of each text window, None for tabular ones: what every tokenizing stage (the in-process
        batcher, a frontend, `u2qt batch`) calls, in one encode_batch."""
        encoded = iter(self.encode([w.text for w in windows if w.text is not None]))
        return [next(encoded) if w.text is not None else None for w in windows]

    def chunks_needed(self, texts: Sequence[str]) -> np.ndarray:
        """How many chunks each text would take uncut (more than max_chunks: its tail is dropped)."""
        return np.array([len(c) for c in self.all_chunks(texts)], dtype=np.int64)

    def untruncated_lengths(self, texts: Sequence[str]) -> np.ndarray:
        self.tokenizer.no_truncation()
        try:
            return np.array([len(e.ids) for e in self.tokenizer.encode_batch([self.prefix + t for t in texts])])
        finally:
            self.tokenizer.enable_truncation(max_length=self.max_tokens)

    def pad(self, ids: Sequence[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        width = max(len(x) for x in ids)
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = x
            mask[i, : len(x)] = 1
        return input_ids, mask


class OnnxTextEncoder:
    def __init__(self, directory: Path, info: EncoderInfo, providers: list[str], threads: int | None = None):
        self.info = info
        self.tokenizer = TextTokenizer(Path(directory) / info.tokenizer_file, info)
        self.session = ort.InferenceSession(
            str(Path(directory) / info.file), session_options(threads), providers=providers
        )

    def run_ids(self, ids: Sequence[list[int]]) -> np.ndarray:
        if self.info.precision == "int8" and len(ids) > 1:
            # Dynamic int8 quantization scales activations over the whole input tensor, so a batched window's
            # embedding would depend on its batch-mates (benchmarks/encoder_batch_dependence.py: two thirds of
            # windows changed a code). One window per run keeps a window's tokens a function of the window alone,
            # in training and in serving.
            return np.concatenate([self.run_ids([x]) for x in ids])
        input_ids, mask = self.tokenizer.pad(ids)
        return self.session.run(None, {"input_ids": input_ids, "attention_mask": mask})[0]

    def embed_ids(
        self,
        texts: Sequence[Chunks],
        width: float,
        max_padding: float = math.inf,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embeds chunked subword ids (TextTokenizer.encode) in length runs of chunks (length_runs) -> one
        embedding per text, in input order: the mean of its chunks' embeddings weighted by their lengths
        (re-normalized when the encoder normalizes), so a one-chunk text is exactly its chunk's embedding."""
        out = np.zeros((len(texts), self.info.dim), dtype=np.float32)
        if not len(texts):
            return out
        flat = [c for chunks in texts for c in chunks]
        lengths = np.array([len(c) for c in flat])
        emb = np.zeros((len(flat), self.info.dim), dtype=np.float32)
        for run in length_runs(lengths, width, max_padding):
            emb[run] = self.run_ids([flat[i] for i in run])
            if progress:
                progress(len(run))
        if len(flat) == len(texts):
            return emb
        owner = np.repeat(np.arange(len(texts)), [len(c) for c in texts])
        np.add.at(out, owner, emb * lengths[:, None].astype(np.float32))
        out /= np.bincount(owner, weights=lengths, minlength=len(texts))[:, None].astype(np.float32)
        if self.info.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def embed(
        self, texts: Sequence[str], batch_size: int = 64, progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """Embeds texts (chunked, in runs of similar length: less padding), returned in input order."""
        return self.embed_ids(self.tokenizer.encode(texts), batch_size, progress=progress)


class TokenizerRuntime:
    """All exported parts of one artifact directory: text/tabular encoders and the quantizer."""

    def __init__(
        self,
        directory: str | Path,
        manifest: Manifest | None = None,
        providers: str = "auto",
        threads: int | None = None,
        run_width: float = 0,
        max_padding: float | None = None,
    ):
        """run_width, max_padding: how encode_windows groups texts (length_runs). On CPU padding is paid in full:
        runs of similar length, at most 8 wide and cut where padding would pass 25% of the real tokens
        (benchmarks/ort_threads.py --sections batches). On a GPU the whole call in one run: padding is cheap
        there. 0 / None take these defaults."""
        self.directory = Path(directory)
        self.manifest = manifest or Manifest.load(self.directory)
        self.providers = pick_providers(providers)
        self.on_gpu = self.providers[0] == "CUDAExecutionProvider"
        self.run_width = run_width or (math.inf if self.on_gpu else 8)
        self.max_padding = max_padding if max_padding is not None else (math.inf if self.on_gpu else 0.25)
        self.text = OnnxTextEncoder(self.directory, self.manifest.encoder, self.providers, threads)
        # The quantizer and tabular MLPs are a few small matmuls: one thread each. A thread pool of their own
        # would spin after every run on the cores the text encoder is using (benchmarks/ort_threads.py:
        # the batch stages x1.21-1.27 on 2 cores).
        small = session_options(1)
        self.quantizer = ort.InferenceSession(
            str(self.directory / self.manifest.quantizer.file), small, providers=self.providers
        )
        self.tabular = {
            name: ort.InferenceSession(str(self.directory / t.file), small, providers=self.providers)
            for name, t in self.manifest.tabular.items()
        }
        self.vocabulary = self.manifest.token_vocabulary()
        h = self.manifest.history
        # the history model runs only for embedding reads: its threads sleep between them
        rare = session_options(threads, spinning=False)
        self.history = ort.InferenceSession(str(self.directory / h.file), rare, providers=self.providers) if h else None

    def tokenize_texts(self, windows: Sequence[RenderedWindow]) -> list[Chunks | None]:
        """The chunked subword ids of each text window (None for tabular ones): the first stage of encode_windows, which
        the service runs in a thread of its own."""
        return self.text.tokenizer.encode_windows(windows)

    def embed_windows(
        self,
        windows: Sequence[RenderedWindow],
        token_ids: Sequence[Chunks | None] | None = None,
        text_embeddings: np.ndarray | None = None,
    ) -> np.ndarray:
        """-> the source embeddings [N, dim] of rendered windows: text through the text encoder (from `token_ids`
        of tokenize_texts when given, or from precomputed `text_embeddings` rows), tabular features through their
        source's MLP."""
        emb = np.zeros((len(windows), self.manifest.encoder.dim), dtype=np.float32)
        text = [i for i, w in enumerate(windows) if w.features is None]
        if text and text_embeddings is not None:
            emb[text] = text_embeddings[text]
        elif text:
            ids = token_ids if token_ids is not None else self.tokenize_texts(windows)
            emb[text] = self.text.embed_ids([ids[i] for i in text], self.run_width, self.max_padding)
        names = [s.name for s in self.manifest.sources.sources]
        for name in self.tabular:
            rows = [i for i, w in enumerate(windows) if w.features is not None and names[w.source_index] == name]
            if rows:
                emb[rows] = self.embed_tabular(name, np.stack([windows[i].features for i in rows]))
        return emb

    def encode_windows(
        self,
        windows: Sequence[RenderedWindow],
        token_ids: Sequence[Chunks | None] | None = None,
        text_embeddings: np.ndarray | None = None,
    ) -> np.ndarray:
        """Rendered windows -> their codes [N, levels]: what every part of u2qt that tokenizes windows calls."""
        if not len(windows):
            return np.zeros((0, self.vocabulary.levels), dtype=np.int64)
        emb = self.embed_windows(windows, token_ids, text_embeddings)
        return self.quantize(emb, np.array([w.source_index for w in windows], dtype=np.int64))[0]

    def embed_histories(self, ids: np.ndarray, level: np.ndarray, age: np.ndarray) -> np.ndarray:
        """Token-history sequences [B, max_tokens] (model.sequence) -> user embeddings [B, dim]."""
        if self.history is None:
            raise RuntimeError("these artifacts have no history model (trained with align.enabled: false)")
        return self.history.run(None, {"token_ids": ids, "level": level, "age": age})[0]

    def embed_tabular(self, source: str, features: np.ndarray) -> np.ndarray:
        return self.tabular[source].run(None, {"features": np.asarray(features, dtype=np.float32)})[0]

    def quantize(self, embeddings: np.ndarray, source_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (codes [N, L] per-level indices, latent [N, code_dim] before quantization)."""
        codes, latent = self.quantizer.run(
            ["codes", "latent"],
            {
                "source_embedding": np.asarray(embeddings, dtype=np.float32),
                "source_index": np.asarray(source_index, dtype=np.int64),
            },
        )
        return codes, latent
