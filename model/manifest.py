"""The artifact manifest: the single contract between training (which writes it) and serving."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from u2qt.model.sources import SourcesConfig
from u2qt.model.vocabulary import TokenVocabulary, VocabularyLayout

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"


class EncoderInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str  # what it was exported from (HF id or local path)
    pooling: Literal["mean", "last_token"]
    normalize: bool
    max_tokens: int  # subword tokens per chunk
    # A window longer than one chunk is encoded in up to max_chunks chunks whose embeddings are pooled (mean
    # weighted by chunk length); 1 truncates at max_tokens, as artifacts written before chunking do.
    max_chunks: int = 1
    text_prefix: str
    # > 0: the embedding is the pooled text model's output and a hashed bag of its subword unigrams and bigrams
    # in this many buckets, concatenated (training/text_encoder.py: lexical_bag); dim counts both
    bag_buckets: int = 0
    dim: int
    precision: Literal["fp32", "int8"]
    file: str
    tokenizer_file: str
    pad_token_id: int


class QuantizerInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shared_levels: int
    specific_levels: int
    codebook_size: int
    code_dim: int
    file: str


class TabularInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str
    feature_names: list[str]


class HistoryInfo(BaseModel):
    """The history model (user embeddings from token histories), see model/history.py and model/sequence.py."""

    model_config = ConfigDict(extra="forbid")
    file: str
    dim: int
    max_tokens: int
    max_age: int


class DecodedInfo(BaseModel):
    """The codebooks (model/decoded.py) that turn stored tokens back into codeword sums."""

    model_config = ConfigDict(extra="forbid")
    file: str
    # of the pooled user vector: sources x (code_dim + its activity + soft_counts) + texts, model.decoded.pool_user
    dim: int
    soft_counts: int = 0  # features per source (model.decoded.SoftCounts, kept in `file`); 0: the mean only
    # the event texts each window's tokens are decoded to (model.decoded.TokenTexts, kept in `file`), in the order
    # of the vector's last len(texts) floats; none: the vector ends with the sources' parts
    texts: list[str] = []


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    schema_version: int = SCHEMA_VERSION
    model_version: str
    created_at: str
    sources: SourcesConfig
    encoder: EncoderInfo
    quantizer: QuantizerInfo
    tabular: dict[str, TabularInfo]
    vocabulary: VocabularyLayout
    history: HistoryInfo | None = None  # absent when training skipped the alignment stage
    decoded: DecodedInfo | None = None  # absent in artifacts exported before the codebooks were
    files: dict[str, str]  # relative path -> sha256

    def token_vocabulary(self) -> TokenVocabulary:
        q = self.quantizer
        return TokenVocabulary(
            [s.name for s in self.sources.sources], q.shared_levels, q.specific_levels, q.codebook_size
        )

    def save(self, directory: Path) -> Path:
        path = Path(directory) / MANIFEST_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path, verify: bool = True) -> Manifest:
        directory = Path(directory)
        path = directory / MANIFEST_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {MANIFEST_FILE} in {directory}: run `u2qt export` first")
        manifest = cls.model_validate_json(path.read_text())
        if manifest.schema_version != SCHEMA_VERSION:
            raise ValueError(f"{path} has manifest schema {manifest.schema_version}; this u2qt reads {SCHEMA_VERSION}")
        expected = manifest.token_vocabulary().layout()
        if expected != manifest.vocabulary:
            raise ValueError(f"{path}: vocabulary offsets disagree with its quantizer and sources")
        if verify:
            for rel, digest in manifest.files.items():
                if sha256_file(directory / rel) != digest:
                    raise ValueError(f"{directory / rel} does not match its checksum in {path}")
        return manifest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
